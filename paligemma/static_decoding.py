"""Fast decoding: a preallocated KV cache and a decode step whose tensor shapes never change.

Fixed shapes let `torch.compile` trace the step once and, on a GPU, replay it as a CUDA graph
(`mode="reduce-overhead"`): one launch per token instead of hundreds of small kernels. The loop
keeps everything on the device — positions advance in place, finished rows are tracked as a
tensor — so the host never waits for the GPU except every `EOS_CHECK_EVERY` steps.

Compiled calls round the cache length up to a power of two (`cache_bucket`), so a handful of
compilations and caches serve prompts of every length; a model keeps at most `KEPT_CACHES`
caches, and a lock makes concurrent compiled calls on one model take turns on them.
`compile="native"` keeps this loop and cache and swaps the step for our C one (`native_decoding`).
"""

from __future__ import annotations

import threading
import types
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable

import torch

from .kv_cache import KVCache
from .sampling import next_tokens

NATIVE = "native"  # compile="native": the step runs in C (native_decoding), not through torch.compile
EOS_CHECK_EVERY = 16  # steps between host checks of "has every row finished?" (each check syncs)
KEPT_CACHES = 2  # preallocated caches a model keeps between compiled calls (least recently used dropped)
_MODEL_LOCKS = threading.Lock()  # guards the creation of each model's own lock
_LOCKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> its lock, gone with the model


def decode_step(language_model, tokens: torch.Tensor, position_ids: torch.Tensor, cache_position: torch.Tensor,
                key_mask: torch.Tensor, kv_cache: KVCache) -> torch.Tensor:
    """One new token per row through the decoder, attending over the whole preallocated cache.

    tokens, position_ids (B, 1); cache_position (1,) the slot being written; key_mask (B, L) False at
    padding and at the slots past the request. Returns float32 logits (B, vocab).
    """
    model = language_model.model
    hidden = model.embed(tokens)  # (B, 1, D)
    inputs = model.decode_layer_inputs(hidden, position_ids, cache_position, key_mask)  # masks hide unwritten slots
    for layer, (position_embeddings, mask) in zip(model.layers, inputs):
        hidden = layer(hidden, position_embeddings, mask, kv_cache, cache_position)
    return language_model.logits(model.norm(hidden))[:, -1].float()


def cache_bucket(total_length: int) -> int:
    """Cache length for a compiled call: the next power of two (at least 64), so most requests share shapes."""
    return max(64, 1 << (total_length - 1).bit_length())


def compiled_decode_step(model, options: dict) -> Callable:
    """torch.compile(decode_step), made once per model and options and kept on the model."""
    compiled = model.__dict__.setdefault("_compiled_decode_steps", {})
    key = _frozen(options)
    if key not in compiled:
        compiled[key] = torch.compile(_own_copy(decode_step), **options)
    return compiled[key]


def _frozen(value):
    """A hashable stand-in for compile options, nested ones included (e.g. {"options": {"size_asserts": False}})."""
    if isinstance(value, dict):
        return tuple(sorted((key, _frozen(item)) for key, item in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(item) for item in value)
    return value


def _own_copy(function: Callable) -> Callable:
    """The same function on a code object of its own. torch.compile files its compiled versions under the code
    object, and each call checks the guards of every version filed there: one copy per model keeps another
    model's versions out of this model's way (measured on Gemma 3 270M: with four quantized and bfloat16 models
    compiled, the fourth one's guard checks took 2.0 ms a token on the shared code object, 1.6 ms on its own)."""
    return types.FunctionType(function.__code__.replace(), function.__globals__, function.__name__,
                              function.__defaults__, function.__closure__)


def model_lock(language_model) -> threading.Lock:
    """One lock per model: compiled calls share its caches, so they must not run at the same time. (Kept beside
    the model, not on it: a lock cannot be copied, and `copy.deepcopy(model)` must still work after decoding.)"""
    with _MODEL_LOCKS:
        return _LOCKS.setdefault(language_model, threading.Lock())


def reusable_cache(language_model, batch: int, max_length: int, compiled: bool) -> KVCache:
    """A preallocated cache; when compiling, one kept on the model between calls (at most KEPT_CACHES).

    A compiled step (a CUDA graph especially) is tied to the addresses of the buffers it was traced
    with; reusing the same buffers avoids recompiling or re-recording the graph on every call.
    """
    if not compiled:
        return language_model.new_kv_cache(max_length=max_length)
    weight = language_model.model.norm.weight  # (the lm_head may be a quantized layer with no .weight)
    caches = language_model.__dict__.setdefault("_static_caches", OrderedDict())
    key = (batch, max_length, weight.dtype, weight.device)
    if key not in caches:
        caches[key] = language_model.new_kv_cache(max_length=max_length)
        while len(caches) > KEPT_CACHES:
            caches.popitem(last=False)
    caches.move_to_end(key)
    caches[key].reset()
    return caches[key]


def mark_static_buffers(kv_cache: KVCache) -> None:
    """Tell torch.compile the cache buffers live at fixed addresses (so CUDA graphs may write into them)."""
    for buffer in (*kv_cache.key_cache, *kv_cache.value_cache):
        torch._dynamo.mark_static_address(buffer)


def default_compile_options(device: torch.device) -> dict:
    """CUDA graphs on a GPU; inductor's default mode on the CPU. fullgraph: fail loudly on graph breaks.

    Shapes are left to torch's automatic dynamic mode: a second batch size or cache bucket compiles a
    version that serves all later ones, instead of one compilation per shape.
    """
    options = {"fullgraph": True}
    if device.type == "cuda":
        options["mode"] = "reduce-overhead"
    return options


def generate_static(model, input_ids, pixel_values, attention_mask, max_new_tokens: int, do_sample: bool,
                    temperature: float, top_k, top_p, eos_ids: torch.Tensor, pad_id: int,
                    generator: torch.Generator | None, compile_options: dict | str | None,
                    on_step: Callable[[torch.Tensor], None] | None = None) -> torch.Tensor:
    """The same tokens as `generate_tokens`' eager loop, through the fixed-shape decode step."""
    is_paligemma = hasattr(model, "vision_tower")
    language_model = model.language_model if is_paligemma else model
    total = input_ids.shape[1] + max_new_tokens
    if total > language_model.config.max_position_embeddings:
        raise ValueError(f"prompt ({input_ids.shape[1]}) + max_new_tokens ({max_new_tokens}) exceeds "
                         f"max_position_embeddings={language_model.config.max_position_embeddings}")
    if compile_options == NATIVE:
        from .native_decoding import check_native_request  # (it builds on this module's loop)
        check_native_request(language_model, input_ids.shape[0])
    if compile_options is None:
        return _decode(model, language_model, input_ids, pixel_values, attention_mask, max_new_tokens, do_sample,
                       temperature, top_k, top_p, eos_ids, pad_id, generator, None, on_step, total)
    with model_lock(language_model):
        return _decode(model, language_model, input_ids, pixel_values, attention_mask, max_new_tokens, do_sample,
                       temperature, top_k, top_p, eos_ids, pad_id, generator, compile_options, on_step,
                       cache_bucket(total))


def _decode(model, language_model, input_ids, pixel_values, attention_mask, max_new_tokens, do_sample, temperature,
            top_k, top_p, eos_ids, pad_id, generator, compile_options, on_step, cache_length) -> torch.Tensor:
    batch, prompt_length = input_ids.shape
    device = input_ids.device
    is_paligemma = language_model is not model
    kv_cache = reusable_cache(language_model, batch, cache_length, compiled=compile_options is not None)
    new_buffers = not kv_cache.key_cache
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
    if is_paligemma:
        inputs["pixel_values"] = pixel_values
    with torch.no_grad():
        logits = model(**inputs, kv_cache=kv_cache, logits_to_keep=1)["logits"][:, -1]  # prefill, eager
        if new_buffers and compile_options is not None and device.type == "cuda":
            mark_static_buffers(kv_cache)

        if compile_options is None:
            step = decode_step
        elif compile_options == NATIVE:
            from .native_decoding import NativeDecodeStep
            step = NativeDecodeStep(language_model, kv_cache)  # (after the prefill: the cache's buffers exist)
        else:
            step = compiled_decode_step(language_model, compile_options)
        mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        key_mask = torch.zeros(batch, cache_length, dtype=torch.bool, device=device)  # (B, L): False past the end
        key_mask[:, :prompt_length] = mask.bool()
        key_mask[:, prompt_length:prompt_length + max_new_tokens] = True
        # next position: real tokens so far (PaliGemma counts positions from 1, Gemma from 0)
        position_ids = mask.long().sum(-1, keepdim=True) + (1 if is_paligemma else 0)  # (B, 1)
        cache_position = torch.tensor([prompt_length], device=device)
        out = torch.full((batch, max_new_tokens), pad_id, dtype=torch.long, device=device)
        any_alive = torch.ones(max_new_tokens, dtype=torch.bool, device=device)
        finished = torch.zeros(batch, dtype=torch.bool, device=device)
        can_finish = bool(eos_ids.numel())  # without end-of-sequence tokens no row finishes: no bookkeeping
        for t in range(max_new_tokens):
            tokens = next_tokens(logits, do_sample, temperature, top_k, top_p, generator)
            if can_finish:
                tokens = torch.where(finished, torch.full_like(tokens, pad_id), tokens)
            out[:, t] = tokens
            if on_step is not None:
                on_step(tokens)
            if can_finish:
                finished |= torch.isin(tokens, eos_ids)
                any_alive[t] = ~finished.all()
            if t == max_new_tokens - 1:
                break
            if can_finish and (t + 1) % EOS_CHECK_EVERY == 0 and not bool(any_alive[t]):
                break
            if device.type == "cuda" and compile_options not in (None, NATIVE):
                torch.compiler.cudagraph_mark_step_begin()
            logits = _run_step(step, language_model, tokens[:, None], position_ids, cache_position, key_mask,
                               kv_cache)
            kv_cache.advance(1)
            position_ids += 1
            cache_position += 1
    if not can_finish:
        return out
    # keep the steps up to (and including) the one where the last row finished, as the eager loop does
    n_steps = int((~any_alive).nonzero()[0]) + 1 if bool((~any_alive).any()) else max_new_tokens
    return out[:, :n_steps]


def _run_step(step, language_model, tokens, position_ids, cache_position, key_mask, kv_cache) -> torch.Tensor:
    """The compiled step, or the plain one if torch refuses to compile yet another version of it."""
    try:
        return step(language_model, tokens, position_ids, cache_position, key_mask, kv_cache)
    except torch._dynamo.exc.FailOnRecompileLimitHit:
        if not getattr(language_model, "_warned_recompile_limit", False):
            warnings.warn("torch.compile reached its recompilation limit for the decode step; this call and later "
                          "ones with new shapes decode without compilation (same tokens, slower)", stacklevel=3)
            language_model._warned_recompile_limit = True
        return decode_step(language_model, tokens, position_ids, cache_position, key_mask, kv_cache)
