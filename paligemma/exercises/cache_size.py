"""Checkers for notebook 11 (performance): the bytes of a KV cache whose local layers keep a sliding window.

Gemma 3 keeps every token in one layer out of six and only the last `window` tokens in the others. The
reference fills the package's `KVCache` on the meta device (shapes only, no memory) layer by layer; a wrong
number is compared with the numbers the usual mistakes give, so the message can name the mistake.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..configuration import GemmaConfig
from ..kv_cache import KVCache
from .checking import passed, run_candidate
from .performance import DTYPES, _diagnose, _number

__all__ = ["check_kv_cache_bytes"]

# (config fields, tokens, window, global_every, batch, bytes per number). The first case tells the mistakes apart:
# 7 layers (globals at 2 and 5, not 0, 3, 6), 6 query heads sharing 2 KV heads, hidden_size 36 != 2 x 16, a window
# shorter than the text; the second a window longer than the text; then Gemma 3's pattern on PaliGemma's shapes.
KV_CASES = (
    (dict(vocab_size=64, hidden_size=36, intermediate_size=64, num_hidden_layers=7, num_attention_heads=6,
          num_key_value_heads=2, head_dim=16), 40, 8, 3, 4, 2),
    (dict(vocab_size=64, hidden_size=36, intermediate_size=64, num_hidden_layers=7, num_attention_heads=6,
          num_key_value_heads=2, head_dim=16), 5, 8, 3, 1, 4),
    ({}, 8192, 1024, 6, 1, 2),
)


def _is_global(layer: int, global_every: int) -> bool:
    return (layer + 1) % global_every == 0  # Gemma 3: five local layers, then a global one


def kv_cache_reference(config: GemmaConfig, tokens: int, window: int, global_every: int, batch: int,
                       bytes_per_number: int, is_global=_is_global) -> int:
    """Bytes of the keys and values the package's KVCache returns once every layer holds what it keeps.

    Meta tensors: shapes only, no memory. (The buffers themselves may have spare room; what counts is what is kept.)
    """
    cache, total = KVCache(), 0
    for layer in range(config.num_hidden_layers):
        kept = tokens if is_global(layer, global_every) else min(tokens, window)
        states = torch.empty(batch, config.num_key_value_heads, kept, config.head_dim,
                             dtype=DTYPES[bytes_per_number], device="meta")
        keys, values = cache.update(states, states, layer)  # (B, kv_heads, kept, head_dim) each
        total += keys.numel() * keys.element_size() + values.numel() * values.element_size()
    return total


def _kv_mistakes(config: GemmaConfig, tokens: int, window: int, global_every: int, batch: int,
                 bytes_per_number: int, expected: int) -> dict[str, float]:
    """What the usual wrong formulas return, keyed by the words that explain each."""
    def reference(**changes):
        fields = dict(config=config, tokens=tokens, window=window, global_every=global_every, batch=batch,
                      bytes_per_number=bytes_per_number) | changes
        return kv_cache_reference(**fields)

    width = config.num_key_value_heads * config.head_dim
    mistakes = {
        "counts the global layers at 0, global_every, 2 global_every, ...; in Gemma 3's pattern the global layer "
        "comes last in each group: layer i is global when (i + 1) % global_every == 0":
            reference(is_global=lambda layer, every: layer % every == 0),
        "keeps `window` tokens in the sliding layers even when the text is shorter; a layer keeps "
        "min(tokens, window)": 2 * batch * width * bytes_per_number * sum(
            tokens if _is_global(layer, global_every) else window for layer in range(config.num_hidden_layers)),
        "gives every layer a full cache: only the sliding layers stop at `window` tokens":
            reference(window=tokens),
        "gives every layer a sliding window: every global_every-th layer keeps all the tokens":
            reference(global_every=config.num_hidden_layers + 1),
    }
    factors = {
        "counts only the keys (or only the values): every layer stores both, so multiply by 2": 1 / 2,
        "uses num_attention_heads, but only num_key_value_heads heads of keys and values are stored; the query "
        "heads share them": config.num_attention_heads / config.num_key_value_heads,
        "uses hidden_size as the width of one key, but a key is num_key_value_heads x head_dim numbers":
            config.hidden_size / width,
        "forgets the batch: every sequence in the batch has its own cache": 1 / batch,
        "counts bits, not bytes: bytes_per_number is already in bytes": 8,
    }
    mistakes |= {hint: expected * factor for hint, factor in factors.items()}
    for unit, size in (("MiB", 2**20), ("GiB", 2**30), ("MB", 1e6), ("GB", 1e9)):
        mistakes[f"gives {unit}: return bytes (divide only when printing)"] = expected / size
    return mistakes


def check_kv_cache_bytes(kv_cache_bytes: Callable) -> None:
    """`kv_cache_bytes(config, tokens, window, global_every, batch, bytes_per_number)`: bytes of the keys and values
    of every layer, when every `global_every`-th layer keeps all tokens and the others the last `window`."""
    for fields, tokens, window, global_every, batch, bytes_per_number in KV_CASES:
        config = GemmaConfig(**fields)
        call = (f"kv_cache_bytes(config with {config.num_hidden_layers} layers, {config.num_attention_heads} heads, "
                f"{config.num_key_value_heads} KV heads, head_dim {config.head_dim}, hidden_size "
                f"{config.hidden_size}; tokens={tokens}, window={window}, global_every={global_every}, "
                f"batch={batch}, bytes_per_number={bytes_per_number})")
        got = run_candidate(kv_cache_bytes, config, tokens=tokens, window=window, global_every=global_every,
                            batch=batch, bytes_per_number=bytes_per_number)
        expected = kv_cache_reference(config, tokens, window, global_every, batch, bytes_per_number)
        mistakes = _kv_mistakes(config, tokens, window, global_every, batch, bytes_per_number, expected)
        _diagnose(_number(got, call, "bytes"), expected, mistakes, call)
    passed("kv_cache_bytes", "the package's KVCache filled layer by layer")
