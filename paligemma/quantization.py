r"""Quantized decoding: weights stored in 8 or 4 bits, so each generated token reads fewer bytes.

Decoding a token reads every weight once (notebook 11), so its speed is bounded by bytes of weights per
token over memory bandwidth: halving the bytes can double the tokens per second. Three modes:

- "int8": int8 weights per output channel: for row $r$ of $W$, $s_r = \max_j |W_{rj}| / 127$ and
  $q_{rj} = \mathrm{round}(W_{rj} / s_r)$. Weight-only: the activations stay bfloat16 and
  $x W^\top \approx (x\, q^\top) \odot s$ runs in torch's `_weight_int8pack_mm` (fast where the CPU has
  AVX-512; compute-bound on AVX2, where it is no faster than bfloat16).
- "int8-dynamic": the same weights, and in decode steps the token's activations are quantized too, on the
  fly (a scale from their own range), so the product runs in integers: fbgemm's `linear_dynamic` kernel,
  which reads int8 weights at close to memory speed on any x86 CPU (AVX2 or AVX-512). Long inputs (a
  prompt, a scored text) multiply float activations by the dequantized int8 weights instead. The price is
  quality: on AVX2 the kernel keeps activations to 7 bits, and Gemma's activations have a few very large
  channels, so decode steps lose precision (Gemma 3 270M: perplexity 14.4 against 13.15 in float32,
  scored token by token; the benchmark prints it next to the speed).
- "int4": groups of $G = 32$ weights of a row get 16 levels from their minimum $m$ to their maximum,
  $W \approx m + s\,q$ with $q \in [0, 15]$ (`_weight_int4pack_mm_for_cpu`, bfloat16 activations); the
  output projection stays int8 (its rows are also the input embedding).

`quantize(model, mode)` swaps every linear layer of the decoder, and the tied output projection, for a
quantized one; the tied embedding table keeps one int8 copy for its lookups. (torch 2.13 warns that its
quantized tensors, which fbgemm's kernel takes, will be removed in a future release; "int8" and "int4" do
not use them.)
"""

from __future__ import annotations

import warnings
import weakref

import torch
import torch.nn.functional as F
from torch import nn

MODES = ("int8", "int8-dynamic", "int4")
INT4_GROUP = 32
ROWS_QUANTIZED_ONE_BY_ONE = 8  # Int8DynamicLinear: up to this many rows (a batch of decode steps) one call each
_PACKED: dict[int, object] = {}  # fbgemm's packed weights by id (a TorchBind object cannot enter a compiled graph)
_OUT_FEATURES: dict[int, int] = {}


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

    def weight_bytes(self) -> int:
        """Bytes read per call: one per weight, plus the row scales (and the bias)."""
        bias = 0 if self.bias is None else self.bias.numel() * self.bias.element_size()
        return self.out_features * self.in_features + self.scales.numel() * self.scales.element_size() + bias

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

    def __init__(self, linear: nn.Linear, dtype: torch.dtype, group: int = INT4_GROUP, keep_reference: bool = False):
        super().__init__()
        if linear.bias is not None:
            raise ValueError("Int4Linear: Gemma's linear layers have no bias; this one does")
        self.in_features, self.out_features, self.group = linear.in_features, linear.out_features, group
        q, scale, low = quantize_int4(linear.weight, group)
        self.register_buffer("packed", torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1))
        # the kernel computes (q - 8) * scale + zero, so zero = minimum + 8 * scale; layout (groups, out, 2)
        self.register_buffer("scales_and_zeros", torch.stack([scale, low + 8 * scale], -1).transpose(0, 1)
                             .contiguous().to(dtype))
        # the packed layout cannot be unpacked on the CPU: keep the values when asked (tests), as bytes
        self._reference = (q.to(torch.uint8), scale, low) if keep_reference else None

    def weight_bytes(self) -> int:
        return self.packed.numel() * self.packed.element_size() + \
            self.scales_and_zeros.numel() * self.scales_and_zeros.element_size()

    def dequantized(self) -> torch.Tensor:
        if self._reference is None:
            raise ValueError("this Int4Linear was built without keep_reference=True: its packed weights cannot "
                             "be unpacked on the CPU")
        q, scale, low = self._reference
        grouped = q.view(self.out_features, -1, self.group).float()
        return (grouped * scale[..., None] + low[..., None]).view(self.out_features, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).to(self.scales_and_zeros.dtype)
        out = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, self.packed, self.group, self.scales_and_zeros)
        return out.to(x.dtype).view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int4 groups of {self.group}"


def _int8_dynamic_linear(x: torch.Tensor, key: int) -> torch.Tensor:
    """(M, in) float32 -> (M, out): fbgemm quantizes x per call, multiplies in int8, rescales to float32."""
    return torch.ops.quantized.linear_dynamic(x, _PACKED[key], True)  # reduce_range: 7-bit x, no overflow


# An operator torch.compile can call from its graph (fbgemm's packed weights, a TorchBind object, cannot be an
# input of one, hence the integer key). `Library.impl` rather than `custom_op`: the latter's Python wrapper costs
# about as much per call as a small layer's matmul.
_LIBRARY = torch.library.Library("paligemma", "DEF")
_LIBRARY.define("int8_dynamic_linear(Tensor x, int key) -> Tensor")
_LIBRARY.impl("int8_dynamic_linear", _int8_dynamic_linear, "CPU")


@torch.library.register_fake("paligemma::int8_dynamic_linear")
def _(x: torch.Tensor, key: int) -> torch.Tensor:
    return x.new_empty(x.shape[0], _OUT_FEATURES[key])


class Int8DynamicLinear(Int8Linear):
    """Int8Linear whose activations are quantized too, per call (W8A8 dynamic), through fbgemm's kernel."""

    def __init__(self, qweight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None = None,
                 keep_rows: bool = False):
        super().__init__(qweight, scales.float(), bias)
        zeros = torch.zeros(qweight.shape[0], dtype=torch.long)
        with warnings.catch_warnings():  # torch 2.13 announces that quantized tensors will go: see the module doc
            warnings.simplefilter("ignore", UserWarning)
            weights = torch._make_per_channel_quantized_tensor(qweight, scales.double(), zeros, 0)
        self.key = id(self)
        _PACKED[self.key] = torch.ops.quantized.linear_prepack(weights, None if bias is None else bias.float())
        _OUT_FEATURES[self.key] = qweight.shape[0]
        weakref.finalize(self, _PACKED.pop, self.key, None)
        if not keep_rows:  # fbgemm keeps its own packed copy; only the tied table's lookups need the rows
            self.qweight = None

    @classmethod
    def from_linear(cls, linear: nn.Linear, dtype: torch.dtype = torch.float32,
                    keep_rows: bool = False) -> Int8DynamicLinear:
        q, scale = quantize_int8(linear.weight)
        return cls(q, scale, None if linear.bias is None else linear.bias.detach(), keep_rows)

    def dequantized(self) -> torch.Tensor:
        return _PACKED[self.key].unpack()[0].dequantize()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).float()  # (B*T, in)
        if flat.shape[0] == 1:  # a decode step: one token, quantized with its own scale
            out = torch.ops.paligemma.int8_dynamic_linear(flat, self.key)
        elif flat.shape[0] <= ROWS_QUANTIZED_ONE_BY_ONE:  # a small batch: one scale per row, not one for all
            out = torch.cat([torch.ops.paligemma.int8_dynamic_linear(row[None], self.key) for row in flat])
        else:  # a prompt or a scored text: fbgemm would give all rows one scale, which one outlier token (often
            out = F.linear(flat, self.dequantized())  # <bos>) makes coarse for every other: float activations
        return out.to(x.dtype).view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return super().extra_repr() + ", activations quantized per call"


class QuantizedEmbedding(nn.Module):
    """The tied table as int8 rows: looking up a token dequantizes only its row; `head` reuses the same bytes."""

    def __init__(self, head: Int8Linear):
        super().__init__()
        self.head = [head]  # a list, so the buffers are not registered twice

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        head = self.head[0]
        rows = head.qweight[input_ids]  # (B, T, D) int8
        return rows.to(head.scales.dtype) * head.scales[input_ids][..., None]


LAYER_KINDS = {"int8": Int8Linear.from_linear, "int8-dynamic": Int8DynamicLinear.from_linear, "int4": Int4Linear}
ACTIVATIONS = {"int8": torch.bfloat16, "int8-dynamic": torch.float32, "int4": torch.bfloat16}


def quantize(model, mode: str = "int8"):
    """Quantize a causal LM's (or PaliGemma's) decoder in place: its linear layers and the tied output projection.

    The rest of the model (norms, RoPE, the vision tower) runs in the mode's activation dtype: float32 for
    "int8-dynamic" (its kernel takes float32), bfloat16 for the other two. Returns the model, in eval mode; a quantized
    model is for decoding only (no training, no save_pretrained).
    """
    if mode not in MODES:
        raise ValueError(f"quantize mode must be one of {MODES}, got {mode!r}")
    if mode == "int8-dynamic" and "fbgemm" not in torch.backends.quantized.supported_engines:
        raise ValueError("quantize mode 'int8-dynamic' needs torch's fbgemm kernels (x86 CPUs); use 'int8'")
    dtype = ACTIVATIONS[mode]
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
                    setattr(parent, name, LAYER_KINDS[mode](child, dtype))
    # the output projection: 262,144 x 640 in Gemma 3 270M, 63 % of its weights; int8 in every mode (its rows
    # are also the embedding, which int4 groups would blur for every input token)
    if mode == "int8-dynamic":
        head = Int8DynamicLinear.from_linear(language_model.lm_head, dtype, keep_rows=True)
    else:
        head = Int8Linear.from_linear(language_model.lm_head, dtype)
    language_model.lm_head = head
    language_model.model.embed_tokens = QuantizedEmbedding(head)
    language_model.quantized = mode
    return model.eval()
