"""The decoding loop: prefill once, then one token at a time through the KV cache; greedy or sampled."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .sampling import check_sampling_arguments, filter_logits, next_tokens
from .static_decoding import NATIVE, default_compile_options, generate_static

__all__ = ["generate", "generate_tokens", "filter_logits", "next_tokens", "check_sampling_arguments", "cut_at_eos",
           "eos_token_list"]

_FROM_CONFIG = object()  # sentinel: "use the model config's eos_token_id"


def generate_tokens(model, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None,
                    attention_mask: torch.Tensor | None = None, max_new_tokens: int = 20, do_sample: bool = False,
                    temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                    eos_token_id=_FROM_CONFIG, seed: int | None = None,
                    on_step: Callable[[torch.Tensor], None] | None = None, static: bool = False,
                    compile: bool | dict | str = False) -> torch.Tensor:
    """Generate up to `max_new_tokens` after each prompt; returns only the new tokens, (B, n_new).

    Rows that produced `eos_token_id` are padded with the pad token afterwards (as transformers does);
    the loop stops when every row has finished. `eos_token_id=None` never stops early.
    `on_step(tokens)` is called with each step's (B,) tokens, e.g. to stream text.
    `static=True` decodes through a preallocated cache with fixed shapes; `compile=True` (or a dict of
    torch.compile options) also compiles that step — CUDA graphs on a GPU. `compile="native"` runs each step
    through our C decode step instead (`native_decoding`: one row, CPU, float32 or quantized models). The same
    tokens as the eager loop (up to float rounding, for "native").
    """
    check_sampling_arguments(do_sample, temperature, top_k, top_p)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    text_config = getattr(model.config, "text_config", model.config)
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        raise ValueError(f"input_ids must be a (batch, seq_len) tensor of token ids, got "
                         f"{tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__}")
    if eos_token_id is _FROM_CONFIG:
        eos_token_id = text_config.eos_token_id
    eos_ids = torch.tensor(eos_token_list(eos_token_id, text_config.vocab_size), dtype=torch.long,
                           device=input_ids.device)
    pad_id = text_config.pad_token_id if text_config.pad_token_id is not None else 0
    model_inputs = {"input_ids": input_ids}
    if pixel_values is not None:
        if not hasattr(model, "vision_tower"):
            raise ValueError(f"{type(model).__name__} has no vision tower: pixel_values cannot be used")
        model_inputs["pixel_values"] = pixel_values
    batch = input_ids.shape[0]
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    generator = None
    if seed is not None:
        generator = torch.Generator(device=input_ids.device).manual_seed(seed)

    if isinstance(compile, str) and compile != NATIVE:
        raise ValueError(f"compile must be True, False, a dict of torch.compile options or {NATIVE!r}, "
                         f"got {compile!r}")
    if static or compile:
        options = None
        if compile:
            options = compile if isinstance(compile, (dict, str)) else default_compile_options(input_ids.device)
        return generate_static(model, input_ids, pixel_values, attention_mask, max_new_tokens, do_sample,
                               temperature, top_k, top_p, eos_ids, pad_id, generator, options, on_step)
    if bool(attention_mask.all()):  # no padding: decode steps need no mask at all
        attention_mask = None

    language_model = getattr(model, "language_model", model)
    kv_cache = language_model.new_kv_cache()  # Gemma 2 / 3: local layers keep only their window
    finished, new_tokens = torch.zeros(batch, dtype=torch.bool, device=input_ids.device), []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits = model(**model_inputs, attention_mask=attention_mask, kv_cache=kv_cache,
                           logits_to_keep=1)["logits"][:, -1]  # (B, V)
            tokens = next_tokens(logits, do_sample, temperature, top_k, top_p, generator)
            tokens = torch.where(finished, torch.full_like(tokens, pad_id), tokens)
            new_tokens.append(tokens)
            if on_step is not None:
                on_step(tokens)
            finished |= torch.isin(tokens, eos_ids)
            if eos_ids.numel() and bool(finished.all()):
                break
            if attention_mask is not None:
                attention_mask = torch.cat([attention_mask, attention_mask.new_ones(batch, 1)], dim=-1)
            model_inputs = {"input_ids": tokens[:, None]}  # the cache holds everything before
    return torch.stack(new_tokens, dim=1)


def eos_token_list(eos_token_id, vocab_size: int) -> list[int]:
    """None, an id, or a list/tuple of ids -> a list of ids; anything else is a ValueError naming it."""
    ids = [] if eos_token_id is None else [eos_token_id] if isinstance(eos_token_id, int) else eos_token_id
    if isinstance(eos_token_id, bool) or not isinstance(ids, (list, tuple)) \
            or any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < vocab_size for i in ids):
        raise ValueError(f"eos_token_id must be None, a token id in [0, {vocab_size}) or a list of them, got "
                         f"{eos_token_id!r}")
    return list(ids)


def generate(model, processor, images, prompts, max_new_tokens: int = 32, do_sample: bool = False,
             temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
             seed: int | None = None, on_token: Callable[[list[str]], None] | None = None,
             compile: bool | str = False) -> list[str]:
    """Images + prompts -> answers, one string per prompt.

    `on_token(pieces)` streams: after every step it receives, for each prompt, the text added by that step.
    `compile=True` decodes with the compiled fixed-shape step (same answers; faster after a warm-up);
    `compile="native"` with our C decode step (one prompt, on a CPU; see `generate_tokens`).
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(images, (list, tuple)):
        images = [images]
    device = next(model.parameters()).device
    inputs = {k: v.to(device) for k, v in processor(text=list(prompts), images=list(images)).items()}
    eos = processor.eos_token_id
    stream = TextStream(processor.decode, len(prompts), [eos], on_token) if on_token else None
    tokens = model.generate(inputs["input_ids"], pixel_values=inputs["pixel_values"],
                            attention_mask=inputs["attention_mask"], max_new_tokens=max_new_tokens,
                            do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p,
                            eos_token_id=eos, seed=seed, on_step=stream, compile=compile)
    return [processor.decode(cut_at_eos(row, eos)) for row in tokens.tolist()]


def cut_at_eos(tokens: list[int], eos_token_id) -> list[int]:
    """The tokens before the first end-of-sequence token (`eos_token_id`: an id, a list of ids, or None)."""
    eos = {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id or ())
    for i, token in enumerate(tokens):
        if token in eos:
            return tokens[:i]
    return tokens


class TextStream:
    """`on_step` callback that hands `on_token` the text each row gained this step (one string per row).

    Each row is decoded whole and the new suffix passed on, so pieces that only make sense together (the
    bytes of one emoji, a word split in two tokens) come out right. After its end token a row adds "".
    """

    def __init__(self, decode: Callable[[list[int]], str], n_rows: int, eos_ids: list[int],
                 on_token: Callable[[list[str]], None]):
        self.decode, self.eos, self.on_token = decode, set(eos_ids), on_token
        self.produced: list[list[int]] = [[] for _ in range(n_rows)]
        self.done = [False] * n_rows
        self.shown = [""] * n_rows

    def __call__(self, tokens: torch.Tensor) -> None:
        pieces = []
        for row, token in enumerate(tokens.tolist()):
            if self.done[row] or token in self.eos:
                self.done[row] = True
                pieces.append("")
                continue
            self.produced[row].append(token)
            text = self.decode(self.produced[row])
            pieces.append(text[len(self.shown[row]):])
            self.shown[row] = text
        self.on_token(pieces)
