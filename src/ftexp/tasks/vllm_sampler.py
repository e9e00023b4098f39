"""task.generation_backend=vllm: GRPO's sampling through vLLM, colocated with training on the
same GPU (TRL's vllm_mode="colocate"). The engine loads the starting weights once; before each
sampling after an optimizer step the policy's current weights are pushed into it — with a PEFT
adapter, merged into the base for the copy and unmerged again, so one set of trainable weights
stays in the LightningModule.

vLLM is an optional extra (CUDA only); config validation refuses the backend up front without
CUDA or the package. Only `policy_weights` runs without vLLM (and is tested on CPU).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ftexp.runs.errors import FtexpError

# Parameter names an adapter adds beside the base weights (PEFT's LoRA / DoRA and friends).
_ADAPTER_PARTS = ("lora_", "lokr_", "loha_", "hada_", "oft_", "boft_", "ia3_", "vera_", "modules_to_save")


def _hf_name(name: str) -> str:
    """A base-model parameter name as the Hub checkpoint (and vLLM's loader) spells it."""
    return name.replace(".base_layer.", ".")


@torch.no_grad()
def policy_weights(network: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(Hub name, tensor) of every base weight of `network` with its adapter's update folded in.
    With a PEFT adapter each adapted layer is merged (PEFT's own merge, so every method and DoRA
    are folded as PEFT folds them) while its weight is handed out, then its saved weight is put
    back bit for bit — merge-then-unmerge would leave rounding in the trained weights each step.
    The tensors are the network's own storage: copy each (as vLLM's load_weights does) before
    asking for the next."""
    if not hasattr(network, "get_base_model"):
        yield from network.state_dict().items()
        return
    from peft.tuners.tuners_utils import BaseTunerLayer

    base = network.get_base_model()
    adapted = {name: module for name, module in base.named_modules() if isinstance(module, BaseTunerLayer)}
    for name, tensor in base.state_dict().items():
        if any(part in name for part in _ADAPTER_PARTS):
            continue
        layer = adapted.get(name.removesuffix(".base_layer.weight"))
        if layer is None or not name.endswith(".base_layer.weight"):
            yield _hf_name(name), tensor
            continue
        saved = layer.get_base_layer().weight.detach().clone()
        layer.merge()
        try:
            yield _hf_name(name), layer.get_base_layer().weight
        finally:
            layer.get_base_layer().weight.data = saved
            layer.merged_adapters.clear()


def _engine_model(llm: Any) -> Any:
    """The torch model inside a colocated vLLM engine (its place moved between vLLM releases)."""
    executor = llm.llm_engine.model_executor
    for path in (("driver_worker", "worker", "model_runner", "model"),
                 ("driver_worker", "model_runner", "model")):
        node = executor
        for attr in path:
            node = getattr(node, attr, None)
            if node is None:
                break
        if node is not None:
            return node
    import vllm

    raise FtexpError(f"vLLM {vllm.__version__}: cannot reach the engine's model to load new weights "
                     "into; use task.generation_backend=transformers or a vLLM release whose engine "
                     "exposes it (as TRL's colocate mode needs).")


class VLLMSampler:
    """A colocated vLLM engine that samples GRPO's completions from the current policy."""

    def __init__(self, model_path: str, dtype: str, max_model_len: int, gpu_memory_utilization: float,
                 seed: int):
        from vllm import LLM

        self.llm = LLM(model=model_path, dtype=dtype, max_model_len=max_model_len,
                       gpu_memory_utilization=gpu_memory_utilization, seed=seed,
                       tensor_parallel_size=1, enable_prefix_caching=True)
        self.synced_step: int | None = None

    @classmethod
    def from_policy(cls, network: nn.Module, tokenizer: Any, directory: Path, max_model_len: int,
                    gpu_memory_utilization: float, seed: int) -> VLLMSampler:
        """An engine loaded with the policy's current weights, written once as a Hub-style folder
        (the starting point may be random-init or an earlier run, which vLLM cannot load itself)."""
        from safetensors.torch import save_file

        base = network.get_base_model() if hasattr(network, "get_base_model") else network
        directory.mkdir(parents=True, exist_ok=True)
        base.config.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
        # Cloned: tied embeddings share storage, which safetensors refuses to write twice.
        save_file({name: t.detach().clone().contiguous().cpu() for name, t in policy_weights(network)},
                  str(directory / "model.safetensors"))
        dtype = str(next(network.parameters()).dtype).removeprefix("torch.")
        return cls(str(directory), dtype, max_model_len, gpu_memory_utilization, seed)

    def sync(self, network: nn.Module, step: int) -> None:
        """Push the policy's weights into the engine, once per optimizer step."""
        if self.synced_step == step:
            return
        _engine_model(self.llm).load_weights(policy_weights(network))
        self.llm.reset_prefix_cache()  # cached prompt states were computed by the old weights
        self.synced_step = step

    def generate(self, prompts: list[list[int]], settings: dict[str, Any], pad_id: int) -> torch.Tensor:
        """Completion ids (N, L) right-padded with `pad_id`, as transformers' generate returns
        them after the prompt. Each request's seed is drawn from torch's generator, so the run's
        seed (and a resume's restored RNG state) decides the samples."""
        from vllm import SamplingParams

        sample = settings.get("do_sample", True)
        seeds = torch.randint(0, 2**31 - 1, (len(prompts),)).tolist()
        params = [SamplingParams(max_tokens=settings["max_new_tokens"], seed=s,
                                 temperature=settings.get("temperature", 1.0) if sample else 0.0,
                                 top_p=settings.get("top_p") or 1.0 if sample else 1.0,
                                 top_k=settings.get("top_k") or -1 if sample else -1)
                  for s in seeds]
        outputs = self.llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        rows = [list(o.outputs[0].token_ids) for o in outputs]
        width = max(1, max(len(r) for r in rows))
        return torch.tensor([r + [pad_id] * (width - len(r)) for r in rows])
