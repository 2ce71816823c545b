"""The checkers of notebooks 03-05 accept the package's own code and name the usual mistakes in plain words."""

import pytest
import torch
import torch.nn.functional as F

from paligemma import GemmaDecoderLayer, GemmaMLP, KVCache, repeat_kv
from paligemma.exercises import (check_causal_mask, check_decoder_layer, check_gemma_mlp,
                                 check_growing_cache, check_preallocated_cache, check_repeat_kv)
from paligemma.masks import allowed_positions

from exercise_helpers import assert_rejected, not_written


def test_checkers_are_exported_from_their_topic_modules():
    from paligemma.exercises import attention, decoder, kv_cache
    assert attention.__all__ == ["check_repeat_kv", "check_causal_mask"]
    assert kv_cache.__all__ == ["check_preallocated_cache", "check_growing_cache"]
    assert decoder.__all__ == ["check_gemma_mlp", "check_decoder_layer"]


@pytest.mark.parametrize("checker", [check_repeat_kv, check_causal_mask, check_gemma_mlp, check_decoder_layer])
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


# ---------------------------------------------------------------- causal mask (notebook 03)

def reference_mask(query_length, past_length):
    return allowed_positions(query_length, past_length)[0]


def test_causal_mask_accepts_the_package_and_a_comparison(capsys):
    def by_comparison(query_length, past_length):
        return torch.arange(past_length + query_length)[None] <= torch.arange(past_length,
                                                                              past_length + query_length)[:, None]

    check_causal_mask(reference_mask)
    check_causal_mask(by_comparison)
    assert capsys.readouterr().out.count("Correct: causal_mask") == 2


@pytest.mark.parametrize("wrong, phrases", [
    (lambda t, p: reference_mask(t, p).float(), ["dtype torch.float32, expected torch.bool"]),
    (lambda t, p: ~reference_mask(t, p), ["inverted"]),
    (lambda t, p: reference_mask(t, p).T, ["see the future", "transpose"]),
    (lambda t, p: torch.ones(t, p + t, dtype=torch.bool).tril(-1 + p), ["blocks the diagonal", "attend to itself"]),
    (lambda t, p: torch.ones(t, p + t, dtype=torch.bool).tril(), ["past_length=4", "ignores the cached tokens"]),
    (lambda t, p: torch.ones(t, t, dtype=torch.bool).tril(), ["shape (3, 3), expected (3, 7)", "past_length + "]),
    (lambda t, p: reference_mask(t, p)[None], ["shape (1, 5, 5)", "without a batch axis"]),
    (lambda t, p: reference_mask(t, p).tolist(), ["should return a torch.Tensor, got list"]),
    (lambda t, p: reference_mask(t, p) & (torch.arange(p + t) > 0), ["query 0 (at position 0) and key 0",
                                                                     "should be allowed"]),
])
def test_causal_mask_names_the_mistake(wrong, phrases):
    assert_rejected(check_causal_mask, wrong, *phrases)


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


# ---------------------------------------------------------------- GemmaMLP (notebook 05)

def test_mlp_checker_accepts_the_package(capsys):
    check_gemma_mlp(GemmaMLP.forward)
    check_gemma_mlp(lambda mlp, x: mlp(x))
    assert capsys.readouterr().out.count("Correct: GemmaMLP forward") == 2


def gated(activation, gate_first=True):
    def forward(mlp, x):
        gate, up = (mlp.gate_proj(x), mlp.up_proj(x)) if gate_first else (mlp.up_proj(x), mlp.gate_proj(x))
        return mlp.down_proj(activation(gate) * up)
    return forward


@pytest.mark.parametrize("wrong, phrases", [
    (gated(F.gelu), ["exact GELU", "approximate='tanh'"]),
    (gated(lambda t: F.gelu(t, approximate="tanh"), gate_first=False), ["swapped"]),
    (gated(F.silu), ["SiLU"]),
    (gated(F.relu), ["ReLU"]),
    (lambda mlp, x: mlp.down_proj(F.gelu(mlp.gate_proj(x), approximate="tanh")), ["gate is missing"]),
    (lambda mlp, x: mlp.down_proj(F.gelu(mlp.gate_proj(x) * mlp.up_proj(x), approximate="tanh")),
     ["before the product"]),
    (lambda mlp, x: mlp.down_proj(mlp.gate_proj(x) * mlp.up_proj(x)), ["activation is missing"]),
    (lambda mlp, x: F.gelu(mlp.gate_proj(x), approximate="tanh") * mlp.up_proj(x),
     ["shape (2, 3, 40), expected (2, 3, 16)", "finish with down_proj"]),
    (lambda mlp, x: mlp(x) + 1e-3, ["wrong values"]),
])
def test_mlp_checker_names_the_mistake(wrong, phrases):
    assert_rejected(check_gemma_mlp, wrong, *phrases)


# ---------------------------------------------------------------- GemmaDecoderLayer (notebook 05)

def test_decoder_layer_checker_accepts_the_package(capsys):
    check_decoder_layer(GemmaDecoderLayer.forward)
    assert "Correct: GemmaDecoderLayer forward" in capsys.readouterr().out


def layer_variant(kind):
    def forward(layer, x, position_embeddings, mask):
        norm1, norm2, mlp = layer.input_layernorm, layer.post_attention_layernorm, layer.mlp

        def attn(h, attention_mask=mask):
            return layer.self_attn(h, position_embeddings, attention_mask)

        if kind == "post-norm":
            h = norm1(x + attn(x))
            return norm2(h + mlp(h))
        if kind == "no residual":
            return mlp(norm2(attn(norm1(x))))
        if kind == "no attention residual":
            h = attn(norm1(x))
            return h + mlp(norm2(h))
        if kind == "no mlp residual":
            return mlp(norm2(x + attn(norm1(x))))
        if kind == "normalised stream":
            x = norm1(x)
            h = x + attn(x)
            return h + mlp(norm2(h))
        if kind == "swapped norms":
            h = x + attn(norm2(x))
            return h + mlp(norm1(h))
        if kind == "one norm":
            h = x + attn(norm1(x))
            return h + mlp(norm1(h))
        if kind == "parallel":
            return x + attn(norm1(x)) + mlp(norm2(x))
        if kind == "no mask":
            h = x + attn(norm1(x), None)
            return h + mlp(norm2(h))
        raise AssertionError(kind)
    return forward


@pytest.mark.parametrize("kind, phrases", [
    ("post-norm", ["post-norm", "pre-norm"]),
    ("no residual", ["residual connections are missing"]),
    ("no attention residual", ["residual around attention"]),
    ("no mlp residual", ["residual around the MLP"]),
    ("normalised stream", ["un-normalised x"]),
    ("swapped norms", ["norms are swapped"]),
    ("one norm", ["post_attention_layernorm is not used"]),
    ("parallel", ["one after the other"]),
    ("no mask", ["attention mask is not passed on"]),
])
def test_decoder_layer_checker_names_the_mistake(kind, phrases):
    assert_rejected(check_decoder_layer, layer_variant(kind), *phrases)


def test_decoder_layer_checker_reports_other_errors_by_shape_and_value():
    assert_rejected(check_decoder_layer, lambda layer, x, pe, mask: x[:, -1], "shape (2, 16), expected (2, 5, 16)")
    assert_rejected(check_decoder_layer, lambda layer, x, pe, mask: layer(x, pe, mask) * 1.01, "wrong values")
