"""Checkers for notebook 04 (the KV cache): a preallocated cache and a geometrically growing one.

Both write a prompt and then single tokens into several layers, compare what `update` returns with the
plain concatenation of everything written, and watch whether the returned keys still live in the same
memory as the step before (a cache that moves on every step is re-copying its history, like `torch.cat`).
"""

from __future__ import annotations

import torch

from .checking import ExerciseError, check_close, passed, run_candidate

__all__ = ["check_preallocated_cache", "check_growing_cache"]

BATCH, KV_HEADS, HEAD_DIM, LAYERS = 2, 2, 4, 3


def _storage(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage().data_ptr()


def _check_update_result(result, expected_keys, expected_values, layer, stored, new, layers, capacity=None):
    """One `update` call: a (keys, values) pair equal to everything written to this layer so far."""
    where = f"update on layer {layer} (holding {stored} tokens, writing {new} more)"
    if not (isinstance(result, tuple | list) and len(result) == 2):
        raise ExerciseError(f"{where} should return a pair (keys, values), got {type(result).__name__}")
    keys, values = result
    total = stored + new
    hints = {
        (BATCH, KV_HEADS, new, HEAD_DIM): "update must return everything this layer holds (the stored tokens "
                                          "and the new ones), not only the new tokens",
        (BATCH, KV_HEADS, stored, HEAD_DIM): "the returned history is missing the tokens just written",
    }
    for longer in range(total + 1, total * layers + 1):
        hints[(BATCH, KV_HEADS, longer, HEAD_DIM)] = (
            "it returned more tokens than were written to this layer: is one length (or one list) shared by "
            "all layers? Every layer stores the same tokens, so keep one history and one length per layer")
    if capacity is not None:
        hints[(BATCH, KV_HEADS, capacity, HEAD_DIM)] = ("you returned the whole buffer: return only the part "
                                                        "written so far, buffer[:, :, :length]")
    for name, got, expected in (("keys", keys, expected_keys), ("values", values, expected_values)):
        if isinstance(got, torch.Tensor) and got.shape == expected.shape and not torch.equal(got, expected):
            other = expected_values if name == "keys" else expected_keys
            if torch.equal(got, other):
                raise ExerciseError(f"{where}: keys and values are swapped; return (keys, values) in that order")
            if not torch.equal(got[:, :, :stored], expected[:, :, :stored]):
                raise ExerciseError(f"{where}: the {name} of the {stored} stored tokens changed; the new tokens "
                                    f"must be written after them, at positions {stored}..{total - 1}, and nothing "
                                    "written before may be overwritten")
            raise ExerciseError(f"{where}: the {name} of the new tokens are wrong; they must be the {name} just "
                                f"passed in, placed at positions {stored}..{total - 1}")
        check_close(got, expected, what=f"the {name} returned by {where}", shape_hints=hints, atol=0, rtol=0)
    return keys


def _named(method):
    """The method under its class-qualified name, so 'not implemented yet' says `MyCache.update`."""
    def call(*args):
        return method(*args)
    call.__name__ = getattr(method, "__qualname__", getattr(method, "__name__", "update"))
    return call


def _write(cache, steps: list[int], generator: torch.Generator, layers: int = LAYERS,
           capacity: int | None = None) -> list[int]:
    """Feed chunks of `steps` tokens to every layer; check each result; return the lengths at which layer 0 moved."""
    update = _named(cache.update)
    history = [[None, None] for _ in range(layers)]
    moved_at, previous, stored = [], None, 0  # `previous` keeps the last result alive, so memory cannot be reused
    for step, new in enumerate(steps):
        for layer in range(layers):
            keys = torch.randn(BATCH, KV_HEADS, new, HEAD_DIM, generator=generator)
            values = torch.randn(BATCH, KV_HEADS, new, HEAD_DIM, generator=generator)
            old_keys, old_values = history[layer]
            history[layer] = [keys if old_keys is None else torch.cat((old_keys, keys), 2),
                              values if old_values is None else torch.cat((old_values, values), 2)]
            result = run_candidate(update, keys, values, layer)
            returned = _check_update_result(result, *history[layer], layer, stored, new, layers, capacity)
            if layer == 0:
                if previous is not None and _storage(returned) != _storage(previous):
                    moved_at.append(stored)
                previous = returned
        stored += new
        count = run_candidate(cache.num_items)
        if count != stored:
            hint = " (count each token once, not once per layer)" if count == stored * layers else ""
            raise ExerciseError(f"num_items() returned {count} after {stored} tokens were written to each of "
                                f"{layers} layers, expected {stored}{hint}")
    return moved_at


def _check_empty(cache) -> None:
    count = run_candidate(cache.num_items)
    if count != 0:
        raise ExerciseError(f"num_items() of a new, empty cache returned {count}, expected 0")


def check_preallocated_cache(cache_class) -> None:
    """`cache_class(max_length=n)`: one buffer per layer allocated once; `update` writes into it and never moves it."""
    max_length, generator = 12, torch.Generator().manual_seed(0)
    cache = run_candidate(cache_class, max_length=max_length)
    _check_empty(cache)
    moved_at = _write(cache, [5] + [1] * (max_length - 5), generator, capacity=max_length)
    if moved_at:
        raise ExerciseError(f"the cache moved to new memory when it held {moved_at[0]} tokens: a preallocated cache "
                            "allocates its (B, kv_heads, max_length, head_dim) buffer once and writes new tokens "
                            "into it with slicing, buffer[:, :, length:length + new] = key_states, instead of "
                            "torch.cat (which copies the whole history every time)")
    extra = torch.randn(BATCH, KV_HEADS, 1, HEAD_DIM, generator=generator)
    try:
        cache.update(extra, extra.clone(), 0)
    except ExerciseError:
        raise
    except Exception:  # any error will do; note that a plain slice past the end would silently write nothing
        passed(getattr(cache_class, "__name__", "your cache"))
        return
    raise ExerciseError(f"the cache holds max_length={max_length} tokens, yet writing token {max_length + 1} "
                        "raised no error: a full cache must refuse new tokens loudly rather than drop or misplace them")


def check_growing_cache(cache_class) -> None:
    """`cache_class()`: buffers that grow geometrically (e.g. double) so n tokens cost O(log n) moves, not n."""
    generator = torch.Generator().manual_seed(0)
    cache = run_candidate(cache_class)
    _check_empty(cache)
    _write(cache, [5] + [1] * 40, generator)
    steps = 2048
    cache = run_candidate(cache_class)
    moved_at = _write(cache, [1] * steps, generator, layers=1)
    if len(moved_at) > steps // 2:
        raise ExerciseError(f"your cache moved to new memory on {len(moved_at)} of {steps} one-token steps: it "
                            "copies its whole history nearly every time (like torch.cat), O(n^2) bytes in all. "
                            "Keep spare room in the buffer and, when it is full, allocate a bigger one "
                            "(e.g. twice the size) and copy into it once")
    for smaller, larger in zip(moved_at, moved_at[1:]):
        if smaller >= 32 and larger < 1.25 * smaller:
            raise ExerciseError(f"your cache moved to new memory when it held {smaller} tokens and again at "
                                f"{larger}: growing by a fixed amount still copies the history O(n) times "
                                "(O(n^2) bytes in all); multiply the capacity instead (e.g. double it)")
    passed(getattr(cache_class, "__name__", "your cache"))
