r"""Weight-only quantization for decoding: weights stored in 8 or 4 bits, activations left as they are.

Decoding a token reads every weight once (notebook 11), so its speed is bounded by bytes of weights per
token over memory bandwidth: halving the bytes can double the tokens per second.

- int8, per output channel: for row $r$ of $W$, $s_r = \max_j |W_{rj}| / 127$ and $q_{rj} = \mathrm{round}(W_{rj}
  / s_r) \in [-127, 127]$. Then $x W^\top \approx (x\, q^\top) \odot s$: the scale leaves the sum, so a kernel
  can read the int8 matrix directly (torch's `_weight_int8pack_mm` on the CPU).
- int4, per group of $G = 32$ weights of a row: 16 levels from the group's minimum $m$ to its maximum,
  $W \approx m + s\,q$ with $s = (\max - m) / 15$ and $q \in [0, 15]$ (`_weight_int4pack_mm_for_cpu`).

`quantize(model, "int8")` swaps every linear layer of the decoder, and the tied output projection, for a
quantized one. The tied embedding table and the output projection share one quantized copy: the lookup
dequantizes the rows it needs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

MODES = ("int8", "int4")
INT4_GROUP = 32


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, in) float -> int8 (out, in) and one float32 scale per output row: W ≈ q · s[:, None]."""
    w = weight.detach().float()
    scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127  # (out,)
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)  # (out, in)
    return q, scale


def quantize_int4(weight: torch.Tensor, group: int = INT4_GROUP) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(out, in) float -> q (out, in) in [0, 15] (int32), scale and minimum (out, in / group): W ≈ m + s q."""
    out_features, in_features = weight.shape
    if in_features % group:
        raise ValueError(f"int4 quantization needs in_features ({in_features}) divisible by the group size {group}")
    w = weight.detach().float().view(out_features, in_features // group, group)  # (out, groups, G)
    low, high = w.amin(-1), w.amax(-1)  # (out, groups)
    scale = ((high - low) / 15).clamp(min=1e-12)
    q = torch.round((w - low[..., None]) / scale[..., None]).clamp(0, 15).to(torch.int32)
    return q.view(out_features, in_features), scale, low


class Int8Linear(nn.Module):
    """y = x Wᵀ (+ b) with W stored as int8 rows and their scales; `dequantized()` gives W back."""

    def __init__(self, qweight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        self.in_features, self.out_features = qweight.shape[1], qweight.shape[0]
        self.register_buffer("qweight", qweight)  # (out, in) int8
        self.register_buffer("scales", scales)  # (out,) in the activations' dtype
        self.register_buffer("bias", bias)

    @classmethod
    def from_linear(cls, linear: nn.Linear, dtype: torch.dtype) -> Int8Linear:
        q, scale = quantize_int8(linear.weight)
        bias = None if linear.bias is None else linear.bias.detach().to(dtype)
        return cls(q, scale.to(dtype), bias)

    def dequantized(self) -> torch.Tensor:
        return self.qweight.to(self.scales.dtype) * self.scales[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)  # (B*T, in)
        if x.device.type == "cpu" and x.dtype == self.scales.dtype:
            out = torch.ops.aten._weight_int8pack_mm(flat, self.qweight, self.scales)  # reads the int8 weights
        else:
            out = F.linear(flat, self.qweight.to(x.dtype)) * self.scales.to(x.dtype)
        out = out.view(*x.shape[:-1], self.out_features)
        return out if self.bias is None else out + self.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per output channel"


class Int4Linear(nn.Module):
    """y = x Wᵀ with W stored as 4-bit values packed by torch's CPU kernel, a scale and a minimum per group."""

    def __init__(self, linear: nn.Linear, dtype: torch.dtype, group: int = INT4_GROUP):
        super().__init__()
        if linear.bias is not None:
            raise ValueError("Int4Linear: Gemma's linear layers have no bias; this one does")
        self.in_features, self.out_features, self.group = linear.in_features, linear.out_features, group
        q, scale, low = quantize_int4(linear.weight, group)
        self.register_buffer("packed", torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1))
        # the kernel computes (q - 8) * scale + zero, so zero = minimum + 8 * scale; layout (groups, out, 2)
        self.register_buffer("scales_and_zeros", torch.stack([scale, low + 8 * scale], -1).transpose(0, 1)
                             .contiguous().to(dtype))
        self._reference = (q, scale, low)  # kept for `dequantized()` in tests and notebooks

    def dequantized(self) -> torch.Tensor:
        q, scale, low = self._reference
        grouped = q.view(self.out_features, -1, self.group).float()
        return (grouped * scale[..., None] + low[..., None]).view(self.out_features, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).to(self.scales_and_zeros.dtype)
        out = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, self.packed, self.group, self.scales_and_zeros)
        return out.to(x.dtype).view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int4 groups of {self.group}"


class QuantizedEmbedding(nn.Module):
    """The tied table as int8 rows: looking up a token dequantizes only its row; `head` reuses the same bytes."""

    def __init__(self, head: Int8Linear):
        super().__init__()
        self.head = [head]  # a list, so the buffers are not registered twice

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        head = self.head[0]
        rows = head.qweight[input_ids]  # (B, T, D) int8
        return rows.to(head.scales.dtype) * head.scales[input_ids][..., None]


def quantize(model, mode: str = "int8", dtype: torch.dtype = torch.bfloat16):
    """Quantize a causal LM's decoder in place for decoding: linear layers and the tied output projection.

    Activations run in `dtype` (bfloat16: the fused CPU kernels take it); norms and RoPE are unchanged.
    Returns the model, in eval mode. Training a quantized model is not supported.
    """
    if mode not in MODES:
        raise ValueError(f"quantize mode must be one of {MODES}, got {mode!r}")
    language_model = getattr(model, "language_model", model)
    if getattr(language_model, "quantized", None):
        raise ValueError(f"this model is already quantized ({language_model.quantized})")
    if next(language_model.parameters()).device.type != "cpu":
        raise ValueError("quantize() targets CPU decoding; the model is on "
                         f"{next(language_model.parameters()).device}")
    model.to(dtype)
    for layer in language_model.model.layers:
        for parent in (layer.self_attn, layer.mlp):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Linear):
                    swapped = Int8Linear.from_linear(child, dtype) if mode == "int8" else Int4Linear(child, dtype)
                    setattr(parent, name, swapped)
    # the output projection: 262,144 x 640 in Gemma 3 270M, 63 % of its weights; int8 in both modes (its rows
    # are also the embedding, which int4 groups would blur for every input token)
    head = Int8Linear.from_linear(language_model.lm_head, dtype)
    language_model.lm_head = head
    language_model.model.embed_tokens = QuantizedEmbedding(head)
    language_model.quantized = mode
    return model.eval()
