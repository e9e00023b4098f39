"""Generate from fixed validation prompts at each evaluation, so a run shows what the model
writes as it trains: a console table and `generations.jsonl` in the run directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_only

from ftexp.tasks.generation import generate_texts


class SampleGenerations(L.Callback):
    def __init__(self, tokenizer: Any, prompts: list[str], prompt_ids: list[list[int]],
                 settings: dict[str, Any], path: Path):
        self.tokenizer = tokenizer
        self.prompts = prompts
        self.prompt_ids = prompt_ids
        self.settings = settings
        self.path = path

    @rank_zero_only
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not self.prompts:
            return
        texts = generate_texts(pl_module.network, self.tokenizer, self.prompt_ids, self.settings)
        with self.path.open("a", encoding="utf-8") as f:
            for prompt, text in zip(self.prompts, texts, strict=True):
                f.write(json.dumps({"epoch": trainer.current_epoch, "step": trainer.global_step,
                                    "prompt": prompt, "generation": text}, ensure_ascii=False) + "\n")
        from ftexp.runs.console import print_generations

        print_generations(self.prompts, texts, f"sample generations · step {trainer.global_step}")
