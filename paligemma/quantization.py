r"""Quantized decoding: weights stored in 8 or 4 bits, so each generated token reads fewer bytes.

Decoding a token reads every weight once (notebook 11), so its speed is bounded by bytes of weights per
token over memory bandwidth: halving the bytes can double the tokens per second. Three modes:

- "int8": int8 weights per output channel: for row $r$ of $W$, $s_r = \max_j |W_{rj}| / 127$ and
  $q_{rj} = \mathrm{round}(W_{rj} / s_r)$. Weight-only: the activations stay float32 and
  $x W^\top \approx (x\, q^\top) \odot s$. A decode step's single row runs through our own kernel
  (`cpu_kernels.gemv_int8`, which reads the int8 rows faster than torch's product); long inputs (a prompt),
  and CPUs where the kernel cannot be built, multiply by float32 weights dequantized a chunk at a time.
- "int8-dynamic": the same weights, and the activations are rounded to int8 too, on the fly, one scale per
  block of 32 values (`cpu_kernels.quantize_blocks`), so the products run in integers
  (`cpu_kernels.gemv_w8a8`: cheaper arithmetic than converting every weight to float). Blocks of 32 keep
  Gemma's few very large activation channels from coarsening all the others; the benchmark prints the
  quality next to the speed.
- "int4": groups of $G = 32$ weights of a row get 16 levels from their minimum $m$ to their maximum,
  $W \approx m + s\,q$ with $q \in [0, 15]$, the scale and minimum in float16; activations rounded to
  int8 per block as in "int8-dynamic" (`cpu_kernels.gemv_w4a8`). The output projection is int4 too; the
  embedding lookups keep their own int8 copy of the table (4 bits would blur every input token).

`quantize(model, mode)` swaps every linear layer of the decoder, and the tied output projection, for a
quantized one; the tied embedding table keeps one int8 copy for its lookups. Layers that read the same input
(q, k, v; gate, up) are quantized as one stacked matrix, one product per block (`stacked_linear.py`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import cpu_kernels
from .stacked_linear import stack_projections

MODES = ("int8", "int8-dynamic", "int4")
INT4_GROUP = 32
ROWS_ONE_BY_ONE = 8  # inputs of up to this many rows (a batch of decode steps) take the kernel once per row
DEQUANTIZED_ROWS = 2048  # longer inputs: weight rows dequantized to float32 per chunk (2048 x 640: 5 MB)


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, in) float -> int8 (out, in) and one float32 scale per output row: W ≈ q · s[:, None]."""
    w = weight.detach().float()
    scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127  # (out,)
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)  # (out, in)
    return q, scale


def quantize_int4(weight: torch.Tensor, group: int = INT4_GROUP) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(out, in) float -> q (out, in) in [0, 15] (uint8), scale and minimum (out, in / group) as float16: W ≈ m + s q.

    The minimum and the scale are rounded to float16 (how they are stored) before q is chosen, so q fits them.
    """
    out_features, in_features = weight.shape
    if in_features % group:
        raise ValueError(f"int4 quantization needs in_features ({in_features}) divisible by the group size {group}")
    w = weight.detach().float().view(out_features, in_features // group, group)  # (out, groups, G)
    low = w.amin(-1).half()  # (out, groups)
    scale = ((w.amax(-1) - low.float()) / 15).clamp(min=1e-4).half()  # float16's smallest normal is 6e-5
    q = torch.round((w - low.float()[..., None]) / scale.float()[..., None]).clamp(0, 15).to(torch.uint8)
    return q.view(out_features, in_features), scale, low


def int4_byte_order(groups: int) -> torch.Tensor:
    """Where the kernel wants each byte of a row's nibbles: order[i] is the plain-order byte (16 per group, byte b
    of group g at 16g + b) stored at position i. Each run of eight groups is transposed in 4-byte words (word v of
    groups 0 ... 7, then word v + 1 ...), so a 32-bit lane of the kernel's loads meets one group only; a last
    run of four groups likewise (in 16-byte loads); groups past that stay in plain order (cpu_kernels.c)."""
    order, start = [], 0
    for run in [8] * (groups // 8) + [4] * (groups % 8 >= 4):
        words = torch.arange(start * 4, (start + run) * 4).view(run, 4).T.reshape(-1)  # (4 * run,) plain words
        order.append((words[:, None] * 4 + torch.arange(4)).reshape(-1))  # their bytes
        start += run
    order.append(torch.arange(start * 16, groups * 16))
    return torch.cat(order)


class QuantizedLinear(nn.Module):
    """What the quantized layers share: a decode step's row through the layer's kernel, a few rows through it one
    by one, longer inputs (a prompt) times float32 weights dequantized DEQUANTIZED_ROWS rows at a time.

    A subclass stores its weights and says how to use them: `stored` (the tensor the kernel reads), `one_row`,
    `dequantized(rows)`, and `rounded` (what it does to the activations first).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)  # (B*T, in)
        if cpu_kernels.serves(flat, self.stored):  # a decode step
            out = self.one_row(flat)
        elif flat.shape[0] <= ROWS_ONE_BY_ONE and cpu_kernels.serves(flat[:1], self.stored):
            out = torch.cat([self.one_row(row[None]) for row in flat])  # a few rows: the kernel once per row
        else:  # a long input, or no kernel here: the same rounding, then torch's product
            rounded = self.rounded(flat)
            out = rounded.new_empty(rounded.shape[0], self.out_features)  # (B*T, out)
            for start in range(0, self.out_features, DEQUANTIZED_ROWS):
                rows = slice(start, start + DEQUANTIZED_ROWS)
                out[:, rows] = F.linear(rounded, self.dequantized(rows))
        out = out.to(x.dtype).view(*x.shape[:-1], self.out_features)
        return out if self.bias is None else out + self.bias

    @staticmethod
    def rounded(flat: torch.Tensor) -> torch.Tensor:
        """The activations as the product sees them, float32: unchanged unless the layer rounds them."""
        return flat.float()


class Int8Linear(QuantizedLinear):
    """y = x Wᵀ (+ b) with W stored as int8 rows and their scales; `dequantized()` gives W back."""

    def __init__(self, qweight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        self.in_features, self.out_features = qweight.shape[1], qweight.shape[0]
        self.register_buffer("qweight", qweight)  # (out, in) int8
        self.register_buffer("scales", scales.float())  # (out,) float32
        self.register_buffer("bias", bias)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        q, scale = quantize_int8(linear.weight)
        bias = None if linear.bias is None else linear.bias.detach().float()
        return cls(q, scale, bias)

    @property
    def stored(self) -> torch.Tensor:
        return self.qweight

    def dequantized(self, rows: slice = slice(None)) -> torch.Tensor:
        return self.qweight[rows].float() * self.scales[rows, None]

    def weight_bytes(self) -> int:
        """Bytes read per call: one per weight, plus the row scales (and the bias)."""
        bias = 0 if self.bias is None else self.bias.numel() * self.bias.element_size()
        return self.out_features * self.in_features + self.scales.numel() * self.scales.element_size() + bias

    def one_row(self, row: torch.Tensor) -> torch.Tensor:
        """A decode step (1, in): our kernel, reading the int8 rows faster than torch's product."""
        return cpu_kernels.gemv_int8(row, self.qweight, self.scales)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per output channel"


class Int4Linear(QuantizedLinear):
    """y = x Wᵀ with W in groups of 32 four-bit values, a float16 scale and minimum per group (W4A8).

    Like Int8DynamicLinear, the activations are rounded to int8 per block of 32 (`cpu_kernels.quantize_blocks`),
    so a decode step runs in integers (`cpu_kernels.gemv_w4a8`). Two weights share a byte: in each group of 32,
    weight j (< 16) is the low nibble of byte j, weight 16 + j the high one; the bytes of a row are then stored in
    the order the kernel reads them (`int4_byte_order`).
    Everything is stored in one tensor, `rows`, one row per output: its scales, its minimums, then its nibbles, so
    the kernel reads one stream and a compiled decode step takes one tensor per layer.
    """

    def __init__(self, linear: nn.Linear, group: int = INT4_GROUP):
        super().__init__()
        if linear.bias is not None:
            raise ValueError("Int4Linear: Gemma's linear layers have no bias; this one does")
        if group != INT4_GROUP:
            raise ValueError(f"Int4Linear: the kernel takes groups of {INT4_GROUP}, not {group}")
        self.in_features, self.out_features, self.group = linear.in_features, linear.out_features, group
        q, scale, low = quantize_int4(linear.weight, group)
        pairs = q.view(self.out_features, -1, 2, group // 2)  # (out, groups, low/high half, 16)
        nibbles = (pairs[:, :, 0] | (pairs[:, :, 1] << 4)).reshape(self.out_features, -1)  # (out, in / 2)
        nibbles = nibbles[:, int4_byte_order(self.groups)]  # in the order the kernel reads them
        # (out, 2 * groups + 2 * groups + in / 2) bytes: float16 scales, float16 minimums, nibbles
        self.register_buffer("rows", torch.cat([scale.view(torch.uint8), low.view(torch.uint8), nibbles], 1))
        self.bias = None

    @property
    def groups(self) -> int:
        return self.in_features // self.group

    @property
    def scales(self) -> torch.Tensor:
        """(out, groups) float16, a view into `rows`."""
        return self.rows[:, :2 * self.groups].view(torch.float16)

    @property
    def mins(self) -> torch.Tensor:
        """(out, groups) float16, a view into `rows`."""
        return self.rows[:, 2 * self.groups:4 * self.groups].view(torch.float16)

    @property
    def packed(self) -> torch.Tensor:
        """(out, in / 2) uint8, two weights a byte, in the kernel's order (`int4_byte_order`): a view into `rows`."""
        return self.rows[:, 4 * self.groups:]

    @property
    def stored(self) -> torch.Tensor:
        return self.rows

    def weight_bytes(self) -> int:
        return self.rows.numel()

    def unpacked(self, rows: slice = slice(None)) -> torch.Tensor:
        """q (rows, in) as uint8 values 0 ... 15, back from the nibbles."""
        plain = torch.empty_like(self.packed[rows])
        plain[:, int4_byte_order(self.groups)] = self.packed[rows]  # back to 16 bytes a group, in order
        packed = plain.reshape(-1, self.groups, 1, self.group // 2)
        return torch.cat([packed & 15, packed >> 4], 2).view(-1, self.in_features)

    def dequantized(self, rows: slice = slice(None)) -> torch.Tensor:
        grouped = self.unpacked(rows).view(-1, self.in_features // self.group, self.group).float()
        weights = grouped * self.scales[rows].float()[..., None] + self.mins[rows].float()[..., None]
        return weights.view(-1, self.in_features)

    def one_row(self, row: torch.Tensor) -> torch.Tensor:
        return cpu_kernels.gemv_w4a8(row, self.rows)  # rounds the row itself

    rounded = staticmethod(cpu_kernels.quantize_blocks)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, int4 groups of {self.group}, "
                "activations int8 per block of 32")


class Int8DynamicLinear(Int8Linear):
    """Int8Linear whose activations are rounded to int8 too (W8A8), one scale per block of 32 values, per call.

    The rounding is the same for every input length (a prompt, a decode step), so a text scores the same in one
    call as token by token; a decode step's products run in integers (`cpu_kernels.gemv_w8a8`).
    """

    def one_row(self, row: torch.Tensor) -> torch.Tensor:
        return cpu_kernels.gemv_w8a8(row, self.qweight, self.scales)  # rounds the row itself

    rounded = staticmethod(cpu_kernels.quantize_blocks)

    def extra_repr(self) -> str:
        return super().extra_repr() + ", activations int8 per block of 32"


class QuantizedEmbedding(nn.Module):
    """The embedding table as int8 rows: looking up a token dequantizes only its row.

    With `shared=True` the rows are the output projection's (tied, stored once: the int8 modes); otherwise the
    table is this module's own (int4 mode: its output projection is int4, too coarse for input embeddings).
    """

    def __init__(self, table: Int8Linear, shared: bool):
        super().__init__()
        if shared:
            self._shared = [table]  # a list, so the buffers are not registered twice
        else:
            self.table = table

    def rows_of(self) -> Int8Linear:
        return self._shared[0] if hasattr(self, "_shared") else self.table

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        table = self.rows_of()
        rows = table.qweight[input_ids]  # (B, T, D) int8
        return rows.float() * table.scales[input_ids][..., None]  # (B, T, D) float32


LAYER_KINDS = {"int8": Int8Linear.from_linear, "int8-dynamic": Int8DynamicLinear.from_linear, "int4": Int4Linear}
# (weights only: the model itself runs in float32, which the kernels take)


def quantize(model, mode: str = "int8"):
    """Quantize a causal LM's (or PaliGemma's) decoder in place: its linear layers and the tied output projection.

    The rest of the model (norms, RoPE, the vision tower) runs in float32, which the kernels take; it is a small
    part of the bytes. Returns the model, in eval mode; a quantized model is for decoding only (no training, no
    save_pretrained).
    """
    if mode not in MODES:
        raise ValueError(f"quantize mode must be one of {MODES}, got {mode!r}")
    language_model = getattr(model, "language_model", model)
    if getattr(language_model, "quantized", None):
        raise ValueError(f"this model is already quantized ({language_model.quantized})")
    if next(language_model.parameters()).device.type != "cpu":
        raise ValueError("quantize() targets CPU decoding; the model is on "
                         f"{next(language_model.parameters()).device}")
    model.to(torch.float32)
    stack_projections(language_model, LAYER_KINDS[mode])  # q/k/v and gate/up: one product each
    cpu_kernels.replace_linear_layers(language_model, LAYER_KINDS[mode])  # the others (o, down)
    # the output projection: 262,144 x 640 in Gemma 3 270M, 63 % of its weights, read for every token
    embedding = language_model.model.embed_tokens.weight
    head = LAYER_KINDS[mode](language_model.lm_head)
    shared = isinstance(head, Int8Linear) and language_model.lm_head.weight is embedding
    table = head if shared else Int8Linear(*quantize_int8(embedding))
    language_model.lm_head = head
    language_model.model.embed_tokens = QuantizedEmbedding(table, shared)
    language_model.quantized = mode
    return model.eval()
