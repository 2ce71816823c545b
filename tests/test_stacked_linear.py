"""Stacked projections: q/k/v and gate/up as one product give what the separate layers give, bit for bit."""

import copy

import pytest
import torch
from torch import nn

from conftest import make_causal_lm
from paligemma.quantization import LAYER_KINDS, quantize
from paligemma.stacked_linear import StackedLinear, StackedPart, apply_each, stack_projections, stacked


def linears(sizes, in_features=64, seed=0):
    torch.manual_seed(seed)
    return [nn.Linear(in_features, size, bias=False) for size in sizes]


@pytest.mark.parametrize("mode", ["int8", "int8-dynamic", "int4"])
@pytest.mark.parametrize("rows", [1, 3, 20])  # the kernel, the kernel row by row, dequantized weights
def test_a_stacked_product_equals_the_separately_quantized_layers(mode, rows):
    separate = linears([96, 32, 32], seed=1)
    stack = StackedLinear(LAYER_KINDS[mode](stacked(separate)), [96, 32, 32])
    parts = [StackedPart(stack, i) for i in range(3)]
    x = torch.randn(rows, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        together = apply_each(parts, x)
        expected = [LAYER_KINDS[mode](layer)(x) for layer in separate]  # per row / per group: same roundings
        alone = [part(x) for part in parts]
    assert [t.shape for t in together] == [(rows, 96), (rows, 32), (rows, 32)]
    for got, one_by_one, want in zip(together, alone, expected):
        assert torch.equal(got, want) and torch.equal(one_by_one, want)


def test_apply_each_runs_unstacked_layers_one_by_one():
    layers = linears([8, 4], seed=3)
    x = torch.randn(2, 5, 64)
    for got, layer in zip(apply_each(layers, x), layers):
        assert torch.equal(got, layer(x))


def test_parts_out_of_order_or_missing_are_each_run_alone():
    stack = StackedLinear(nn.Linear(64, 12, bias=False), [8, 4])
    first, second = StackedPart(stack, 0), StackedPart(stack, 1)
    x = torch.randn(1, 64)
    full = stack(x)
    swapped = apply_each((second, first), x)
    assert torch.equal(swapped[0], full[1]) and torch.equal(swapped[1], full[0])
    assert len(apply_each((first,), x)) == 1  # one part of two: not the whole stack's tuple


def test_biases_are_stacked_and_mixed_layers_are_left_alone():
    model = make_causal_lm("gemma", seed=4, attention_bias=True)
    reference = copy.deepcopy(model)
    stack_projections(model, lambda linear: linear)  # float stacking only: the same products, as one
    attention = model.model.layers[0].self_attn
    assert isinstance(attention.q_proj, StackedPart) and attention.q_proj.stack.layer.bias.shape == (
        attention.q_proj.stack.layer.out_features,)
    ids = torch.tensor([[3, 14, 15, 92]])
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids)["logits"], reference(input_ids=ids)["logits"],
                                   atol=1e-5, rtol=1e-5)
    mixed = make_causal_lm("gemma", seed=5)
    mixed.model.layers[0].self_attn.k_proj.bias = nn.Parameter(torch.zeros(mixed.model.layers[0].self_attn.k_proj
                                                                           .out_features))
    stack_projections(mixed, lambda linear: linear)
    assert isinstance(mixed.model.layers[0].self_attn.q_proj, nn.Linear)  # a bias on k only: not stacked
    assert isinstance(mixed.model.layers[0].mlp.gate_proj, StackedPart)  # the MLP still is


@pytest.mark.parametrize("generation", ["gemma", "gemma2", "gemma3"])
def test_quantize_stacks_each_block_once(generation):
    model = quantize(make_causal_lm(generation, seed=6, hidden_size=64, head_dim=16, intermediate_size=128), "int8")
    layer = model.model.layers[0]
    stacks = {id(part.stack) for part in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj)}
    assert len(stacks) == 1 and layer.mlp.gate_proj.stack is layer.mlp.up_proj.stack
    names = [name for name, _ in model.named_modules()]
    assert sum(name.endswith(".stack.layer") for name in names) == 2 * len(model.model.layers)  # listed once each
