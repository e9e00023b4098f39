"""What the tasks that train a causal-LM policy against a reference policy share (the preference
objectives, GRPO): the network with dropout off, where the reference comes from
(config.reference_source), one way to run it, and the loss path their log-probs take
(tasks/lm_loss.py: chunked from the final hidden states unless the model rules it out).

The reference policy: the same network with its PEFT adapter disabled (one copy of the weights),
or a frozen copy of the starting weights for full fine-tuning, kept out of checkpoints, the
optimizer and `.to()` until it is needed. `reference_forward_passes` in metrics.json counts its
forward passes (batches)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn

from ftexp.config.preference_tasks import reference_source
from ftexp.runs.errors import ConfigError
from ftexp.tasks import lm_loss
from ftexp.tasks.base import FinetuneTask


def check_same_vocabulary(ours: Any, theirs: Any, setting: str, role: str, why: str) -> None:
    """Another model reads or scores this policy's token ids, so both tokenizers must mean the
    same by each id; `why` ends the one-line error with the reason and the fix."""
    if ours.get_vocab() != theirs.get_vocab():
        raise ConfigError(f"{setting} has another tokenizer than the {role} ({len(theirs)} vs {len(ours)} "
                          f"tokens, or the same ids for other tokens); {why}")


def disable_dropout(network: nn.Module) -> None:
    for module in network.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


class PolicyTask(FinetuneTask):
    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.reference_forward_passes = 0
        # A list, not an attribute: a frozen copy must stay out of state_dict, parameters() and .to().
        self._reference_copy: list[nn.Module] = []
        # Chosen with the network (configure_model); per-token log-probs, which the fused loss
        # kernels (model.kernels) do not return.
        self.loss_path: lm_loss.LossPath | None = None

    def build_network(self) -> nn.Module:
        network = self.adapted_backbone(causal_lm=True)
        if self.hparams.task["disable_dropout"]:
            # As TRL does: with dropout on, the policy's and the reference's log-probs would differ
            # by random masks, and by more for longer responses.
            disable_dropout(network)
        return network

    @property
    def backbone(self) -> nn.Module:
        return self.network

    @property
    def reference_mode(self) -> str | None:
        """adapter | copy | precompute, or None when the objective has no reference pass."""
        return reference_source(self.hparams.task, self.hparams.adapter["method"])

    def configure_model(self) -> None:
        super().configure_model()
        if self.loss_path is None:
            self.loss_path = lm_loss.loss_path_for(self.network, self.hparams.model, kernels=False)
        if self.reference_mode == "copy" and not self._reference_copy:
            # Taken before the first step (and, when resuming, before the checkpoint loads).
            self._reference_copy.append(copy.deepcopy(self.network).requires_grad_(False).eval())

    @contextmanager
    def reference_network(self) -> Iterator[nn.Module]:
        """The network to run as the reference (counted as one pass): the frozen copy, on this
        task's device, or the policy network with its adapter disabled for the block."""
        self.reference_forward_passes += 1
        if self.reference_mode == "copy":
            reference = self._reference_copy[0]
            if next(reference.parameters()).device != self.device:
                reference.to(self.device)
            yield reference
        else:
            with self.network.disable_adapter():
                yield self.network

    def summary(self) -> dict[str, Any]:
        out = {**super().summary(), "reference": self.reference_mode or "none"}
        if self.reference_mode is not None:
            out["reference_forward_passes"] = self.reference_forward_passes
        if self.loss_path is not None:
            out["loss_path"] = self.loss_path.describe()
        return out
