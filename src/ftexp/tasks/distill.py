"""task=distill: a student learns a frozen teacher's next-token distributions on the responses of
SFT data (off-policy knowledge distillation; the divergence is tasks/distill_losses.py) and, in a
task.on_policy_fraction share of the training batches, on responses it samples itself from the
batch's prompts (on-policy, GKD's lambda). The data, evaluation (cross-entropy and perplexity on
the data's responses, plus `divergence` to the teacher), generation and export are the causal-LM
task's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchmetrics import MeanMetric

from ftexp.runs.errors import ConfigError
from ftexp.tasks import lm_loss, teacher_cache
from ftexp.tasks.causal_lm import CausalLMTask
from ftexp.tasks.distill_losses import distillation_sum
from ftexp.tasks.generation import continue_ids
from ftexp.tasks.policy import check_same_vocabulary


def load_teacher(source: str, dtype: torch.dtype) -> tuple[nn.Module, Any]:
    """The teacher network (eval mode, no gradients) and its tokenizer: a finished ftexp run's
    merged network, or a model directory / Hub id through transformers."""
    from ftexp.runs import run_dir

    path = Path(source).expanduser()
    if (path / run_dir.CONFIG_FILE).is_file():
        from ftexp.builders.backbone import load_tokenizer
        from ftexp.builders.init_from import merged_network
        from ftexp.predict import load_checkpoint

        ckpt = path / run_dir.BEST_CHECKPOINT
        if not ckpt.is_file():
            raise ConfigError(f"task.teacher={source} is not a finished ftexp run: {ckpt.name} is missing.")
        saved = load_checkpoint(ckpt)
        hparams = saved["hyper_parameters"]
        from ftexp.tasks.registry import get_task

        if not get_task(hparams["task"]["name"]).language_model:
            raise ConfigError(f"task.teacher={source} is not a language-model run (causal_lm, pretrain, "
                              "a preference or RL task); a teacher needs next-token distributions.")
        network = merged_network(hparams, saved["state_dict"], str(dtype).removeprefix("torch."))
        m = hparams["model"]
        tokenizer = load_tokenizer(m.get("tokenizer") or m["name_or_path"],
                                   trust_remote_code=m["trust_remote_code"], revision=m.get("revision"))
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        network = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(source)
    network.requires_grad_(False)
    return network.eval(), tokenizer


def check_same_tokenizer(student: Any, teacher: Any, source: str) -> None:
    """Distributions are compared token id by token id, so both must mean the same by each id."""
    check_same_vocabulary(student, teacher, f"task.teacher={source}", "student",
                          "distillation compares distributions id by id, so pick a teacher of the "
                          "student's family.")


class DistillTask(CausalLMTask):
    """Training loss: kd_ratio * divergence + (1 - kd_ratio) * cross-entropy, each the mean over
    the trained (response) tokens. Metrics: loss, perplexity and divergence per evaluation stage."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.val_divergence, self.test_divergence = MeanMetric(), MeanMetric()
        # Not a submodule: the teacher is neither trained nor saved in the student's checkpoints.
        self._teacher: list[nn.Module] = []
        # Set by from_config: on-policy batches are sampled with it, the teacher's is checked against it.
        self.tokenizer: Any = None
        self.on_policy_batches = 0
        self.teacher_forward_passes = 0  # batches whose teacher states were not read from the cache

    @classmethod
    def from_config(cls, cfg: Any, settings: dict[str, Any], tokenizer: Any, run_dir: Path) -> Any:
        parts = super().from_config(cfg, settings, tokenizer, run_dir)
        parts.task.tokenizer = tokenizer
        return parts

    def summary(self) -> dict[str, Any]:
        out = super().summary()
        if self.hparams.task["on_policy_fraction"] > 0:
            out["on_policy_batches"] = self.on_policy_batches  # since this (re)start
        out["teacher_forward_passes"] = self.teacher_forward_passes  # likewise
        return out

    def before_fit(self, cfg: Any, trainer: Any, datamodule: Any) -> None:
        """task.cache_teacher: the teacher's hidden states of every split's rows, from the cache or
        computed now, attached to the rows (the batches then carry them)."""
        super().before_fit(cfg, trainer, datamodule)
        if not self.hparams.task["cache_teacher"]:
            return
        from ftexp.builders.strategy import precompute_device
        from ftexp.data.cache import ContentCache

        # Loaded now, before the student is built (a sharded build must wait for fit), in the dtype
        # the student will have in fit; a Hub teacher is then on disk, for the key's fingerprint.
        dtype = teacher_cache.fit_dtype(cfg.model.dtype, str(trainer.precision))
        teacher = self.checked_teacher(dtype)
        key = teacher_cache.teacher_key(self.hparams.task["teacher"], datamodule.encoding_key, dtype,
                                        str(trainer.precision), cfg.paths.cache_dir)
        device, autocast = precompute_device(trainer)

        def compute() -> dict[str, list[torch.Tensor]]:
            teacher.to(device)
            values = {split: teacher_cache.teacher_hidden_states(teacher, rows.rows, datamodule.collate,
                                                                 cfg.data.eval_batch_size, device, autocast)
                      for split, rows in datamodule.datasets.items()}
            teacher.to("cpu")
            return values

        values = ContentCache(cfg.paths.cache_dir, "teacher_hidden").get_or_compute(
            key, compute, "teacher hidden states")
        teacher_cache.attach(datamodule, values)

    def on_fit_start(self) -> None:
        teacher = self.teacher  # loaded and checked against the student before the first step
        t, width = self.hparams.task, lm_loss.output_head(teacher).weight.shape[0]
        if width != lm_loss.output_head(self.network).weight.shape[0]:
            raise ConfigError(f"task.teacher={t['teacher']} scores {width} tokens, the student "
                              f"{lm_loss.output_head(self.network).weight.shape[0]}; give both the "
                              "same vocabulary size.")

    @property
    def teacher(self) -> nn.Module:
        """The teacher on this task's device, loaded in the student's dtype on first use."""
        if not self._teacher:
            self.checked_teacher(next(self.network.parameters()).dtype)
        teacher = self._teacher[0]
        return teacher.to(self.device) if teacher.device != self.device else teacher

    def checked_teacher(self, dtype: torch.dtype) -> nn.Module:
        """Load the teacher in `dtype`, check its tokenizer against the student's, keep it."""
        network, tokenizer = load_teacher(self.hparams.task["teacher"], dtype)
        check_same_tokenizer(self.tokenizer, tokenizer, self.hparams.task["teacher"])
        self._teacher[:] = [network]
        return network

    def _hidden_states(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(student's, teacher's) final hidden states: one forward of each model per batch, from
        which the divergence and the cross-entropy are both computed."""
        inputs = lm_loss.hidden_inputs(batch)
        cached = batch.get(teacher_cache.ROW_KEY)
        if cached is not None:
            teacher_hidden = cached.to(self.device, lm_loss.output_head(self.teacher).weight.dtype)
        else:
            self.teacher_forward_passes += 1
            with torch.no_grad():
                teacher_hidden = lm_loss.final_hidden_states(self.teacher, **inputs)
        return lm_loss.final_hidden_states(self.network, **inputs), teacher_hidden

    def _divergence(self, labels: torch.Tensor, student_hidden: torch.Tensor,
                    teacher_hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t, path = self.hparams.task, self._chunked_path()
        student_head, teacher_head = lm_loss.output_head(self.network), lm_loss.output_head(self.teacher)
        transform = path.transform  # the model family's own logit transform (softcapping)
        return distillation_sum(student_hidden, teacher_hidden, labels,
                                lambda h: transform(student_head(h)), lambda h: transform(teacher_head(h)),
                                beta=t["beta"], temperature=t["temperature"], chunk_tokens=path.chunk_tokens)

    def on_policy(self) -> bool:
        """Whether this training batch's responses are the student's own: a draw from torch's
        generator, so a resumed run (its RNG states restored) draws as an uninterrupted one."""
        fraction = self.hparams.task["on_policy_fraction"]
        return fraction > 0 and bool(torch.rand(()) < fraction)

    @torch.no_grad()
    def student_batch(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The batch with each row's response replaced by one the student samples from its prompt
        (the tokens before the first trained label; the generation group's sampling settings),
        ended at EOS or max_new_tokens: prompt + sample, right-padded, the sample the only
        trained tokens."""
        tok = self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        trained = batch["labels"] != lm_loss.IGNORE
        starts = torch.where(trained.any(1), trained.float().argmax(1), batch["attention_mask"].sum(1))
        prompts = [row[:start].tolist()
                   for row, start in zip(batch["input_ids"], starts.tolist(), strict=True)]
        width = max(len(p) for p in prompts)
        device = batch["input_ids"].device
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        samples = continue_ids(self.network, ids, mask, {**self.hparams.generation, "do_sample": True},
                               tok.eos_token_id, pad)
        rows, labels = [], []
        for prompt, completion in zip(prompts, samples.tolist(), strict=True):
            if tok.eos_token_id in completion:
                completion = completion[:completion.index(tok.eos_token_id) + 1]  # EOS is trained too
            rows.append(prompt + completion)
            labels.append([lm_loss.IGNORE] * len(prompt) + completion)
        length = max(len(r) for r in rows)
        return {"input_ids": torch.tensor([r + [pad] * (length - len(r)) for r in rows], device=device),
                "attention_mask": torch.tensor([[1] * len(r) + [0] * (length - len(r)) for r in rows],
                                               device=device),
                "labels": torch.tensor([lab + [lm_loss.IGNORE] * (length - len(lab)) for lab in labels],
                                       device=device)}

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        if self.on_policy():
            batch = self.student_batch(batch)  # its own token count: no accumulation window's
            self.on_policy_batches += 1
        ratio, labels = self.hparams.task["kd_ratio"], batch["labels"]
        student, teacher = self._hidden_states(batch)
        total, count = self._divergence(labels, student, teacher)
        if ratio < 1:
            ce_total, _ = lm_loss.summed_token_loss(student, labels, lm_loss.output_head(self.network),
                                                    self._chunked_path())
            total = ratio * total + (1 - ratio) * ce_total
        self.log_train_loss(total / count.clamp(min=1), count, batch_idx)
        return self.normalized_loss(total, count, batch) + self.adapter_penalty()

    def _eval_step(self, batch: dict[str, torch.Tensor], metric: MeanMetric,
                   examples: list[dict[str, Any]] | None = None) -> None:
        labels, head = batch["labels"], lm_loss.output_head(self.network)
        student, teacher = self._hidden_states(batch)
        losses, trained = lm_loss.token_losses_from_hidden(student, labels, head, self._chunked_path())
        self._record_eval(losses, trained, batch, metric, examples)
        divergence = self.val_divergence if metric is self.val_loss else (
            self.test_divergence if metric is self.test_loss else None)
        if divergence is not None:
            total, count = self._divergence(labels, student, teacher)
            if count > 0:
                divergence.update(total / count, weight=count)

    def _log_eval(self, stage: str, metric: MeanMetric) -> None:
        super()._log_eval(stage, metric)
        divergence = getattr(self, f"{stage}_divergence", None)
        if divergence is not None and divergence.update_called:
            self.log(f"{stage}/divergence", divergence.compute(), add_dataloader_idx=False, sync_dist=True)
            divergence.reset()
