"""Weight-only quantization: each layer equals dequantize-then-matmul within its error bound; models still decode."""

import copy

import pytest
import torch
from torch import nn

from conftest import make_causal_lm, make_paligemma, random_images
from paligemma.quantization import (INT4_GROUP, Int4Linear, Int8DynamicLinear, Int8Linear, QuantizedEmbedding, quantize,
                                    quantize_int4, quantize_int8)


def random_linear(out_features=96, in_features=64, seed=0):
    torch.manual_seed(seed)
    layer = nn.Linear(in_features, out_features, bias=False)
    nn.init.normal_(layer.weight, std=0.05)
    with torch.no_grad():
        layer.weight[3, 5] = 0.9  # an outlier: its row's scale grows, the others' must not
    return layer


def test_int8_rounding_stays_within_half_a_step_per_row():
    layer = random_linear()
    q, scale = quantize_int8(layer.weight)
    assert q.dtype == torch.int8 and int(q.abs().max()) <= 127 and scale.shape == (96,)
    error = (q.float() * scale[:, None] - layer.weight).abs()
    assert bool((error <= scale[:, None] / 2 + 1e-9).all())
    assert scale[3] > 5 * scale[4]  # per channel: the outlier only coarsens its own row


def test_int4_rounding_stays_within_half_a_step_per_group():
    layer = random_linear()
    q, scale, low = quantize_int4(layer.weight)
    assert int(q.min()) >= 0 and int(q.max()) <= 15 and scale.shape == (96, 64 // INT4_GROUP)
    back = (q.view(96, -1, INT4_GROUP).float() * scale[..., None] + low[..., None]).view(96, 64)
    assert bool(((back - layer.weight).abs() <= scale.repeat_interleave(INT4_GROUP, 1) / 2 + 1e-7).all())


@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_weight_only_layer_equals_dequantize_then_matmul(kind):
    layer = random_linear(seed=1)
    x = torch.randn(3, 7, 64).bfloat16()
    quantized = (Int8Linear.from_linear(layer, torch.bfloat16) if kind == "int8"
                 else Int4Linear(layer, torch.bfloat16, keep_reference=True))
    w = quantized.dequantized().float()  # (out, in): the weights the kernel really uses
    reference = x.float() @ w.T
    got = quantized(x)
    assert got.shape == (3, 7, 96) and got.dtype == torch.bfloat16
    # only bf16 rounding of the output (and of the kernel's partial sums) separates the two
    torch.testing.assert_close(got.float(), reference, atol=2e-2, rtol=1e-2)
    # and against the original float weights: within sum_j |x_j| * step / 2, the bound of weight rounding
    step = quantize_int8(layer.weight)[1][None] if kind != "int4" else quantize_int4(layer.weight)[1].amax(1)[None]
    bound = x.float().abs().sum(-1, keepdim=True) * step / 2
    assert bool(((got.float() - x.float() @ layer.weight.T).abs() <= bound + 3e-2).all())


def test_dynamic_int8_layer_equals_quantize_both_then_integer_matmul():
    """W8A8: the row of x is quantized to 7 bits (reduce_range) with its own scale, then multiplied in integers."""
    layer = random_linear(seed=2)
    quantized = Int8DynamicLinear.from_linear(layer)
    q, scale = quantize_int8(layer.weight)
    torch.testing.assert_close(quantized.dequantized(), q.float() * scale[:, None])
    x = torch.randn(1, 64)
    got = quantized(x)
    # fbgemm's activation quantization: an asymmetric 7-bit grid over [min(x, 0), max(x, 0)]
    low, high = min(x.min().item(), 0.0), max(x.max().item(), 0.0)
    x_scale = (high - low) / 127
    zero = round(-low / x_scale)
    x_q = (torch.round(x / x_scale) + zero).clamp(0, 127)
    reference = ((x_q - zero) * x_scale) @ (q.float() * scale[:, None]).T
    torch.testing.assert_close(got, reference, atol=1e-4, rtol=1e-4)
    bound = (x.abs().sum() * scale / 2 + x_scale / 2 * (q.float() * scale[:, None]).abs().sum(1))[None]
    assert bool(((got - x @ layer.weight.T).abs() <= bound + 1e-5).all())


@pytest.mark.parametrize("mode, head_kind", [("int8", Int8Linear), ("int8-dynamic", Int8DynamicLinear)])
def test_the_tied_table_is_stored_once_and_looked_up_exactly(mode, head_kind):
    model = quantize(make_causal_lm("gemma3", seed=2), mode)
    assert isinstance(model.model.embed_tokens, QuantizedEmbedding) and isinstance(model.lm_head, head_kind)
    head = model.lm_head
    ids = torch.tensor([[5, 17, 96]])
    torch.testing.assert_close(model.model.embed_tokens(ids), head.dequantized()[ids])
    names = [name for name, _ in model.named_buffers()]
    assert names.count("lm_head.qweight") == 1 and not any("embed_tokens" in n for n in names)


@pytest.mark.parametrize("mode", ["int8", "int8-dynamic", "int4"])
@pytest.mark.parametrize("generation", ["gemma", "gemma2", "gemma3"])
def test_quantized_models_decode_close_to_the_original(generation, mode):
    original = make_causal_lm(generation, seed=3, hidden_size=64, head_dim=16, intermediate_size=128)
    quantized = quantize(copy.deepcopy(original), mode)
    ids = torch.randint(3, 97, (2, 12), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ours, reference = quantized(input_ids=ids)["logits"].float(), original(input_ids=ids)["logits"]
    relative = (ours - reference).abs().mean() / reference.abs().mean()
    # lossy, and int4 far more: these tiny random models have wide Gaussian weights (std 0.2), whose groups of
    # 32 span about 5 standard deviations in 15 steps; bfloat16 activations alone cost about 1.5 % here
    # (int8-dynamic also rounds the activations to 7 bits per call, and these random activations have outliers)
    assert relative < {"int8-dynamic": 0.15, "int8": 0.06, "int4": 0.4}[mode], relative
    tokens = quantized.generate(ids, max_new_tokens=5, eos_token_id=None)
    assert tokens.shape == (2, 5)
    assert torch.equal(quantized.generate(ids, max_new_tokens=5, eos_token_id=None, static=True), tokens)


def test_paligemma_decoder_quantizes_and_refusals_are_clear():
    model = quantize(make_paligemma(seed=5), "int8")
    ids = torch.tensor([[96] * 16 + [2, 10, 11]])
    assert model.generate(ids, pixel_values=random_images(1), max_new_tokens=3, eos_token_id=None).shape == (1, 3)
    with pytest.raises(ValueError, match="already quantized"):
        quantize(model)
    with pytest.raises(ValueError, match="mode must be one of"):
        quantize(make_causal_lm("gemma", seed=6), "int2")
    with pytest.raises(ValueError, match="quantized for decoding"):
        quantize(make_causal_lm("gemma", seed=7)).save_pretrained("/nonexistent")
