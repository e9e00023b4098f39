"""task=grpo: online RL with reward functions. Each training step samples `num_generations`
completions per prompt from the policy (transformers' `generate`: left padding, KV cache, eval
mode, no gradient), scores them with the reward functions (ftexp.tasks.rewards; weighted sum), turns the
scores into group-normalised advantages and minimises the clipped policy-ratio objective — the
arithmetic is tasks/grpo_losses.py's. Validation scores greedy completions of the validation
prompts: val/reward (and val/rewards/<name> per function) is their mean reward.

The reference policy (task.beta > 0; at 0 there is no reference pass at all): the network with
its PEFT adapter disabled (one copy of the weights), or a frozen copy of the starting weights
for full fine-tuning — config.reference_source decides, as for the preference tasks.
`reference_forward_passes` in metrics.json counts the reference's forward passes.

task.num_iterations = mu optimizer steps per batch of samples (PPO epochs): the loader serves
each accumulation window mu times in a row (data/rows.py WindowedLoader, `repeat_index`). The
first serving samples, scores and keeps the samples with the log-probs of the policy that drew
them (and the reference's) in `replay`; the next mu - 1 train on the kept samples, so the ratio
pi / pi_old moves away from 1 and the clipping acts. At mu = 1 nothing is kept: the "old"
log-probs are the policy's own, detached (grpo_loss with old_logps=None). `replay` is saved in
full-state checkpoints, so a run resumed between two iterations trains on the same samples.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only
from torch import nn
from torchmetrics import MeanMetric

from ftexp.callbacks.sample_generations import SampleGenerations
from ftexp.runs.console import print_generations
from ftexp.runs.errors import ConfigError
from ftexp.tasks import lm_loss
from ftexp.tasks.base import EVAL_STAGES, RunParts
from ftexp.tasks.generation import continue_ids, generate_texts
from ftexp.tasks.grpo_losses import (
    GroupAdvantages,
    GRPOLoss,
    compute_advantages,
    grpo_loss,
    masked_mean,
    token_entropy,
    token_logps,
)
from ftexp.tasks.policy import PolicyTask
from ftexp.tasks.rewards import Reward, build_reward
from ftexp.tasks.vllm_sampler import VLLMSampler

log = logging.getLogger(__name__)


def build_rewards(nodes: dict[str, Any]) -> list[Reward]:
    """task.rewards (name → {_target_, weight, its keys}) as Rewards, each checked when built
    (ftexp.tasks.rewards.build_reward: one-line errors naming task.rewards.<name>)."""
    rewards = []
    for name, node in nodes.items():
        node = dict(node)
        target = node.pop("_target_")
        weight = node.pop("weight", 1.0)
        try:
            rewards.append(build_reward(target, name=str(name), weight=weight, **node))
        except ConfigError as err:  # build_reward says `rewards.<name>`; the config key is task.rewards
            where = f"rewards.{name}"
            message = str(err)
            raise ConfigError(message.replace(where, f"task.{where}", 1) if where in message
                              else f"task.{where}: {message}") from err
    return rewards


def score(rewards: list[Reward], prompts: list[Any], completions: list[str],
          columns: dict[str, list[Any]]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(total (N,), per function (N,) each): the total is the weighted sum over the functions that
    scored a completion (NaN scores are left out, as TRL's nansum does); NaN — unscored, advantage
    0 — only where no function scored it."""
    per = {r.name: torch.tensor(r(prompts, completions, **columns), dtype=torch.float64) for r in rewards}
    weighted = torch.stack([per[r.name] * r.weight for r in rewards])
    total = weighted.nansum(0).masked_fill(weighted.isnan().all(0), math.nan)
    return total, per


def completion_mask(ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    """(N, L) bool: each completion's tokens up to and including its first EOS (all of them when it
    has none: cut at the length limit). What follows EOS is padding from `generate`."""
    is_eos = ids == eos_id
    length = ids.shape[1]
    first = torch.where(is_eos.any(1), is_eos.int().argmax(1), torch.full_like(ids[:, 0], length))
    return torch.arange(length, device=ids.device)[None, :] <= first[:, None]


def _nan_stats(values: torch.Tensor) -> tuple[float, float]:
    """Mean and (Bessel) std of the scored values; NaN when there are none (std: fewer than two)."""
    kept = values[~values.isnan()]
    mean = kept.mean().item() if kept.numel() else math.nan
    std = kept.std().item() if kept.numel() > 1 else math.nan
    return mean, std


def _number(value: torch.Tensor) -> float | None:
    return None if value.isnan() else round(value.item(), 6)  # JSON has no NaN: unscored is null


class ScoredSampleGenerations(SampleGenerations):
    """Sample generations (generations.jsonl and the console) with each completion's reward —
    the weighted total and each function's score — beside it."""

    def __init__(self, tokenizer: Any, prompts: list[str], prompt_ids: list[list[int]],
                 settings: dict[str, Any], path: Path, given: list[Any], columns: dict[str, list[Any]]):
        super().__init__(tokenizer, prompts, prompt_ids, settings, path)
        self.given, self.columns = given, columns

    @rank_zero_only
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not self.prompts:
            return
        texts = generate_texts(pl_module.network, self.tokenizer, self.prompt_ids, self.settings)
        total, per = score(pl_module.rewards, self.given, texts, self.columns)
        with self.path.open("a", encoding="utf-8") as f:
            for i, (prompt, text) in enumerate(zip(self.prompts, texts, strict=True)):
                f.write(json.dumps({"epoch": trainer.current_epoch, "step": trainer.global_step,
                                    "prompt": prompt, "generation": text, "reward": _number(total[i]),
                                    "rewards": {n: _number(v[i]) for n, v in per.items()}},
                                   ensure_ascii=False) + "\n")
        shown = [f"{text}  [reward {_number(r)}]" for text, r in zip(texts, total, strict=True)]
        print_generations(self.prompts, shown, f"sample generations · step {trainer.global_step}")


class Samples(NamedTuple):
    """A batch of scored completions: prompt + completion ids (N, P + L) with their attention mask,
    the completion's token mask (N, L), the rewards and the advantages (N = prompts * G)."""
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    completion_mask: torch.Tensor
    rewards: torch.Tensor
    per_function: dict[str, torch.Tensor]
    advantages: GroupAdvantages

    def to_state(self) -> dict[str, Any]:
        """Plain dicts of tensors: what a checkpoint can hold and load without pickled classes."""
        return {**self._asdict(), "advantages": self.advantages._asdict()}

    @classmethod
    def from_state(cls, state: dict[str, Any], device: torch.device) -> Samples:
        moved = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in state.items()}
        moved["per_function"] = {k: v.to(device) for k, v in state["per_function"].items()}
        moved["advantages"] = GroupAdvantages(**{k: v.to(device) for k, v in state["advantages"].items()})
        return cls(**moved)


class Replayed(NamedTuple):
    """Samples kept for the later iterations of task.num_iterations, with the log-probs of the
    policy that drew them (detached) and of the reference (None at beta = 0)."""
    samples: Samples
    old_logps: torch.Tensor
    reference_logps: torch.Tensor | None

    def to_state(self) -> dict[str, Any]:
        return {"samples": self.samples.to_state(), "old_logps": self.old_logps,
                "reference_logps": self.reference_logps}

    @classmethod
    def from_state(cls, state: dict[str, Any], device: torch.device) -> Replayed:
        reference = state["reference_logps"]
        return cls(Samples.from_state(state["samples"], device), state["old_logps"].to(device),
                   None if reference is None else reference.to(device))


def _key(name: str) -> str:
    return name.replace("/", "__").replace(".", "_")  # module names cannot hold "." or read well with "/"


class GRPOTask(PolicyTask):
    """A causal LM trained on rewards of its own samples; `rewards` and `tokenizer` are attached by
    from_config (a run dir rebuilt for generate / export needs neither)."""

    # What a batch keeps for its later iterations, and its key in full-state checkpoints.
    replay_type: ClassVar[type] = Replayed
    replay_key: ClassVar[str] = "grpo_replay"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        t = self.hparams.task
        self.reward_names = list(t["rewards"])
        self.max_completion_length = int(t["max_completion_length"]
                                         or self.hparams.generation["max_new_tokens"])
        # Set by from_config (training runs only: predict / generate / export need neither).
        self.tokenizer: Any = None
        self.rewards: list[Reward] = []
        names = ["reward", "completions/mean_length", *(f"rewards/{n}" for n in self.reward_names)]
        self.eval_means = nn.ModuleDict({
            stage: nn.ModuleDict({_key(m): MeanMetric() for m in names}) for stage in (*EVAL_STAGES, "test")})
        self._metric_names = names
        self._logits_to_keep: bool | None = None
        # window_index → samples kept for the next iterations of the same batch (num_iterations > 1).
        self.replay: dict[int, Any] = {}
        # task.generation_backend=vllm: the engine (started with the fit), where its starting
        # weights are written, and the longest prompt + completion it must hold.
        self.vllm: VLLMSampler | None = None
        self.vllm_dir: Path | None = None
        self.max_prompt_length: int | None = None

    # -- building -------------------------------------------------------------------------------

    @classmethod
    def from_config(cls, cfg: Any, settings: dict[str, Any], tokenizer: Any, run_dir: Path) -> RunParts:
        """Prompts, the reward functions (built now: a bad one fails before the model loads), the
        task, and sample generations from the first validation prompts."""
        from omegaconf import OmegaConf

        from ftexp.data.prompts import PromptsDataModule
        from ftexp.runs import run_dir as run_files

        datamodule = PromptsDataModule(OmegaConf.to_object(cfg.data), tokenizer, seed=cfg.seed,
                                       evaluate_training_set=cfg.trainer.evaluate_training_set)
        datamodule.setup()
        rewards = build_rewards(settings["task"]["rewards"])
        texts, ids = datamodule.validation_prompts(cfg.task.sample_generations)
        callbacks = []
        if texts:  # the rows' prompts as given and their columns, for the rewards beside each sample
            given = datamodule.collate(datamodule.datasets["validation"].rows[:len(texts)])
            callbacks.append(ScoredSampleGenerations(tokenizer, texts, ids, settings["generation"],
                                                     run_dir / run_files.GENERATIONS_FILE,
                                                     given["prompts"], given["columns"]))
        datamodule.train_repeats = cfg.task.num_iterations  # mu optimizer steps per batch of samples
        task = cls(target={"prompts": datamodule.prompt_kind}, **settings)
        task.tokenizer, task.rewards = tokenizer, rewards
        task.vllm_dir = run_dir / "vllm_model"
        task.max_prompt_length = cfg.data.max_prompt_length or cfg.data.max_length
        if cfg.task.get("importance_sampling") == "sequence" and cfg.task.loss_type != "grpo":
            log.warning("task.importance_sampling=sequence with task.loss_type=%s weights each completion "
                        "by its length; GSPO's per-sequence objective is task.loss_type=grpo.",
                        cfg.task.loss_type)
        return RunParts(datamodule, task, callbacks)

    def on_fit_start(self) -> None:
        if self.hparams.task["generation_backend"] == "vllm" and self.vllm is None:
            self.vllm = self.start_vllm()

    def start_vllm(self) -> VLLMSampler:
        return VLLMSampler.from_policy(self.network, self.tokenizer, self.vllm_dir,
                                       self.max_prompt_length + self.max_completion_length,
                                       self.hparams.task["vllm_gpu_memory_utilization"],
                                       seed=int(torch.initial_seed() % 2**31))

    # -- sampling and scoring ---------------------------------------------------------------------

    def generation_settings(self, sample: bool) -> dict[str, Any]:
        """The generation group's settings, capped at max_completion_length: sampled for training
        (GRPO needs different completions per group), greedy for validation."""
        return {**self.hparams.generation, "max_new_tokens": self.max_completion_length, "do_sample": sample}

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, sample: bool) -> torch.Tensor:
        """Completion ids (N, L) of left-padded prompts; L <= max_completion_length (generation stops
        early when every row has ended). No grad rather than inference mode: the ids feed the
        training forward pass."""
        tok = self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        if self.vllm is not None:
            self.vllm.sync(self.network, self.global_step)
            prompts = [row[m.bool()].tolist() for row, m in zip(input_ids, attention_mask, strict=True)]
            return self.vllm.generate(prompts, self.generation_settings(sample), pad).to(input_ids.device)
        return continue_ids(self.network, input_ids, attention_mask, self.generation_settings(sample),
                            tok.eos_token_id, pad)

    def sample(self, batch: dict[str, Any], group_size: int, sample: bool = True) -> Samples:
        """Completions of the batch's prompts (`group_size` each, adjacent), scored."""
        ids = batch["input_ids"].repeat_interleave(group_size, 0)
        mask = batch["attention_mask"].repeat_interleave(group_size, 0)
        completions = self.generate(ids, mask, sample)
        keep = completion_mask(completions, self.tokenizer.eos_token_id)
        texts = [self.tokenizer.decode(row[m].tolist(), skip_special_tokens=True)
                 for row, m in zip(completions, keep, strict=True)]
        prompts = [p for p in batch["prompts"] for _ in range(group_size)]
        columns = {k: [v for v in values for _ in range(group_size)]
                   for k, values in batch["columns"].items()}
        total, per = score(self.rewards, prompts, texts, columns)
        return Samples(torch.cat([ids, completions], 1), torch.cat([mask, keep.to(mask.dtype)], 1),
                       keep, total, per, self.outcome_advantages(total, group_size))

    def outcome_advantages(self, rewards: torch.Tensor, group_size: int) -> GroupAdvantages:
        t = self.hparams.task
        return compute_advantages(rewards, group_size, t["advantage"], t["scale_rewards"])

    # -- log-probs --------------------------------------------------------------------------------

    def _takes_logits_to_keep(self, network: nn.Module) -> bool:
        """Whether the model can compute logits for the last positions only (most transformers
        causal LMs): the prompt's logits, (N, P, vocab), are never needed."""
        if self._logits_to_keep is None:
            base = network.get_base_model() if hasattr(network, "get_base_model") else network
            try:
                self._logits_to_keep = "logits_to_keep" in inspect.signature(base.forward).parameters
            except (TypeError, ValueError):
                self._logits_to_keep = False
        return self._logits_to_keep

    def token_logps(self, network: nn.Module, samples: Samples,
                    entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-token log-probs (N, L) of the completions under `network` (divided by the sampling
        temperature, as TRL does: the distribution the tokens were drawn from), and their entropy."""
        logps, ent, _ = self.completion_forward(network, samples, entropy)
        return logps, ent

    def completion_forward(self, network: nn.Module, samples: Samples, entropy: bool = False,
                           hidden_states: bool = False) -> tuple[torch.Tensor, torch.Tensor | None,
                                                                 torch.Tensor | None]:
        """(per-token log-probs (N, L), mean token entropy or None, the final hidden states (N, L, H)
        that predict the completion's tokens or None). Position ids count real tokens only, as
        `generate` numbered the left-padded prompts. From the final hidden states a chunk of tokens
        at a time (tasks/lm_loss.py: no (N, L, vocab) logits), or from the completion's logits
        where that path is off."""
        length = samples.completion_mask.shape[1]
        mask = samples.attention_mask
        inputs = {"input_ids": samples.input_ids, "attention_mask": mask,
                  "position_ids": (mask.cumsum(-1) - 1).clamp(min=0)}
        ids, temperature = samples.input_ids[:, -length:], self.hparams.generation["temperature"]
        path = self.loss_path
        if path is not None and not path.full_logits:
            hidden = lm_loss.final_hidden_states(network, **inputs)[:, -(length + 1):-1]  # t predicts t + 1
            head = lm_loss.output_head(network)
            logps = lm_loss.chunked_token_logps(hidden, ids, head, path.chunk_tokens, path.transform,
                                                temperature=temperature, ignore_index=None)
            ent = None
            if entropy:
                with torch.no_grad():
                    per_token = lm_loss.chunked_token_entropy(hidden.detach(), head, path.chunk_tokens,
                                                              path.transform, temperature)
                ent = masked_mean(per_token, samples.completion_mask)
            return logps, ent, hidden if hidden_states else None
        kwargs = {"logits_to_keep": length + 1} if self._takes_logits_to_keep(network) else {}
        out = network(**inputs, use_cache=False, output_hidden_states=hidden_states, **kwargs)
        logits = out.logits[:, -(length + 1):-1] / temperature  # t predicts t + 1
        logps = token_logps(logits, ids)
        ent = None
        if entropy:
            with torch.no_grad():
                ent = masked_mean(token_entropy(logits.detach(), samples.completion_mask),
                                  samples.completion_mask)
        return logps, ent, out.hidden_states[-1][:, -(length + 1):-1] if hidden_states else None

    @torch.no_grad()
    def reference_logps(self, samples: Samples) -> torch.Tensor:
        with self.reference_network() as reference:
            return self.token_logps(reference, samples)[0]

    def loss(self, samples: Samples, old_logps: torch.Tensor | None,
             reference_logps: torch.Tensor | None) -> tuple[GRPOLoss, torch.Tensor, torch.Tensor | None]:
        """The GRPO objective on a batch of samples, the policy's per-token log-probs (with their
        graph) and its mean token entropy."""
        t = self.hparams.task
        policy, entropy = self.token_logps(self.network, samples, entropy=True)
        advantages = samples.advantages.advantages.to(policy.device, policy.dtype)
        result = grpo_loss(policy, old_logps, reference_logps, advantages, samples.completion_mask,
                           epsilon=t["epsilon"], epsilon_high=t["epsilon_high"], beta=t["beta"],
                           loss_type=t["loss_type"], max_completion_length=self.max_completion_length,
                           importance_sampling=t["importance_sampling"])
        return result, policy, entropy

    # -- steps ------------------------------------------------------------------------------------

    def step_inputs(self, batch: dict[str, Any]) -> Replayed | tuple[Samples, None, torch.Tensor | None]:
        """(samples, the log-probs of the policy that drew them, the reference's) for a training
        batch: new samples at a batch's first iteration (old log-probs None: this policy drew
        them), the kept ones at the next."""
        if batch.get("repeat_index", 0) == 0:
            samples = self.sample(batch, self.hparams.task["num_generations"])
            return samples, None, self.reference_logps(samples) if self.reference_mode is not None else None
        return self.kept(batch)

    def kept(self, batch: dict[str, Any]) -> Any:
        """What the batch's first iteration kept (a `replay_type`), on this task's device."""
        kept = self.replay[batch["window_index"]]
        if kept.old_logps.device != self.device:  # loaded from a checkpoint before the move
            kept = self.replay_type.from_state(kept.to_state(), self.device)
        return kept

    def remember(self, batch: dict[str, Any], kept: Any) -> None:
        """Keep a batch's samples at its first iteration for the next ones; drop them after its last."""
        iteration, last = batch.get("repeat_index", 0), self.hparams.task["num_iterations"] - 1
        if iteration == 0 and last > 0:
            self.replay[batch["window_index"]] = kept
        elif iteration == last > 0:
            self.replay.pop(batch["window_index"])  # used up: not carried into checkpoints

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        samples, old_logps, reference = self.step_inputs(batch)
        result, policy, entropy = self.loss(samples, old_logps, reference)
        self.remember(batch, Replayed(samples, policy.detach(), reference))
        count = torch.tensor(len(samples.rewards), device=result.loss.device)
        self.log_train_loss(result.loss, count, batch_idx)
        if (batch_idx + 1) % self.trainer.log_every_n_steps == 0:
            metrics = self.step_metrics(samples, result, entropy)
            self.log_dict({f"train/{k}": v for k, v in metrics.items() if not math.isnan(v)},
                          on_step=True, on_epoch=False)
        return result.loss + self.adapter_penalty()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        if "optimizer_states" in checkpoint and self.replay:  # a full-state save, to resume from
            checkpoint[self.replay_key] = {slot: kept.to_state() for slot, kept in self.replay.items()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self.replay = {int(slot): self.replay_type.from_state(kept, self.device)
                       for slot, kept in checkpoint.get(self.replay_key, {}).items()}

    def step_metrics(self, samples: Samples, result: GRPOLoss,
                     entropy: torch.Tensor | None) -> dict[str, float]:
        """TRL's per-step metrics: rewards (total and per function), zero-variance groups,
        completion lengths, KL, clipping, entropy."""
        lengths = samples.completion_mask.sum(1).float()
        clipped = ~(samples.input_ids[:, -samples.completion_mask.shape[1]:]
                    == self.tokenizer.eos_token_id).any(1)
        adv = samples.advantages
        out = dict(zip(("reward", "reward_std"), _nan_stats(samples.rewards), strict=True))
        for name, values in samples.per_function.items():
            out[f"rewards/{name}/mean"], out[f"rewards/{name}/std"] = _nan_stats(values)
        out.update({
            "frac_reward_zero_std": adv.zero_variance.float().mean().item(),
            "unscored": adv.unscored.float().mean().item(),
            "completions/mean_length": lengths.mean().item(), "completions/max_length": lengths.max().item(),
            "completions/clipped_ratio": clipped.float().mean().item(),
            "clip_ratio/low_mean": result.clip_low.item(), "clip_ratio/high_mean": result.clip_high.item(),
            "clip_ratio/region_mean": result.clip_region.item()})
        if result.kl is not None:
            out["kl"] = result.kl.item()
        if entropy is not None:
            out["entropy"] = entropy.item()
        return out

    def _evaluate(self, stage: str, batch: dict[str, Any]) -> None:
        """Greedy completions of the batch's prompts, scored: their mean reward (scored ones only)."""
        samples = self.sample(batch, 1, sample=False)
        means = self.eval_means[stage]
        for name, values in (("reward", samples.rewards),
                             *((f"rewards/{n}", v) for n, v in samples.per_function.items())):
            kept = values[~values.isnan()]
            if kept.numel():
                means[_key(name)].update(kept.float().to(self.device))
        means[_key("completions/mean_length")].update(samples.completion_mask.sum(1).float())

    def _log_stage(self, stage: str) -> None:
        values = {}
        for name in self._metric_names:
            mean = self.eval_means[stage][_key(name)]
            if mean.update_called:
                values[f"{stage}/{name}"] = mean.compute()
            mean.reset()
        shown = {self.hparams.task["monitor"]}
        for prog_bar in (True, False):
            part = {k: v for k, v in values.items() if (k in shown) == prog_bar}
            if part:  # compute() already gathers every rank; sync_dist only averages equal values
                self.log_dict(part, prog_bar=prog_bar, add_dataloader_idx=False, sync_dist=True)

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluate(EVAL_STAGES[dataloader_idx], batch)

    def on_validation_epoch_end(self) -> None:
        for stage in EVAL_STAGES:
            self._log_stage(stage)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate("test", batch)

    def on_test_epoch_end(self) -> None:
        self._log_stage("test")
