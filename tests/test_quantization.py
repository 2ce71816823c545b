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
    assert q.dtype == torch.uint8 and int(q.max()) <= 15 and scale.shape == (96, 64 // INT4_GROUP)
    assert scale.dtype == low.dtype == torch.float16  # as stored; q was chosen for these rounded values
    back = (q.view(96, -1, INT4_GROUP).float() * scale.float()[..., None] + low.float()[..., None]).view(96, 64)
    step = scale.float().repeat_interleave(INT4_GROUP, 1)
    assert bool(((back - layer.weight).abs() <= step / 2 + 1e-3 * step).all())


def blocks_rounded(x: torch.Tensor) -> torch.Tensor:
    """Activations rounded to int8 levels, one scale max|x| / 127 per block of 32 (written out here, in float64)."""
    blocks = x.double().view(*x.shape[:-1], -1, 32)
    step = blocks.abs().amax(-1, keepdim=True) / 127
    return (torch.round(blocks / step) * step).view(x.shape)


def test_weight_only_int8_layer_equals_dequantize_then_matmul():
    layer = random_linear(seed=1)
    quantized = Int8Linear.from_linear(layer)
    w = quantized.dequantized().double()  # (out, in): the weights the kernel really uses
    torch.manual_seed(1)
    for shape in [(1, 1, 64), (3, 1, 64), (3, 7, 64)]:  # the kernel, the kernel row by row, torch's product
        x = torch.randn(shape)
        got = quantized(x)
        assert got.shape == (*shape[:-1], 96) and got.dtype == torch.float32
        torch.testing.assert_close(got.double(), x.double() @ w.T, atol=1e-5, rtol=1e-5)
        # and against the original float weights: within sum_j |x_j| * step / 2, the bound of weight rounding
        bound = x.double().abs().sum(-1, keepdim=True) * quantize_int8(layer.weight)[1].double() / 2
        assert bool(((got.double() - x.double() @ layer.weight.double().T).abs() <= bound + 1e-5).all())


def test_int4_layer_rounds_activations_per_block_and_unpacks_its_nibbles():
    layer = random_linear(seed=1)
    quantized = Int4Linear(layer)
    q, scale, low = quantize_int4(layer.weight)
    assert torch.equal(quantized.unpacked(), q) and quantized.packed.shape == (96, 32)  # two weights a byte
    w = quantized.dequantized().double()
    torch.testing.assert_close(w, ((q.view(96, -1, 32).double() * scale.double()[..., None]
                                    + low.double()[..., None]).view(96, 64)))
    torch.manual_seed(2)
    for shape in [(1, 64), (5, 64), (12, 64)]:  # the kernel; once per row; the dequantized chunks
        x = torch.randn(shape)
        torch.testing.assert_close(quantized(x).double(), blocks_rounded(x) @ w.T, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="groups of 32"):
        Int4Linear(layer, group=64)


@pytest.mark.parametrize("rows", [1, 3, 20])  # one decode step (the kernel), a few (once per row), a prompt (torch)
def test_dynamic_int8_layer_rounds_activations_per_block_then_multiplies(rows):
    """W8A8: each row of x is rounded to int8 with one scale per block of 32 values, then multiplied by q · s."""
    layer = random_linear(seed=2)
    quantized = Int8DynamicLinear.from_linear(layer)
    q, scale = quantize_int8(layer.weight)
    torch.testing.assert_close(quantized.dequantized(), q.float() * scale[:, None])
    torch.manual_seed(rows)
    x = torch.randn(rows, 64)
    x[0, 40] = 25.0  # an outlier coarsens only its own block (values 32 ... 63 of row 0)
    step = x.double().view(rows, 2, 32).abs().amax(-1, keepdim=True) / 127  # (rows, 2, 1)
    reference = blocks_rounded(x) @ (q.double() * scale.double()[:, None]).T
    got = quantized(x)
    torch.testing.assert_close(got.double(), reference, atol=1e-5, rtol=1e-5)
    # against float weights and activations: weight rounding plus activation rounding, each half a step
    step_per_value = step.expand(rows, 2, 32).reshape(rows, 64)
    bound = (x.double().abs().sum(-1, keepdim=True) * scale.double() / 2
             + (step_per_value / 2) @ (q.double() * scale.double()[:, None]).abs().T)
    assert bool(((got.double() - x.double() @ layer.weight.double().T).abs() <= bound + 1e-5).all())


@pytest.mark.parametrize("mode, head_kind", [("int8", Int8Linear), ("int8-dynamic", Int8DynamicLinear)])
def test_the_tied_table_is_stored_once_and_looked_up_exactly(mode, head_kind):
    model = quantize(make_causal_lm("gemma3", seed=2), mode)
    assert isinstance(model.model.embed_tokens, QuantizedEmbedding) and isinstance(model.lm_head, head_kind)
    head = model.lm_head
    ids = torch.tensor([[5, 17, 96]])
    torch.testing.assert_close(model.model.embed_tokens(ids), head.dequantized()[ids])
    names = [name for name, _ in model.named_buffers()]
    assert names.count("lm_head.qweight") == 1 and not any("embed_tokens" in n for n in names)


def test_int4_keeps_an_int8_table_for_the_lookups():
    original = make_causal_lm("gemma3", seed=2, hidden_size=64, head_dim=16, intermediate_size=128)
    model = quantize(copy.deepcopy(original), "int4")
    assert isinstance(model.lm_head, Int4Linear)
    q, scale = quantize_int8(original.model.embed_tokens.weight)
    ids = torch.tensor([[5, 17, 96]])
    torch.testing.assert_close(model.model.embed_tokens(ids), (q.float() * scale[:, None])[ids])
    assert "model.embed_tokens.table.qweight" in dict(model.named_buffers())


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
    # 32 span about 5 standard deviations in 15 steps (int8-dynamic and int4 also round the activations to int8,
    # per block of 32 values)
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
