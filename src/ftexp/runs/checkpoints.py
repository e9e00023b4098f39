"""Checkpoints that survive crashes and load anywhere.

- Writes go to a temporary name and are renamed, so a crash mid-write leaves the previous
  checkpoint intact instead of a truncated one; a full disk is reported in one line. They go
  straight to that file: Lightning's own atomic write serialises the whole checkpoint into memory
  first, a second copy of the weights (and optimizer state) at the run's memory peak.
- `resume_checkpoint` picks the newest readable full-state checkpoint of a run directory.
- Sharded saves (FSDP `state_dict: sharded`, DeepSpeed ZeRO) are folders with one file per rank;
  predict / generate / export and the test pass read one file, so a run consolidates its
  folders once training ends (rank zero only).
"""

from __future__ import annotations

import errno
import logging
import shutil
from pathlib import Path
from typing import Any

from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from ftexp.runs import atomic
from ftexp.runs.errors import FtexpError

log = logging.getLogger(__name__)

# The resume checkpoints of a run (callbacks/resume.py writes them, resume_checkpoint reads them).
LAST = "last.ckpt"
NEWEST = "last-new.ckpt"  # a complete save about to become last.ckpt
PREVIOUS = "last-previous.ckpt"  # the generation before: used if last.ckpt is unreadable


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        import torch

        if storage_options is not None:  # as Lightning's TorchCheckpointIO says
            raise TypeError("Trainer.save_checkpoint(..., storage_options=...) is not supported by "
                            "ftexp's checkpoint writer.")
        path = Path(path)
        try:
            # One fixed temporary name (.<name>.tmp): a save cut short by a kill is overwritten
            # by the next one instead of leaving gigabytes of orphans.
            with atomic.atomic_path(path, unique=False) as tmp:
                torch.save(checkpoint, tmp)
        except OSError as err:
            if err.errno == errno.ENOSPC:
                raise FtexpError(f"no space left on the device while writing {path}; the previous "
                                 "checkpoint is intact: free some space, then resume=<run dir>.") from err
            raise


def _readable(path: Path) -> bool:
    import torch

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure to read means "not usable"
        log.warning("checkpoint %s is unreadable (%s); trying the one before it", path,
                    str(err).splitlines()[0][:120])
        return False
    return isinstance(checkpoint, dict) and "state_dict" in checkpoint and "loops" in checkpoint


def resume_checkpoint(run: Path) -> Path:
    """The newest readable full-state checkpoint of `run` (last.ckpt, else the one before)."""
    directory = run / "checkpoints"
    # last-new.ckpt outlives last.ckpt only when a crash fell between the two renames of a save.
    for candidate in (directory / LAST, directory / NEWEST, directory / PREVIOUS):
        if candidate.is_file() and _readable(candidate):
            return candidate
    raise FtexpError(f"'{run}' has no readable checkpoint to resume from ({directory / LAST}); "
                     "checkpoints are written every callbacks.resume_every_minutes minutes or "
                     "callbacks.resume_every_n_steps steps.")


def is_deepspeed_folder(path: Path) -> bool:
    return path.is_dir() and (path / "latest").is_file()


def load_sharded_checkpoint(path: Path) -> dict[str, Any]:
    """The full checkpoint in a folder Lightning's FSDPStrategy wrote (state_dict_type='sharded'),
    in memory and in the Trainer's format: weights under `state_dict`, optimizers as
    `optimizer_states`, the rest (epoch, loops, hyper_parameters…) from the folder's metadata file.

    Private Lightning API: this is the body of Lightning's documented consolidation command
    (`python -m lightning.pytorch.utilities.consolidate_checkpoint <folder>`), which exists only
    as a command-line script that writes a second file. The public torch counterpart,
    `torch.distributed.checkpoint.format_utils.dcp_to_torch_save`, loads the same way but also
    only writes a file (optimizer states included, without Lightning's metadata and key layout):
    an extra full copy on disk, several times the weights, before the optimizer states are
    dropped. The public `torch.distributed.checkpoint.load` needs a pre-built state dict of every
    shape, which only torch's private `_EmptyStateDictLoadPlanner` builds.
    tests/test_private_apis.py pins the behaviour relied on."""
    from lightning.fabric.utilities.load import _load_distributed_checkpoint
    from lightning.pytorch.utilities.consolidate_checkpoint import _format_checkpoint

    return _format_checkpoint(_load_distributed_checkpoint(path))


def consolidate(path: Path, keep: set[str] | None = None) -> Path:
    """Replace a sharded checkpoint folder at `path` with one file of the full weights (only the
    `keep` names when given: adapter runs save what trains). A file is returned as it is."""
    if not path.is_dir():
        return path
    import torch

    if is_deepspeed_folder(path):
        from lightning.pytorch.utilities.deepspeed import convert_zero_checkpoint_to_fp32_state_dict

        tmp = path.with_name(path.name + ".consolidating")
        checkpoint = convert_zero_checkpoint_to_fp32_state_dict(path, tmp)
        tmp.unlink()
    else:
        checkpoint = load_sharded_checkpoint(path)
    checkpoint.pop("optimizer_states", None)  # weights only, like the single-device best.ckpt
    if keep is not None:
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
    with atomic.atomic_path(path, unique=False) as tmp:
        torch.save(checkpoint, tmp)
        atomic.fsync_file(tmp)  # on disk before the folder it replaces is removed
        shutil.rmtree(path)
    log.info("consolidated the sharded checkpoint into %s", path)
    return path
