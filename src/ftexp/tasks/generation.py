"""Text generation from token-id prompts with a trained causal LM (sample generations during
training, `ftexp.generate`)."""

from __future__ import annotations

from typing import Any

import torch


def generate_texts(model: Any, tokenizer: Any, prompts: list[list[int]], settings: dict[str, Any],
                   batch_size: int = 8) -> list[str]:
    """Continue each prompt (token ids) under `settings` (GenerationConfig keys); return only the
    new text, stopped at EOS. Prompts are left-padded so every row ends where generation starts."""
    from transformers import GenerationConfig

    config = GenerationConfig(**settings, eos_token_id=tokenizer.eos_token_id,
                              pad_token_id=tokenizer.pad_token_id)
    if not config.do_sample:  # greedy: drop sampling knobs so transformers does not warn
        config.temperature, config.top_p, config.top_k = None, None, None
    device = next(model.parameters()).device
    texts: list[str] = []
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start:start + batch_size]
            width = max(len(p) for p in chunk)
            ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(p)) + p for p in chunk],
                               device=device)
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=device)
            out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
            texts += tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
    model.train(was_training)
    return [t.strip() for t in texts]
