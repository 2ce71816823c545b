"""The checkers of notebooks 03-05 accept the package's own code and name the usual mistakes in plain words."""

import pytest
import torch
import torch.nn.functional as F

from paligemma import GemmaConfig, GemmaMLP, KVCache, repeat_kv
from paligemma.exercises import (check_fused_mlp, check_growing_cache, check_parallel_block,
                                 check_preallocated_cache, check_repeat_kv, check_sliding_window_mask)
from paligemma.masks import allowed_positions

from exercise_helpers import assert_rejected, not_written


def test_checkers_are_exported_from_their_topic_modules():
    from paligemma.exercises import attention, decoder, kv_cache
    assert attention.__all__ == ["check_repeat_kv", "check_sliding_window_mask"]
    assert kv_cache.__all__ == ["check_preallocated_cache", "check_growing_cache"]
    assert decoder.__all__ == ["check_fused_mlp", "check_parallel_block"]


@pytest.mark.parametrize("checker", [check_repeat_kv, check_sliding_window_mask, check_fused_mlp,
                                     check_parallel_block])
def test_a_stub_is_reported_as_not_implemented(checker):
    assert_rejected(checker, not_written, "not implemented yet")


@pytest.mark.parametrize("checker", [check_preallocated_cache, check_growing_cache])
def test_a_stubbed_cache_is_reported_as_not_implemented(checker):
    class StubCache:
        def __init__(self, max_length=None):
            pass

        def num_items(self):
            return 0

        def update(self, key_states, value_states, layer_idx):
            raise NotImplementedError("Exercise: write your solution here")

    assert_rejected(checker, StubCache, "StubCache.update is not implemented yet")


# ---------------------------------------------------------------- repeat_kv (notebook 03)

def test_repeat_kv_accepts_the_package_and_repeat_interleave(capsys):
    check_repeat_kv(repeat_kv)
    check_repeat_kv(lambda x, n_rep: x.repeat_interleave(n_rep, dim=1))
    assert capsys.readouterr().out.count("Correct: repeat_kv") == 2


@pytest.mark.parametrize("wrong, phrases", [
    (lambda x, n: x.repeat(1, n, 1, 1), ["wrong order", "h // n_rep", "[0, 0, 0, 0, 1, 1, 1, 1]",
                                         "[0, 1, 0, 1, 0, 1, 0, 1]"]),
    (lambda x, n: x.repeat_interleave(n, dim=2), ["shape (2, 2, 20, 16), expected (2, 8, 5, 16)", "time axis"]),
    (lambda x, n: x.repeat_interleave(n, dim=3), ["shape (2, 2, 5, 64)", "last axis"]),
    (lambda x, n: x.repeat_interleave(n, dim=0), ["shape (8, 2, 5, 16)", "batch axis"]),
    (lambda x, n: x[:, :, None].expand(-1, -1, n, -1, -1), ["shape (2, 2, 4, 5, 16)", "reshape"]),
    (lambda x, n: x.repeat_interleave(n, dim=1).half(), ["dtype torch.float16, expected torch.float32"]),
    (lambda x, n: x.repeat_interleave(n, dim=1) * 2, ["wrong values"]),
])
def test_repeat_kv_names_the_mistake(wrong, phrases):
    assert_rejected(check_repeat_kv, wrong, *phrases)


def test_repeat_kv_must_not_change_its_input():
    def in_place(x, n_rep):
        out = x.repeat_interleave(n_rep, dim=1)
        x.zero_()
        return out

    assert_rejected(check_repeat_kv, in_place, "changed its input in place")


# ---------------------------------------------------------------- sliding-window mask (notebook 03)

def window(query_length, past_length, size, reach=0, causal=True, offset=None):
    """The mask by comparisons; `reach`, `causal` and `offset` reproduce the usual mistakes."""
    start = past_length if offset is None else offset
    query = torch.arange(start, start + query_length)[:, None]
    key = torch.arange(past_length + query_length)[None, :]
    recent = key > query - size - reach
    return (key <= query) & recent if causal else recent


def test_sliding_window_mask_accepts_comparisons_and_the_package(capsys):
    check_sliding_window_mask(window)
    check_sliding_window_mask(lambda t, p, w: torch.ones(t, p + t).tril(p).triu(p - w + 1).bool())
    assert capsys.readouterr().out.count("Correct: sliding_window_mask") == 2


@pytest.mark.parametrize("wrong, phrases", [
    (lambda t, p, w: window(t, p, w, reach=1), ["sees 4 keys", "key > query - window, not >="]),
    (lambda t, p, w: window(t, p, w, reach=-1), ["sees only 2 keys", "includes the query itself"]),
    (lambda t, p, w: window(t, p, w, causal=False), ["must also be causal"]),
    (lambda t, p, w: window(t, p, w, offset=0), ["past_length=5", "positions 0, 1"]),
    (lambda t, p, w: allowed_positions(t, p)[0] & (torch.arange(p + t) < w), ["first `window` keys"]),
    (lambda t, p, w: allowed_positions(t, p)[0], ["plain causal mask"]),
    (lambda t, p, w: ~window(t, p, w), ["inverted"]),
    (lambda t, p, w: window(t, p, w).float(), ["dtype torch.float32, expected torch.bool"]),
    (lambda t, p, w: window(t, p, w).T, ["transposed", "rows are queries"]),
    (lambda t, p, w: window(t, 0, w), ["shape (3, 3), expected (3, 8)", "past_length + query_length"]),
    (lambda t, p, w: window(t, p, w).tolist(), ["should return a torch.Tensor, got list"]),
    (lambda t, p, w: window(t, p, w) & (torch.arange(p + t) != 1), ["query 1 (at position 1) and key 1"]),
])
def test_sliding_window_mask_names_the_mistake(wrong, phrases):
    assert_rejected(check_sliding_window_mask, wrong, *phrases)


# ---------------------------------------------------------------- KV caches (notebook 04)

class ConcatCache:
    """The seed's cache: torch.cat of the whole history on every step."""

    def __init__(self, max_length=None):
        self.keys, self.values = [], []

    def num_items(self):
        return self.keys[0].shape[2] if self.keys else 0

    def update(self, key_states, value_states, layer_idx):
        if layer_idx == len(self.keys):
            self.keys.append(key_states)
            self.values.append(value_states)
        else:
            self.keys[layer_idx] = torch.cat((self.keys[layer_idx], key_states), dim=2)
            self.values[layer_idx] = torch.cat((self.values[layer_idx], value_states), dim=2)
        return self.keys[layer_idx], self.values[layer_idx]


class BufferCache:
    """Buffers per layer that grow by `grow(capacity)` when full; `max_length` fixes the capacity instead."""

    def __init__(self, max_length=None, grow=lambda capacity: 2 * capacity):
        self.max_length, self.grow = max_length, grow
        self.keys, self.values, self.lengths = [], [], []

    def num_items(self):
        return self.lengths[0] if self.lengths else 0

    def _store(self, layer_idx, key_states, value_states):
        start, new = self.lengths[layer_idx], key_states.shape[2]
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        keys[:, :, start:start + new] = key_states
        values[:, :, start:start + new] = value_states
        self.lengths[layer_idx] = start + new
        return keys[:, :, :start + new], values[:, :, :start + new]

    def update(self, key_states, value_states, layer_idx):
        if layer_idx == len(self.keys):
            b, h, t, d = key_states.shape
            capacity = self.max_length or max(t, 4)
            self.keys.append(key_states.new_zeros(b, h, capacity, d))
            self.values.append(value_states.new_zeros(b, h, capacity, d))
            self.lengths.append(0)
        needed = self.lengths[layer_idx] + key_states.shape[2]
        capacity = self.keys[layer_idx].shape[2]
        if self.max_length is not None and needed > self.max_length:
            raise ValueError(f"cache full: max_length={self.max_length}")
        if needed > capacity and self.max_length is None:
            bigger = max(self.grow(capacity), needed)
            for buffers in (self.keys, self.values):
                old = buffers[layer_idx]
                buffers[layer_idx] = old.new_zeros(*old.shape[:2], bigger, old.shape[3])
                buffers[layer_idx][:, :, :capacity] = old
        return self._store(layer_idx, key_states, value_states)


def test_cache_checkers_accept_the_package_and_a_correct_buffer(capsys):
    check_preallocated_cache(KVCache)
    check_growing_cache(KVCache)
    check_preallocated_cache(BufferCache)
    check_growing_cache(BufferCache)
    check_growing_cache(lambda: BufferCache(grow=lambda capacity: capacity + capacity // 2 + 1))  # 1.5x is fine
    assert capsys.readouterr().out.count("Correct:") == 5


def test_preallocated_checker_rejects_torch_cat():
    assert_rejected(check_preallocated_cache, ConcatCache, "moved to new memory when it held 5 tokens", "torch.cat")


def test_growing_checker_rejects_torch_cat_and_fixed_increments():
    assert_rejected(check_growing_cache, ConcatCache, "on 2047 of 2048 one-token steps", "like torch.cat")
    fixed = lambda: BufferCache(grow=lambda capacity: capacity + 128)  # noqa: E731
    assert_rejected(check_growing_cache, fixed, "fixed amount", "double it")


def test_preallocated_checker_wants_an_error_when_full():
    class Forgiving(BufferCache):
        def update(self, key_states, value_states, layer_idx):
            if layer_idx < len(self.lengths) and self.lengths[layer_idx] == self.max_length:
                return self.keys[layer_idx], self.values[layer_idx]  # silently drops the token
            return super().update(key_states, value_states, layer_idx)

    assert_rejected(check_preallocated_cache, Forgiving, "max_length=12", "raised no error")


class OnlyNew(ConcatCache):
    def update(self, key_states, value_states, layer_idx):
        super().update(key_states, value_states, layer_idx)
        return key_states, value_states


class Swapped(ConcatCache):
    def update(self, key_states, value_states, layer_idx):
        keys, values = super().update(key_states, value_states, layer_idx)
        return values, keys


class NewFirst(ConcatCache):
    def update(self, key_states, value_states, layer_idx):
        if layer_idx < len(self.keys):
            self.keys[layer_idx] = torch.cat((key_states, self.keys[layer_idx]), dim=2)
            self.values[layer_idx] = torch.cat((value_states, self.values[layer_idx]), dim=2)
            return self.keys[layer_idx], self.values[layer_idx]
        return super().update(key_states, value_states, layer_idx)


class SharedAcrossLayers(ConcatCache):
    """One history for every layer: layer 1 sees layer 0's tokens too."""

    def update(self, key_states, value_states, layer_idx):
        return super().update(key_states, value_states, 0)


class CountsPerLayer(ConcatCache):
    def num_items(self):
        return sum(k.shape[2] for k in self.keys)


class WholeBuffer(BufferCache):
    def update(self, key_states, value_states, layer_idx):
        super().update(key_states, value_states, layer_idx)
        return self.keys[layer_idx], self.values[layer_idx]


class NotEmpty(ConcatCache):
    def num_items(self):
        return 1


@pytest.mark.parametrize("checker", [check_preallocated_cache, check_growing_cache])
@pytest.mark.parametrize("wrong, phrases", [
    (OnlyNew, ["not only the new tokens"]),
    (Swapped, ["keys and values are swapped"]),
    (NewFirst, ["must be written after them"]),
    (SharedAcrossLayers, ["layer 1", "shared by all layers"]),
    (CountsPerLayer, ["num_items() returned 15 after 5 tokens", "once per layer"]),
    (NotEmpty, ["new, empty cache returned 1"]),
])
def test_cache_checkers_name_the_mistake(checker, wrong, phrases):
    assert_rejected(checker, wrong, *phrases)


def test_preallocated_checker_spots_the_whole_buffer_returned():
    assert_rejected(check_preallocated_cache, WholeBuffer, "shape (2, 2, 12, 4), expected (2, 2, 5, 4)",
                    "whole buffer")


# ---------------------------------------------------------------- fused gate/up MLP (notebook 05)

def fused(activation=lambda t: F.gelu(t, approximate="tanh"), split="halves", gate_first=True):
    """A fused MLP; the keyword arguments reproduce the usual mistakes."""
    def forward(x, gate_up, down):
        both = x @ gate_up.T
        gate, up = both.chunk(2, dim=-1) if split == "halves" else (both[..., ::2], both[..., 1::2])
        if not gate_first:
            gate, up = up, gate
        return (activation(gate) * up) @ down.T
    return forward


def test_fused_mlp_checker_accepts_the_fused_product_and_two_products(capsys):
    check_fused_mlp(fused())
    check_fused_mlp(lambda x, gate_up, down: GemmaMLP.forward(_mlp_from(gate_up, down), x))
    assert capsys.readouterr().out.count("Correct: fused_mlp") == 2


def _mlp_from(gate_up, down):
    """A GemmaMLP holding the two halves of the fused weight: what unfused code would compute."""
    intermediate, hidden = gate_up.shape[0] // 2, gate_up.shape[1]
    mlp = GemmaMLP(GemmaConfig(hidden_size=hidden, intermediate_size=intermediate))
    with torch.no_grad():
        mlp.gate_proj.weight.copy_(gate_up[:intermediate])
        mlp.up_proj.weight.copy_(gate_up[intermediate:])
        mlp.down_proj.weight.copy_(down)
    return mlp


@pytest.mark.parametrize("wrong, phrases", [
    (fused(split="alternate"), ["alternating channels", ".chunk(2, dim=-1)"]),
    (fused(gate_first=False), ["second half (up)"]),
    (fused(F.gelu), ["exact GELU", "approximate='tanh'"]),
    (fused(F.silu), ["SiLU"]),
    (lambda x, gate_up, down: F.gelu((x @ gate_up.T).chunk(2, -1)[0], approximate="tanh") @ down.T,
     ["gating product is missing"]),
    (lambda x, gate_up, down: (lambda g, u: F.gelu(g * u, approximate="tanh") @ down.T)(*(x @ gate_up.T).chunk(2, -1)),
     ["before the product"]),
    (lambda x, gate_up, down: (lambda g, u: (g * u) @ down.T)(*(x @ gate_up.T).chunk(2, -1)),
     ["activation is missing"]),
    (lambda x, gate_up, down: x @ gate_up.T, ["shape (2, 3, 80), expected (2, 3, 16)", "split it in two"]),
    (lambda x, gate_up, down: fused()(x, gate_up, down) + 1e-3, ["wrong values"]),
])
def test_fused_mlp_checker_names_the_mistake(wrong, phrases):
    assert_rejected(check_fused_mlp, wrong, *phrases)


# ---------------------------------------------------------------- parallel block (notebook 05)

def parallel(kind="right"):
    def forward(layer, x, position_embeddings, mask):
        norm1, norm2, mlp = layer.input_layernorm, layer.post_attention_layernorm, layer.mlp

        def attn(h, attention_mask=mask):
            return layer.self_attn(h, position_embeddings, attention_mask)

        n = norm1(x)
        results = {
            "right": lambda: x + attn(n) + mlp(n),
            "sequential": lambda: layer(x, position_embeddings, mask),
            "two norms": lambda: x + attn(n) + mlp(norm2(x)),
            "unnormalised mlp": lambda: x + attn(n) + mlp(x),
            "no residual": lambda: attn(n) + mlp(n),
            "residual twice": lambda: 2 * x + attn(n) + mlp(n),
            "normalised stream": lambda: n + attn(n) + mlp(n),
            "no mask": lambda: x + attn(n, None) + mlp(n),
            "no mlp": lambda: x + attn(n),
        }
        return results[kind]()
    return forward


def test_parallel_block_checker_accepts_the_formula(capsys):
    check_parallel_block(parallel())
    assert "Correct: parallel_block" in capsys.readouterr().out


@pytest.mark.parametrize("kind, phrases", [
    ("sequential", ["Gemma's sequential layer"]),
    ("two norms", ["normalises once"]),
    ("unnormalised mlp", ["not x itself"]),
    ("no residual", ["residual is missing"]),
    ("residual twice", ["added twice"]),
    ("normalised stream", ["un-normalised x"]),
    ("no mask", ["mask is not passed on"]),
    ("no mlp", ["MLP branch is missing"]),
])
def test_parallel_block_checker_names_the_mistake(kind, phrases):
    assert_rejected(check_parallel_block, parallel(kind), *phrases)


def test_parallel_block_checker_reports_other_errors_by_shape_and_value():
    assert_rejected(check_parallel_block, lambda layer, x, pe, mask: x[:, -1], "shape (2, 16), expected (2, 5, 16)")
    assert_rejected(check_parallel_block, lambda layer, x, pe, mask: parallel()(layer, x, pe, mask) * 1.01,
                    "wrong values")
