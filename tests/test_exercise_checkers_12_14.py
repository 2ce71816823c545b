"""The checkers of notebooks 12-14 accept correct answers and name the usual mistakes in plain words."""

import math

import pytest
import torch

from exercise_helpers import assert_rejected, not_written
from paligemma.exercises import (ExerciseError, check_cached_window_mask, check_int8_rows, check_perplexity,
                                 check_q5_0, check_soft_cap_grad)


def test_checkers_are_exported_from_their_topic_modules():
    from paligemma.exercises import gemma_family, real_gemma, real_speed
    assert gemma_family.__all__ == ["check_cached_window_mask", "check_soft_cap_grad"]
    assert real_gemma.__all__ == ["check_q5_0", "check_perplexity"]
    assert real_speed.__all__ == ["check_int8_rows"]


@pytest.mark.parametrize("checker", [check_cached_window_mask, check_soft_cap_grad, check_int8_rows])
def test_a_stub_is_reported_as_not_implemented(checker):
    assert_rejected(checker, not_written, "not_written is not implemented yet")


# ---------------------------------------------------------------- 12: a local layer's mask over its cache

def window_mask(query_length, past_length, window, *, kept_back=None, reverse=False):
    """Written from the rule itself: query i sits at past + i, key k at first + k; allowed if 0 <= q - k < window."""
    kept_back = window - 1 if kept_back is None else kept_back
    earlier = min(past_length, kept_back)
    first = past_length - earlier
    q = torch.arange(query_length)[:, None] + past_length
    k = torch.arange(earlier + query_length)[None, :] + first
    mask = (k <= q) & (q - k < window)
    return mask.flip(-1) if reverse else mask


def test_cached_window_mask_accepts_the_rule(capsys):
    check_cached_window_mask(window_mask)
    assert capsys.readouterr().out.startswith("Correct")


def test_cached_window_mask_names_keeping_window_keys_and_reversed_columns():
    assert_rejected(check_cached_window_mask, lambda t, p, w: window_mask(t, p, w, kept_back=w), "window - 1")
    assert_rejected(check_cached_window_mask, lambda t, p, w: window_mask(t, p, w, reverse=True), "reversed")
    assert_rejected(check_cached_window_mask, lambda t, p, w: window_mask(t, p, w).int(), "boolean")


# ---------------------------------------------------------------- 12: soft-capping's gradient

def test_soft_cap_grad_accepts_the_derivative_and_names_two_mistakes(capsys):
    check_soft_cap_grad(lambda x, cap: 1 - torch.tanh(x / cap) ** 2)
    assert capsys.readouterr().out.startswith("Correct")
    assert_rejected(check_soft_cap_grad, lambda x, cap: (1 - torch.tanh(x / cap) ** 2) / cap, "divided by cap")
    assert_rejected(check_soft_cap_grad, lambda x, cap: torch.tanh(x / cap) ** 2, "1 - tanh²")


# ---------------------------------------------------------------- 13: perplexity (a tiny model stands in)

@pytest.fixture(scope="module")
def tiny_lm():
    from paligemma import GemmaConfig, GemmaForCausalLM
    torch.manual_seed(0)
    config = GemmaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=16)
    return GemmaForCausalLM(config).eval(), torch.randint(0, 50, (1, 12), generator=torch.Generator().manual_seed(1))


def perplexity_by_hand(model, ids, *, shift=True, exponentiate=True):
    with torch.no_grad():
        logits = model(input_ids=ids)["logits"][0].double()  # (T, V)
    log_probs = logits.log_softmax(-1)
    targets, rows = (ids[0, 1:], log_probs[:-1]) if shift else (ids[0], log_probs)
    nll = -rows[torch.arange(len(targets)), targets].mean().item()
    return math.exp(nll) if exponentiate else nll


def test_perplexity_accepts_the_definition_and_names_two_mistakes(tiny_lm, capsys):
    model, ids = tiny_lm
    check_perplexity(perplexity_by_hand, model, ids)
    assert capsys.readouterr().out.startswith("Correct")
    with pytest.raises(ExerciseError, match="predict token t \\+ 1"):
        check_perplexity(lambda m, i: perplexity_by_hand(m, i, shift=False), model, ids)
    with pytest.raises(ExerciseError, match="its exponential"):
        check_perplexity(lambda m, i: perplexity_by_hand(m, i, exponentiate=False), model, ids)


# ---------------------------------------------------------------- 13: Q5_0 by hand (needs the real file)

def q5_0_by_hand(blocks, *, use_fifth_bit=True, offset=16):
    """Q5_0 from its layout: f16 d, 32 high bits (u32), 16 bytes of nibbles; w = d * (q - 16)."""
    d = blocks[:, :2].contiguous().view(torch.float16).float()  # (n, 1)
    high = blocks[:, 2:6].contiguous().view(torch.int32).long()  # (n, 1), little-endian u32 (as int32 bits)
    low = torch.cat([blocks[:, 6:] & 15, blocks[:, 6:] >> 4], 1).long()  # (n, 32)
    bits = (high >> torch.arange(32)) & 1  # (n, 32)
    q = low + 16 * bits * use_fifth_bit
    return d * (q - offset).float()


def test_q5_0_accepts_the_layout_and_names_two_mistakes(capsys):
    from gguf_helpers import real_model_path

    path = real_model_path()
    check_q5_0(q5_0_by_hand, path)
    assert capsys.readouterr().out.startswith("Correct")
    assert_rejected(lambda fn: check_q5_0(fn, path), lambda b: q5_0_by_hand(b, offset=0), "shifted by 16")
    assert_rejected(lambda fn: check_q5_0(fn, path), lambda b: q5_0_by_hand(b, use_fifth_bit=False), "5th bit")


# ---------------------------------------------------------------- 14: int8, one scale per row

def int8_rows(w, *, divisor=127, per_row=True, rounding=torch.round):
    scale = (w.abs().amax(dim=1) if per_row else w.abs().max().expand(1)) / divisor  # (out,) or (1,)
    q = rounding(w / (scale[:, None] if per_row else scale)).clamp(-127, 127).to(torch.int8)
    return q, scale


def test_int8_rows_accepts_the_formula_and_names_the_usual_mistakes(capsys):
    check_int8_rows(int8_rows)
    assert capsys.readouterr().out.startswith("Correct")
    assert_rejected(check_int8_rows, lambda w: int8_rows(w, per_row=False), "own scale")
    assert_rejected(check_int8_rows, lambda w: int8_rows(w, divisor=128), "divide by 127")
    assert_rejected(check_int8_rows, lambda w: int8_rows(w, rounding=torch.trunc), "truncated")
    assert_rejected(check_int8_rows, lambda w: (int8_rows(w)[0].float(), int8_rows(w)[1]), "int8 tensor")
    assert_rejected(check_int8_rows, lambda w: int8_rows(w)[0], "(q, scale)")
