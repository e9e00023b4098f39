"""Label a new file with a trained run: `python -m ftexp.predict <run dir> <file> [-o out.csv]`.

Reads the run's resolved config and best checkpoint, tokenizes the file's text columns the
way training did, and writes every input row with its prediction — `predicted_label` (or
`predicted_labels` for multi-label) and one `prob_<label>` column per class, or `prediction` for
regression, or `score` for a reward model (whose input rows hold a prompt and a response) — as
CSV or JSONL (by the output's extension).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pandas as pd

from ftexp.runs import atomic, run_dir
from ftexp.runs.console import quiet_third_party
from ftexp.runs.errors import FtexpError, reported_as_one_line


def write_predictions(path: Path, frame: pd.DataFrame, task: Any, predictions: list[Any]) -> pd.DataFrame:
    """Rows of `frame` with the task's prediction columns (label and class probabilities, or
    the predicted number); CSV or JSONL by suffix."""
    import torch

    columns = task.prediction_columns(torch.cat([p.float().cpu() for p in predictions]))
    rows = len(next(iter(columns.values())))
    # A run with trainer.limit_test_batches sees only the first rows.
    out = frame.iloc[:rows].copy().reset_index(drop=True)
    for name, values in columns.items():
        out[name] = values
    with atomic.atomic_path(path) as tmp:  # never leave half a predictions file behind
        if path.suffix.lower() in (".jsonl", ".ndjson"):
            out.to_json(tmp, orient="records", lines=True, force_ascii=False)
        else:
            out.to_csv(tmp, index=False)
    return out


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint's contents, unpickled with `weights_only=True`: tensors and plain containers
    only, so a tampered file cannot run code (ftexp's checkpoints hold nothing else)."""
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise FtexpError(f"checkpoint '{path}' holds objects other than tensors and plain "
                         "containers, which could run code when loaded, so it is refused; load only "
                         "checkpoints written by ftexp.") from err
    except (RuntimeError, EOFError) as err:
        from ftexp.runs.errors import is_out_of_memory

        if is_out_of_memory(err):
            raise
        raise FtexpError(f"checkpoint '{path}' cannot be read ({str(err).splitlines()[0][:160]}); "
                         "it may be truncated: train again or pick another run.") from err


def load_trained(run: Path, checkpoint: str = run_dir.BEST_CHECKPOINT):
    """(task in eval mode, tokenizer, resolved config) of a finished run directory."""
    from omegaconf import OmegaConf

    from ftexp.builders.backbone import load_tokenizer
    from ftexp.tasks import task_class_for

    config_path, ckpt_path = run / run_dir.CONFIG_FILE, run / checkpoint
    for needed in (config_path, ckpt_path):
        if not needed.is_file():
            raise FtexpError(f"'{run}' is not a finished ftexp run: {needed.name} is missing "
                             f"(expected {needed}).")
    cfg = OmegaConf.load(config_path)
    saved = load_checkpoint(ckpt_path)
    hparams = saved["hyper_parameters"]
    task = task_class_for(hparams["task"], hparams.get("target"))(**hparams)
    task.configure_model()
    task.load_trained_state(saved["state_dict"])
    task.eval()
    m = cfg.model
    tokenizer = load_tokenizer(m.tokenizer or m.name_or_path, trust_remote_code=m.trust_remote_code,
                               revision=m.revision, chat_template=m.get("chat_template"),
                               added_tokens=list(m.get("add_special_tokens") or []))
    return task, tokenizer, cfg


def predict_file(run: Path, input_path: Path, output_path: Path, batch_size: int = 64,
                 text_columns: list[str] | None = None) -> pd.DataFrame:
    import lightning as L
    from omegaconf import OmegaConf

    from ftexp.data.readers import read_table
    from ftexp.data.rows import Rows, rows_loader
    from ftexp.tasks.registry import get_task

    config_path = run / run_dir.CONFIG_FILE
    if config_path.is_file():  # refuse before the model loads
        name = (OmegaConf.load(config_path).get("task") or {}).get("name")
        if name is not None and not get_task(name).predicts:
            raise FtexpError(f"'{run}' is a task={name} run, which writes text, not labels; "
                             "use `python -m ftexp.generate` on it.")
    task, tokenizer, cfg = load_trained(run)
    frame = read_table(input_path)
    rows, collate = task.prediction_rows(frame, tokenizer, cfg, text_columns)
    loader = rows_loader(Rows(rows), batch_size, False, collate, 0, 0)
    predictor = L.Trainer(accelerator="auto", devices=1, logger=False, enable_checkpointing=False,
                          enable_model_summary=False, enable_progress_bar=len(rows) > 10 * batch_size)
    predictions = predictor.predict(task, dataloaders=loader)
    return write_predictions(output_path, frame, task, predictions)


def _summary(result: pd.DataFrame) -> str:
    for column in ("predicted_label", "predicted_labels"):
        if column in result:
            counts = result[column].value_counts().to_dict()
            return f" (predicted label counts: {json.dumps(counts, default=str)})"
    for column in ("prediction", "score"):
        if column in result:
            return f" (mean {column} {result[column].mean():.4g})"
    return ""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="ftexp-predict", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a run directory written by `python -m ftexp`")
    parser.add_argument("input", type=Path, help="CSV / TSV / JSON / JSONL / Parquet file to label")
    parser.add_argument("-o", "--output", type=Path, default=None,
                        help="output .csv or .jsonl (default: <run dir>/predictions_<input name>.csv)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--text-columns", nargs="+", default=None,
                        help="text columns of the input (default: those the run trained on)")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    args = parser.parse_args(argv)
    output = args.output or args.run_dir / f"predictions_{args.input.stem}.csv"
    if output.suffix.lower() not in (".csv", ".jsonl", ".ndjson"):
        raise SystemExit(f"ftexp-predict: error: output '{output}' must end in .csv or .jsonl")
    with reported_as_one_line(args.debug):
        quiet_third_party()
        result = predict_file(args.run_dir, args.input, output, args.batch_size, args.text_columns)
        print(f"wrote {len(result)} predictions to {output}{_summary(result)}")


if __name__ == "__main__":
    from ftexp.runs.process import run_command

    run_command(main)  # main() reads sys.argv; then exits without the interpreter's teardown
