"""The served model of a classifier, regressor or reward run: rows in (the columns the run reads),
the prediction columns `ftexp.predict` writes out (label and class probabilities, the number, or
a reward model's score), computed by the same encoding and the same predict step."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import torch

from ftexp.runs.errors import DataError, FtexpError
from ftexp.serving.schemas import RequestError


class Predictor:
    def __init__(self, run: Path, name: str):
        from ftexp.predict import load_trained

        self.task, self.tokenizer, self.cfg = load_trained(run)
        self.task.to("cuda" if torch.cuda.is_available() else "cpu")
        self.name, self.kind = name, str(self.cfg.task.name)
        self.lock = threading.Lock()

    def predict(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        import pandas as pd

        frame = pd.DataFrame(rows)
        try:
            encoded, collate = self.task.prediction_rows(frame, self.tokenizer, self.cfg, None)
        except (DataError, FtexpError) as err:
            raise RequestError(str(err), "rows") from err
        batch = {k: v.to(self.task.device) if torch.is_tensor(v) else v for k, v in collate(encoded).items()}
        with self.lock, torch.inference_mode():
            out = self.task.predict_step(batch, 0)
        columns = self.task.prediction_columns(out.float().cpu())
        return [{k: values[i] for k, values in columns.items()} for i in range(len(rows))]
