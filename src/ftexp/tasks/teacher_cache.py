"""task.cache_teacher: the teacher's final hidden states of every encoded row, computed once and
kept in the content-addressed cache, so that task=distill's off-policy batches skip the teacher's
forward pass. Hidden states rather than full distributions: a row's (tokens x hidden) is hidden /
vocabulary of its (tokens x vocabulary) distributions (1/8 for a 4096-wide model with 32k
tokens), and the divergence is computed from them a chunk of
tokens at a time through the teacher's LM head exactly as without the cache
(tasks/distill_losses.py). Keyed like the reference cache (tasks/preference.py): the encoded data,
the teacher's weights (a run's best checkpoint or a model's files, by contents) and the precision.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ftexp.tasks import lm_loss

ROW_KEY = "teacher_hidden"  # attached to each row; data/packing.pad_batch pads it into the batch


def fit_dtype(model_dtype: str, precision: str) -> torch.dtype:
    """The student's dtype in fit, which the teacher is loaded in: the model group's, unless a
    "true" precision casts the whole module."""
    from ftexp.builders.backbone import DTYPES

    return {"bf16-true": torch.bfloat16, "16-true": torch.float16}.get(precision, DTYPES[model_dtype])


def teacher_key(source: str, encoding_key: str, dtype: torch.dtype, precision: str,
                memo_dir: str | None) -> str:
    """A finished run's teacher by its best checkpoint and the base it was trained on (an adapter
    run's checkpoint holds the adapter only); a model directory or Hub id by its files."""
    from omegaconf import OmegaConf

    from ftexp.data.cache import digest, file_digest
    from ftexp.data.embeddings import model_fingerprint, starting_weights_key
    from ftexp.runs import run_dir

    run = Path(source).expanduser()
    if (run / run_dir.CONFIG_FILE).is_file():
        trained = OmegaConf.to_container(OmegaConf.load(run / run_dir.CONFIG_FILE), resolve=True)
        base = starting_weights_key(trained["model"], trained.get("quant") or {}, precision, memo_dir)
        weights = digest(file_digest(run / run_dir.BEST_CHECKPOINT, memo_dir), base)
    else:
        weights = model_fingerprint({"name_or_path": source}, memo_dir)
    return digest("teacher_hidden", encoding_key, weights, str(dtype), precision)


@torch.no_grad()
def teacher_hidden_states(teacher: nn.Module, rows: list[dict[str, Any]], collate: Any, batch_size: int,
                          device: torch.device, autocast: torch.dtype | None) -> list[torch.Tensor]:
    """Each row's (tokens, hidden) final hidden states, on the CPU, in the order of `rows`."""
    from rich.progress import track

    out: list[torch.Tensor] = []
    with torch.autocast(device.type, autocast, enabled=autocast is not None):
        for start in track(range(0, len(rows), batch_size), "teacher hidden states", transient=True):
            batch = collate(rows[start:start + batch_size])
            inputs = {k: v.to(device) for k, v in lm_loss.hidden_inputs(batch).items()}
            hidden = lm_loss.final_hidden_states(teacher, **inputs).cpu()
            out += [h[:n].clone() for h, n in zip(hidden, batch["row_tokens"].tolist(), strict=True)]
    return out


def attach(datamodule: Any, values: dict[str, list[torch.Tensor]]) -> None:
    for split, rows in datamodule.datasets.items():
        for row, hidden in zip(rows.rows, values[split], strict=True):
            row[ROW_KEY] = hidden
