"""Policy objectives on preference data: the DPO loss family, SimPO and ORPO on pairs, KTO on
unpaired examples. The arithmetic lives in tasks/preference_losses.py; this module runs the
model, finds the reference log-probs and reports TRL's metrics.

The reference policy (task.reference), for the objectives that have one (dpo, kto):
  adapter     the same network with its PEFT adapter disabled — one copy of the weights;
  copy        a frozen copy of the starting weights (full fine-tuning), kept out of
              checkpoints and the optimizer;
  precompute  computed once before training on every split, stored in the content-addressed
              cache (keyed by the encoded data and the starting weights' files, init_from run,
              dtype, quantization and precision), and served in the batches:
              a sweep over beta or loss_type does no reference pass after its first trial;
  auto        adapter with a PEFT adapter, else copy.
`reference_forward_passes` in metrics.json counts the reference's forward passes (batches).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ftexp.data.preference_batches import REFERENCE_KEYS, chosen_prompt_labels
from ftexp.tasks import lm_loss
from ftexp.tasks.base import RunParts
from ftexp.tasks.per_example import Metrics, PerExampleTask
from ftexp.tasks.policy import PolicyTask
from ftexp.tasks.preference_losses import (
    dpo_loss,
    kto_loss,
    orpo_loss,
    sequence_logps,
    simpo_loss,
)

log = logging.getLogger(__name__)



class PreferenceTask(PolicyTask, PerExampleTask):
    """What the preference objectives share: the data, the forward pass of 2B sequences, and
    reference log-probs precomputed into the cache (the other reference kinds: tasks/policy.py)."""

    # "pairs" or "unpaired": which batches the loss reads (data/preference_batches.py).
    kind: str

    # -- building -------------------------------------------------------------------------------

    @classmethod
    def from_config(cls, cfg: Any, settings: dict[str, Any], tokenizer: Any, run_dir: Path) -> RunParts:
        """Preference records, the task, and sample generations from the first validation prompts."""
        from omegaconf import OmegaConf

        from ftexp.callbacks.sample_generations import SampleGenerations
        from ftexp.data.preference_batches import PreferenceDataModule
        from ftexp.runs import run_dir as run_files

        datamodule = PreferenceDataModule(
            OmegaConf.to_object(cfg.data), tokenizer, cls.kind, seed=cfg.seed,
            cache_dir=cfg.paths.cache_dir, evaluate_training_set=cfg.trainer.evaluate_training_set)
        datamodule.setup()
        texts, ids = datamodule.validation_prompts(cfg.task.sample_generations)
        callbacks = [SampleGenerations(tokenizer, texts, ids, settings["generation"],
                                       run_dir / run_files.GENERATIONS_FILE)] if texts else []
        # The checkpoint remembers how prompts were given, for ftexp.generate.
        return RunParts(datamodule, cls(target={"prompts": datamodule.prompt_kind}, **settings), callbacks)

    # -- log-probs --------------------------------------------------------------------------------

    def _logps(self, network: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed log-probs of each sequence's response tokens, and their counts: from the final
        hidden states in chunks (tasks/lm_loss.py), or from full logits where that path is off."""
        return self._labelled_logps(network, batch, [batch["labels"]])[0]

    def _labelled_logps(self, network: nn.Module, batch: dict[str, torch.Tensor],
                        label_sets: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(summed log-probs, counts) of each set of labels, all from one forward pass."""
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        path = self.loss_path
        if path is None or path.full_logits:
            logits = network(**inputs, use_cache=False).logits
            return [sequence_logps(logits, labels) for labels in label_sets]
        hidden = lm_loss.final_hidden_states(network, **inputs)
        head = lm_loss.output_head(network)
        return [lm_loss.sequence_logps_from_hidden(hidden, labels, head, path) for labels in label_sets]

    @torch.no_grad()
    def reference_logps(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Summed reference log-probs of the batch's 2B sequences."""
        first, second = REFERENCE_KEYS[self.kind]
        if first in batch:  # task.reference=precompute
            return torch.cat([batch[first], batch[second]]).to(self.device)
        with self.reference_network() as reference:
            return self._logps(reference, batch)[0]

    @torch.no_grad()
    def precompute_references(self, rows: list[dict[str, Any]], collate: Any, batch_size: int,
                              device: torch.device, autocast: torch.dtype | None) -> torch.Tensor:
        """(rows, 2) reference log-probs of encoded rows, from the starting weights (adapter
        disabled where there is one)."""
        from contextlib import nullcontext

        from rich.progress import track

        network = self.network
        disabled = network.disable_adapter() if hasattr(network, "disable_adapter") else nullcontext()
        out = []
        with disabled, torch.autocast(device.type, autocast, enabled=autocast is not None):
            for start in track(range(0, len(rows), batch_size), "reference log-probs", transient=True):
                batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v
                         for k, v in collate(rows[start:start + batch_size]).items()}
                logps = self._logps(network, batch)[0].float().cpu()
                self.reference_forward_passes += 1
                out.append(logps.view(2, -1).T)
        return torch.cat(out) if out else torch.zeros(0, 2)

    def before_fit(self, cfg: Any, trainer: Any, datamodule: Any) -> None:
        """task.reference=precompute: reference log-probs for every split, from the cache or
        computed now (before fit, so from the starting weights even when resuming)."""
        if self.reference_mode != "precompute":
            return
        from omegaconf import OmegaConf

        from ftexp.builders.strategy import precompute_device
        from ftexp.data.cache import ContentCache, digest
        from ftexp.data.embeddings import starting_weights_key

        plain = OmegaConf.to_container
        # The encoded data (file contents, tokenizer, template, lengths, splits) and the weights.
        key = digest("reference_logps", datamodule.encoding_key, starting_weights_key(
            plain(cfg.model, resolve=True), plain(cfg.quant, resolve=True), str(trainer.precision),
            cfg.paths.cache_dir))
        device, autocast = precompute_device(trainer)

        def compute() -> dict[str, torch.Tensor]:
            self.configure_model()
            training = self.network.training
            self.network.to(device).eval()
            with torch.random.fork_rng(devices=[]):  # a cache miss must not shift the run's seed stream
                values = {split: self.precompute_references(rows.rows, datamodule.collate,
                                                             cfg.data.eval_batch_size, device, autocast)
                          for split, rows in datamodule.datasets.items()}
            self.network.to("cpu").train(training)
            return values

        cache = ContentCache(cfg.paths.cache_dir, "reference_logps")
        values = cache.get_or_compute(key, compute, "reference log-probs")
        first, second = REFERENCE_KEYS[self.kind]
        for split, rows in datamodule.datasets.items():
            for row, (a, b) in zip(rows.rows, values[split].tolist(), strict=True):
                row[first], row[second] = a, b


def _mean(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    return (x.float().mean() if len(x) else x.new_zeros(()).float()), len(x)


class PairedPreferenceTask(PreferenceTask):
    """dpo, simpo, orpo: rows [0, B) of a batch are the chosen responses, [B, 2B) the rejected."""

    kind = "pairs"

    def loss_and_metrics(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Metrics]:
        t = self.hparams.task
        name = t["name"]
        prompt_nll = name == "orpo" and t["nll_on_prompt"]
        label_sets = [batch["labels"], *([chosen_prompt_labels(batch)] if prompt_nll else [])]
        (logps, counts), *prompt = self._labelled_logps(self.network, batch, label_sets)
        chosen, rejected = logps.chunk(2)
        chosen_n, rejected_n = counts.chunk(2)
        avg_c, avg_r = chosen / chosen_n.clamp(min=1), rejected / rejected_n.clamp(min=1)
        if name == "dpo":
            ref_c = ref_r = None
            if self.reference_mode is not None:
                ref_c, ref_r = self.reference_logps(batch).chunk(2)
            # IPO compares length-averaged log-probs, as TRL does (preference_losses.dpo_loss).
            average = t["loss_type"] == "ipo"
            if average:
                pc, pr = avg_c, avg_r
                if ref_c is not None:
                    ref_c, ref_r = ref_c / chosen_n.clamp(min=1), ref_r / rejected_n.clamp(min=1)
            else:
                pc, pr = chosen, rejected
            result = dpo_loss(pc, pr, ref_c, ref_r, beta=t["beta"], loss_type=t["loss_type"],
                              label_smoothing=t["label_smoothing"], reference_free=t["reference_free"])
        elif name == "simpo":
            result = simpo_loss(avg_c, avg_r, beta=t["beta"], gamma=t["gamma"],
                                label_smoothing=t["label_smoothing"])
        else:  # orpo: the NLL is the token mean over the batch's chosen responses, as in SFT
            total, tokens = chosen.sum(), chosen_n.sum()
            if prompt:  # task.nll_on_prompt: their prompts' tokens too (TRL's ORPOTrainer)
                total, tokens = total + prompt[0][0].sum(), tokens + prompt[0][1].sum()
            result = orpo_loss(avg_c, avg_r, -total / tokens.clamp(min=1), beta=t["beta"])
        c, r = result.chosen_rewards, result.rejected_rewards
        n = len(c)
        return result.losses, {
            "rewards/chosen": (c.mean(), n), "rewards/rejected": (r.mean(), n),
            "rewards/accuracy": ((c > r).float().mean(), n), "rewards/margin": ((c - r).mean(), n),
            "logps/chosen": (chosen.detach().mean(), n), "logps/rejected": (rejected.detach().mean(), n)}


class KTOTask(PreferenceTask):
    """kto: rows [0, B) of a batch are the examples, [B, 2B) their prompts with mismatched
    completions, whose policy / reference log-ratio estimates the KL reference point.

    With no pairs to compare, `rewards/accuracy` ranks the examples: the share of (desirable,
    undesirable) example pairs within a batch whose implicit rewards beta * (policy - reference)
    put the desirable one higher (a ROC AUC); `rewards/margin` is the mean desirable reward minus
    the mean undesirable one."""

    kind = "unpaired"

    def loss_and_metrics(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Metrics]:
        t = self.hparams.task
        logps, _ = self._logps(self.network, batch)
        policy, policy_kl = logps.chunk(2)
        reference, reference_kl = self.reference_logps(batch).chunk(2)
        # The KL reference point on the mismatched pairs, over every rank's part of the batch
        # before kto_loss clamps it at 0 (kto_kl_estimate is the one-process form).
        kl = (policy_kl.detach().float() - reference_kl.float()).mean()
        if self._trainer is not None and self.trainer.world_size > 1:
            kl = self.all_gather(kl).mean()
        desirable = batch["desirable"].bool()
        result = kto_loss(policy, reference, desirable, kl, beta=t["beta"],
                          desirable_weight=t["desirable_weight"], undesirable_weight=t["undesirable_weight"])
        rewards = result.rewards
        chosen, chosen_n = _mean(rewards[desirable])
        rejected, rejected_n = _mean(rewards[~desirable])
        # Every (desirable, undesirable) pair of the batch: is the desirable one rewarded more?
        ranked = (rewards[desirable][:, None] > rewards[~desirable][None, :]).float()
        both = len(rewards) if chosen_n and rejected_n else 0
        return result.losses, {
            "rewards/chosen": (chosen, chosen_n), "rewards/rejected": (rejected, rejected_n),
            "rewards/accuracy": _mean(ranked.flatten()), "rewards/margin": (chosen - rejected, both),
            "logps/chosen": _mean(policy.detach()[desirable]),
            "logps/rejected": _mean(policy.detach()[~desirable]), "kl": (result.kl, len(rewards))}
