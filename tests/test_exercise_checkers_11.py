"""The checkers of notebook 11 accept correct answers and name the usual mistakes in plain words."""

import pytest
import torch

from paligemma import KVCache
from paligemma.exercises import check_arithmetic_intensity, check_kv_cache_bytes, check_static_cache_write
from exercise_helpers import assert_rejected, not_written


def test_checkers_are_exported_from_their_topic_modules():
    from paligemma.exercises import cache_size, performance
    assert performance.__all__ == ["check_arithmetic_intensity", "check_static_cache_write"]
    assert cache_size.__all__ == ["check_kv_cache_bytes"]


@pytest.mark.parametrize("checker", [check_kv_cache_bytes, check_arithmetic_intensity, check_static_cache_write])
def test_a_stub_is_reported_as_not_implemented(checker):
    assert_rejected(checker, not_written, "not_written is not implemented yet")


# ---------------------------------------------------------------- KV cache bytes with sliding windows

def kv_bytes(config, tokens, window, global_every, batch=1, bytes_per_number=2, *, pair=2, heads=None, width=None,
             per_batch=True, scale=1, first_global=False, clip=True, local=True, everywhere=False):
    """The right formula, with switches that reproduce the usual mistakes."""
    heads = config.num_key_value_heads if heads is None else heads
    width = heads * config.head_dim if width is None else width
    kept = 0
    for layer in range(config.num_hidden_layers):
        is_global = (layer % global_every == 0) if first_global else ((layer + 1) % global_every == 0)
        if (is_global or not local) and not everywhere:
            kept += tokens
        else:
            kept += min(tokens, window) if clip else window
    return pair * width * kept * (batch if per_batch else 1) * bytes_per_number * scale


def test_kv_cache_bytes_accepts_the_formula(capsys):
    check_kv_cache_bytes(kv_bytes)
    check_kv_cache_bytes(lambda config, tokens, window, global_every, batch, bytes_per_number: float(
        kv_bytes(config, tokens, window, global_every, batch, bytes_per_number)))
    assert capsys.readouterr().out.count("Correct: kv_cache_bytes") == 2


@pytest.mark.parametrize("mistake, phrases", [
    (dict(first_global=True), ["global layer comes last", "(i + 1) % global_every == 0"]),
    (dict(local=False), ["gives every layer a full cache"]),
    (dict(everywhere=True), ["gives every layer a sliding window"]),
    (dict(pair=1), ["counts only the keys", "multiply by 2"]),
    (dict(heads=6), ["uses num_attention_heads"]),
    (dict(width=36), ["uses hidden_size", "num_key_value_heads x head_dim"]),
    (dict(per_batch=False), ["forgets the batch"]),
    (dict(scale=8), ["counts bits, not bytes"]),
    (dict(scale=2**-20), ["gives MiB"]),
])
def test_kv_cache_bytes_names_the_mistake(mistake, phrases):
    def wrong(config, tokens, window, global_every, batch, bytes_per_number):
        return kv_bytes(config, tokens, window, global_every, batch, bytes_per_number, **mistake)
    assert_rejected(check_kv_cache_bytes, wrong, "returned", "expected 61440", *phrases)


def test_kv_cache_bytes_keeps_at_most_the_tokens_there_are():
    def no_min(config, tokens, window, global_every, batch, bytes_per_number):
        return kv_bytes(config, tokens, window, global_every, batch, bytes_per_number, clip=False)
    assert_rejected(check_kv_cache_bytes, no_min, "tokens=5, window=8", "min(tokens, window)")


def test_kv_cache_bytes_wants_a_number():
    assert_rejected(check_kv_cache_bytes, lambda config, **kw: torch.tensor(kv_bytes(config, **kw)),
                    "plain number", ".item()")
    assert_rejected(check_kv_cache_bytes, lambda config, **kw: kv_bytes(config, **kw) + 1, "expected 61440")


# ---------------------------------------------------------------- arithmetic intensity

def intensity(out_features, in_features, tokens, bytes_per_number):
    flops = 2 * out_features * in_features * tokens
    moved = bytes_per_number * (out_features * in_features + in_features * tokens + out_features * tokens)
    return flops / moved


def test_arithmetic_intensity_accepts_the_formula(capsys):
    check_arithmetic_intensity(intensity)
    assert "Correct: arithmetic_intensity" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, phrases", [
    (lambda o, i, n, b: intensity(o, i, n, b) / 2, ["one FLOP per multiply-add"]),
    (lambda o, i, n, b: 1 / intensity(o, i, n, b), ["bytes per FLOP"]),
    (lambda o, i, n, b: intensity(o, i, n, b) / 8, ["counts bits"]),
    (lambda o, i, n, b: 2 * o * i * n / (b * (n * o * i + i * n + o * n)), ["W is read once for all of them"]),
    (lambda o, i, n, b: 2 * o * i / (b * (o * i + i * n + o * n)), ["leaves out the tokens in the FLOPs"]),
    (lambda o, i, n, b: 2 * o * i * n / (b * o * i), ["only the bytes of the weights"]),
    (lambda o, i, n, b: 2 * o * i * n / (b * (o * i + i * n)), ["bytes of y"]),
    (lambda o, i, n, b: 2 * o * i * n / (b * (o * i + o * n)), ["bytes of x"]),
])
def test_arithmetic_intensity_names_the_mistake(wrong, phrases):
    def candidate(out_features, in_features, tokens, bytes_per_number):
        return wrong(out_features, in_features, tokens, bytes_per_number)
    assert_rejected(check_arithmetic_intensity, candidate, "out_features=96, in_features=64, tokens=5", *phrases)


# ---------------------------------------------------------------- fixed-shape cache write

def write_index_copy(key_buffer, value_buffer, key_states, value_states, cache_position):
    key_buffer.index_copy_(2, cache_position, key_states)
    value_buffer.index_copy_(2, cache_position, value_states)
    return key_buffer, value_buffer


def write_slice(key_buffer, value_buffer, key_states, value_states, cache_position):
    start = int(cache_position[0])
    key_buffer[:, :, start:start + key_states.shape[2]] = key_states
    value_buffer[:, :, start:start + value_states.shape[2]] = value_states
    return key_buffer, value_buffer


def test_static_cache_write_accepts_index_copy_and_slicing(capsys):
    check_static_cache_write(write_index_copy)
    check_static_cache_write(write_slice)

    def through_the_package(key_buffer, value_buffer, key_states, value_states, cache_position):
        cache = KVCache(max_length=key_buffer.shape[2])
        cache.key_cache, cache.value_cache, cache.lengths = [key_buffer], [value_buffer], [key_buffer.shape[2]]
        return cache.update(key_states, value_states, 0, cache_position=cache_position)

    check_static_cache_write(through_the_package)
    assert capsys.readouterr().out.count("Correct: static_cache_write") == 3


def out_of_place(key_buffer, value_buffer, key_states, value_states, cache_position):
    return (key_buffer.index_copy(2, cache_position, key_states),
            value_buffer.index_copy(2, cache_position, value_states))


def swapped(key_buffer, value_buffer, key_states, value_states, cache_position):
    return write_index_copy(key_buffer, value_buffer, value_states, key_states, cache_position)


def one_late(key_buffer, value_buffer, key_states, value_states, cache_position):
    return write_index_copy(key_buffer, value_buffer, key_states, value_states, cache_position + 1)


def first_slot_only(key_buffer, value_buffer, key_states, value_states, cache_position):
    slot = int(cache_position[0])
    key_buffer[:, :, slot] = key_states[:, :, 0]
    value_buffer[:, :, slot] = value_states[:, :, 0]
    return key_buffer, value_buffer


def to_the_end(key_buffer, value_buffer, key_states, value_states, cache_position):
    start = int(cache_position[0])
    key_buffer[:, :, start:] = key_states[:, :, -1:]
    value_buffer[:, :, start:] = value_states[:, :, -1:]
    return key_buffer, value_buffer


def wrong_axis(key_buffer, value_buffer, key_states, value_states, cache_position):
    key_buffer.index_copy_(1, cache_position, key_states)  # the head axis: slot 6 of 2 heads does not exist
    value_buffer.index_copy_(1, cache_position, value_states)
    return key_buffer, value_buffer


def written_part_only(key_buffer, value_buffer, key_states, value_states, cache_position):
    write_index_copy(key_buffer, value_buffer, key_states, value_states, cache_position)
    end = int(cache_position[-1]) + 1
    return key_buffer[:, :, :end], value_buffer[:, :, :end]


@pytest.mark.parametrize("wrong, phrases", [
    (out_of_place, ["is unchanged and a new tensor was returned", "index_copy_"]),
    (swapped, ["keys and values are swapped"]),
    (one_late, ["one slot too late"]),
    (first_slot_only, ["only the first of the 3 slots", "cache_position=[2, 3, 4]"]),
    (to_the_end, ["slots [7, 8, 9] changed", "buffer[:, :, start:]"]),
    (wrong_axis, ["cache_position=[6] raised", "time axis, dim 2"]),
    (written_part_only, ["return the whole buffer (2, 2, 10, 4)"]),
])
def test_static_cache_write_names_the_mistake(wrong, phrases):
    assert_rejected(check_static_cache_write, wrong, *phrases)
