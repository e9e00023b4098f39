"""ftexp.runs.atomic: a write either replaces the whole file or leaves the old one, with no temporary
file behind; and ftexp.runs.objective: one rule for which way a metric is better."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from ftexp.runs import atomic
from ftexp.runs.objective import (
    Objective,
    direction,
    is_pruned,
    lower_is_better,
    mode_to_direction,
    monitor_mode,
    pruned_metrics,
    was_pruned,
)


class Boom(Exception):
    pass


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(atomic.TMP_SUFFIX))


def test_a_failure_mid_write_keeps_the_old_file_and_leaves_no_temporary_file(tmp_path: Path):
    target = tmp_path / "metrics.json"
    target.write_text("old\n")
    with pytest.raises(Boom), atomic.atomic_open(target) as f:
        f.write("half of the new")
        f.flush()
        raise Boom
    assert target.read_text() == "old\n"
    assert _leftovers(tmp_path) == []

    with pytest.raises(Boom), atomic.atomic_path(target) as tmp:
        tmp.write_text("half")
        raise Boom
    assert target.read_text() == "old\n"
    assert _leftovers(tmp_path) == []


def test_a_failing_writer_that_takes_a_path_keeps_the_old_file(tmp_path: Path):
    pd = pytest.importorskip("pandas")
    target = tmp_path / "predictions.csv"
    target.write_text("a\n1\n")

    class Unprintable:
        def __str__(self) -> str:
            raise Boom

    frame = pd.DataFrame({"a": [1, 2, Unprintable()]})
    with pytest.raises(Boom), atomic.atomic_path(target) as tmp:
        frame.to_csv(tmp, index=False)
    assert target.read_text() == "a\n1\n"
    assert _leftovers(tmp_path) == []


def test_content_is_written_completely(tmp_path: Path):
    big = os.urandom(3 * 2**20 + 17)
    atomic.write_bytes(tmp_path / "blob.bin", big)
    assert (tmp_path / "blob.bin").read_bytes() == big

    text = "αβγ\n" * 10_000
    atomic.write_text(tmp_path / "text.txt", text)
    assert (tmp_path / "text.txt").read_text(encoding="utf-8") == text

    atomic.write_json(tmp_path / "m.json", {"b": 1, "a": Path("x")})
    assert (tmp_path / "m.json").read_text() == '{\n  "a": "x",\n  "b": 1\n}\n'
    assert json.loads((tmp_path / "m.json").read_text()) == {"a": "x", "b": 1}

    with atomic.atomic_path(tmp_path / "frame.csv") as tmp:  # a writer that takes a path
        assert tmp.parent == tmp_path and tmp.name.startswith(".") and tmp.name.endswith(".tmp")
        tmp.write_text("x,y\n1,2\n")
    assert (tmp_path / "frame.csv").read_text() == "x,y\n1,2\n"
    assert _leftovers(tmp_path) == []


def test_replaces_an_existing_file_and_writes_into_new_folders(tmp_path: Path):
    target = tmp_path / "new" / "deeper" / "report.md"
    atomic.write_text(target, "first")
    atomic.write_text(target, "second")
    assert target.read_text() == "second"
    assert _leftovers(target.parent) == []


def test_a_fixed_temporary_name_is_reused_after_a_crash(tmp_path: Path):
    target = tmp_path / "last.ckpt"
    leftover = atomic.temp_path(target, unique=False)
    assert str(leftover).endswith("last.ckpt.tmp")
    leftover.write_bytes(b"a killed run's half checkpoint, longer than the next one")
    with atomic.atomic_path(target, unique=False) as tmp:
        assert tmp == leftover and tmp.read_bytes() == b""  # truncated, not appended to
        tmp.write_bytes(b"ok")
    assert target.read_bytes() == b"ok" and not leftover.exists()


def test_unique_temporary_names_never_collide(tmp_path: Path):
    target = tmp_path / "entry.pt"
    with atomic.atomic_path(target) as first, atomic.atomic_path(target) as second:
        assert first != second
        first.write_text("1")
        second.write_text("2")
    assert target.read_text() in ("1", "2") and _leftovers(tmp_path) == []


@pytest.mark.skipif(os.name == "nt", reason="POSIX permissions")
def test_the_file_gets_the_usual_permissions(tmp_path: Path):
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    atomic.write_text(tmp_path / "atomic.txt", "x")
    assert stat.S_IMODE((tmp_path / "atomic.txt").stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)


def test_replace_moves_a_file_and_fsync_tree_walks_a_folder(tmp_path: Path):
    (tmp_path / "a").write_text("new")
    (tmp_path / "b").write_text("old")
    atomic.replace(tmp_path / "a", tmp_path / "b")
    assert (tmp_path / "b").read_text() == "new" and not (tmp_path / "a").exists()
    (tmp_path / "staged" / "sub").mkdir(parents=True)
    (tmp_path / "staged" / "sub" / "f").write_text("x")
    atomic.fsync_tree(tmp_path / "staged")  # no error on files and folders


def test_a_full_disk_while_checkpointing_is_one_line_and_keeps_the_previous_checkpoint(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import errno

    import torch

    from ftexp.runs import checkpoints
    from ftexp.runs.errors import FtexpError

    def half_then_full(checkpoint, path, *args, **kwargs):
        Path(path).write_bytes(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    target = tmp_path / "last.ckpt"
    target.write_bytes(b"the previous checkpoint")
    monkeypatch.setattr(torch, "save", half_then_full)
    with pytest.raises(FtexpError, match="no space left on the device .* previous checkpoint is intact"):
        checkpoints.AtomicCheckpointIO().save_checkpoint({"state_dict": {}}, target)
    assert target.read_bytes() == b"the previous checkpoint"
    assert _leftovers(tmp_path) == []


def test_a_checkpoint_goes_to_its_file_without_a_copy_in_memory(tmp_path: Path):
    """Lightning's TorchCheckpointIO serialises into a BytesIO first: +1 checkpoint at the peak."""
    import tracemalloc

    import torch

    from ftexp.runs import checkpoints

    weights = {"w": torch.randn(4_000_000)}  # 16 MB
    tracemalloc.start()
    checkpoints.AtomicCheckpointIO().save_checkpoint({"state_dict": weights}, tmp_path / "best.ckpt")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 2_000_000, f"{peak / 1e6:.1f} MB held while saving a 16 MB checkpoint"
    saved = torch.load(tmp_path / "best.ckpt", weights_only=True)["state_dict"]["w"]
    assert torch.equal(saved, weights["w"])
    assert _leftovers(tmp_path) == []


def test_atomic_open_refuses_appending(tmp_path: Path):
    with pytest.raises(ValueError, match="whole file"), atomic.atomic_open(tmp_path / "x", "a"):
        pass


# -- ftexp.runs.objective ---------------------------------------------------------------------------


@pytest.mark.parametrize(("metric", "lower"), [
    ("val/loss", True), ("train/loss", True), ("val/perplexity", True), ("val/mse", True),
    ("test/mae", True), ("best/val/loss", True), ("peak_memory_gib", True), ("fit_seconds", True),
    ("trainable_params", True), ("val/acc", False), ("val/f1_macro", False), ("val/r2", False),
    ("train_samples_per_second", False), ("best/val/acc", False)])
def test_which_way_a_metric_is_better(metric: str, lower: bool):
    assert lower_is_better(metric) is lower
    assert direction(metric) == ("minimize" if lower else "maximize")
    assert monitor_mode(metric) == ("min" if lower else "max")
    assert Objective.for_metric(metric).sign == (-1 if lower else 1)


def test_objectives_modes_and_pruned_outcomes():
    assert mode_to_direction("max") == "maximize" and mode_to_direction("min") == "minimize"
    assert Objective.for_metric("val/loss", "max").direction == "maximize"  # an explicit mode wins
    assert Objective("val/loss", "minimize").mode == "min"
    assert Objective("val/loss", "minimize").better(0.1, 0.2)
    with pytest.raises(ValueError):
        Objective("val/acc", "up")
    with pytest.raises(ValueError):
        mode_to_direction("sideways")

    class TrialPruned(Exception):  # matched by name: optuna's own class need not be imported
        pass

    class Stopped(TrialPruned):
        pass

    assert is_pruned(TrialPruned()) and is_pruned(Stopped()) and not is_pruned(RuntimeError())
    assert was_pruned(pruned_metrics(3)) and pruned_metrics(3)["pruned_at_step"] == 3
    assert pruned_metrics(None) == {} and not was_pruned({"val/acc": 1.0}) and not was_pruned(None)
