"""Text generation from token-id prompts with a trained causal LM (sample generations during
training, `ftexp.generate`, and the completions online RL and on-policy distillation sample)."""

from __future__ import annotations

from typing import Any

import torch


def continue_ids(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, settings: dict[str, Any],
                 eos_token_id: int, pad_token_id: int) -> torch.Tensor:
    """The new token ids (N, L) after left-padded prompts, under `settings` (GenerationConfig
    keys), with the model in eval mode (no dropout: what it would write) and no gradient; its
    training mode is restored after."""
    from transformers import GenerationConfig

    config = GenerationConfig(**settings, eos_token_id=eos_token_id, pad_token_id=pad_token_id)
    if not config.do_sample:  # greedy: drop sampling knobs so transformers does not warn
        config.temperature, config.top_p, config.top_k = None, None, None
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config)
    finally:
        model.train(was_training)
    return out[:, input_ids.shape[1]:]


def generate_texts(model: Any, tokenizer: Any, prompts: list[list[int]], settings: dict[str, Any],
                   batch_size: int = 8) -> list[str]:
    """Continue each prompt (token ids) under `settings` (GenerationConfig keys); return only the
    new text, stopped at EOS. Prompts are left-padded so every row ends where generation starts."""
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id
    texts: list[str] = []
    with torch.inference_mode():
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start:start + batch_size]
            width = max(len(p) for p in chunk)
            ids = torch.tensor([[pad] * (width - len(p)) + p for p in chunk], device=device)
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=device)
            new = continue_ids(model, ids, mask, settings, tokenizer.eos_token_id, pad)
            texts += tokenizer.batch_decode(new, skip_special_tokens=True)
    return [t.strip() for t in texts]
