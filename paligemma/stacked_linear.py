"""Linear layers that read the same input, run as one product: an attention block's q, k and v; an MLP's gate and up.

A decode step multiplies one token's vector by each weight matrix. For the small ones (Gemma 3 270M's key
projection is 256 x 640) the fixed cost of a call (the dispatcher, waking the threads, the compiled step's
checks on every weight tensor it takes) is as large as the reading: stacking the rows of q, k and v into one
matrix turns three products into one. The model's code calls `apply_each`, which runs the stacked product when
`quantize` has stacked the layers (`stack_projections`) and each layer on its own otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

STACKED = {"self_attn": ("q_proj", "k_proj", "v_proj"), "mlp": ("gate_proj", "up_proj")}  # block -> layers


class StackedLinear(nn.Module):
    """One layer holding the rows of several, in order: x -> each layer's share of the output (a tuple)."""

    def __init__(self, layer: nn.Module, sizes: Sequence[int]):
        super().__init__()
        self.layer, self.sizes = layer, tuple(sizes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.layer(x).split(self.sizes, dim=-1)  # (..., sum of sizes) -> (..., size) per layer


class StackedPart(nn.Module):
    """Layer `index` of a StackedLinear, in its old place. Called alone it runs the whole stack and keeps its
    share (correct, three times the work): `apply_each` calls the stack once for all its parts instead."""

    def __init__(self, stack: StackedLinear, index: int):
        super().__init__()
        self.stack, self.index = stack, index
        self.in_features, self.out_features = stack.layer.in_features, stack.sizes[index]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stack(x)[self.index]


def apply_each(layers: Sequence[nn.Module], x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(layer(x) for each layer): one product when the layers are, in order, all the parts of one stack."""
    stack = getattr(layers[0], "stack", None)
    if isinstance(stack, StackedLinear) and len(layers) == len(stack.sizes) and all(
            isinstance(layer, StackedPart) and layer.stack is stack and layer.index == i
            for i, layer in enumerate(layers)):
        return stack(x)
    return tuple(layer(x) for layer in layers)


def stacked(linears: Sequence[nn.Linear]) -> nn.Linear:
    """Several nn.Linear of one input size as one (a float32 copy), their rows (and biases) one after another."""
    weight = torch.cat([linear.weight.detach().float() for linear in linears])  # (sum of outs, in)
    joined = nn.Linear(weight.shape[1], weight.shape[0], bias=linears[0].bias is not None)
    joined.weight = nn.Parameter(weight, requires_grad=False)
    if joined.bias is not None:
        joined.bias = nn.Parameter(torch.cat([linear.bias.detach().float() for linear in linears]),
                                   requires_grad=False)
    return joined


def stack_projections(language_model, make: Callable[[nn.Linear], nn.Module]) -> None:
    """In every decoder layer, q/k/v and gate/up become the parts of one make(stacked rows) each, in place.

    Layers that cannot share a product (different input sizes, a bias on some but not all) are left alone.
    """
    for layer in language_model.model.layers:
        for block_name, names in STACKED.items():
            block = getattr(layer, block_name)
            linears = [getattr(block, name) for name in names]
            if not all(isinstance(linear, nn.Linear) for linear in linears) \
                    or len({linear.in_features for linear in linears}) != 1 \
                    or len({linear.bias is None for linear in linears}) != 1:
                continue
            stack = StackedLinear(make(stacked(linears)), [linear.out_features for linear in linears])
            for index, name in enumerate(names):
                setattr(block, name, StackedPart(stack, index))
