"""Text in, text out for a decoder alone, e.g. the real Gemma 3 270M read from its GGUF file (notebook 13)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from tokenizers import Tokenizer

from .generation import TextStream, cut_at_eos, eos_token_list


def encode_prompts(tokenizer: Tokenizer, prompts: list[str], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts -> left-padded (B, T) input_ids and attention_mask; the tokenizer adds <bos> itself."""
    rows = []
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise ValueError(f"prompts[{i}] must be a string, got a {type(prompt).__name__}")
        rows.append(tokenizer.encode(prompt).ids)
    longest = max(len(row) for row in rows)
    if longest == 0:
        raise ValueError("every prompt encodes to no token at all")
    input_ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), longest), dtype=torch.long)
    for row, ids in enumerate(rows):  # left padding: every prompt ends at the last column
        input_ids[row, longest - len(ids):] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, longest - len(ids):] = 1
    return input_ids, attention_mask


def generate_text(model, tokenizer: Tokenizer, prompts: str | list[str], max_new_tokens: int = 64,
                  do_sample: bool = False, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None, seed: int | None = None,
                  on_token: Callable[[list[str]], None] | None = None, compile: bool | str = False) -> list[str]:
    """Continue each prompt; returns the new text of each (stopped at the model's end token).

    `on_token(pieces)` streams, as in `paligemma.generate`: after each step, the text each prompt gained.
    `compile` as in `generate_tokens` (True, or "native" for our C decode step).
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise ValueError(f"prompts must be a string or a non-empty list of strings, got {prompts!r}")
    if not isinstance(tokenizer, Tokenizer):
        raise ValueError(f"tokenizer must be a tokenizers.Tokenizer, got a {type(tokenizer).__name__}")
    config = model.config
    device = next(model.parameters()).device
    input_ids, attention_mask = encode_prompts(tokenizer, list(prompts), config.pad_token_id or 0)
    eos = eos_token_list(config.eos_token_id, config.vocab_size)

    def decode(ids: list[int]) -> str:
        return tokenizer.decode(ids, skip_special_tokens=True)

    stream = TextStream(decode, len(prompts), eos, on_token) if on_token else None
    tokens = model.generate(input_ids.to(device), attention_mask=attention_mask.to(device),
                            max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature, top_k=top_k,
                            top_p=top_p, seed=seed, on_step=stream, compile=compile)
    return [decode(cut_at_eos(row, eos)) for row in tokens.tolist()]
