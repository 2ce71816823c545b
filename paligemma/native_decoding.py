"""A whole decode step in C for a CPU: `generate(..., compile="native")`.

The compiled torch step (`static_decoding.decode_step`) spends about as long between its matrix products as in
them (notebook 14's profile: guard checks, inductor's Python wrapper calling each kernel, the attention operator's
set-up). `decode_step.c` does the same work, layer by layer, in one call and one OpenMP parallel region, through
the same kernels (`cpu_kernels.c`). It reads the weights where the model keeps them and writes keys and values
into the same preallocated cache, so the prompt still runs through the torch model and `static_decoding`'s loop
stays as it is: only the step changes.

It covers what it was written for: one row (batch 1) of a Gemma 1, 2 or 3 decoder (PaliGemma's included), in
float32 or quantized by `quantize` (any mode), on a CPU where the kernels build. `unsupported_reason` says why
not otherwise.
"""

from __future__ import annotations

import ctypes

import torch
from torch import nn

from . import cpu_kernels
from .modeling_gemma2 import Gemma2DecoderLayer
from .quantization import Int4Linear, Int8DynamicLinear, Int8Linear, QuantizedEmbedding
from .stacked_linear import StackedPart

_pointer, _size = ctypes.c_void_p, ctypes.c_int64
FORMATS = {None: 0, "int8": 1, "int8-dynamic": 2, "int4": 3}  # language_model.quantized -> decode_step.c's enum
LAYER_TYPES = {None: (nn.Linear, cpu_kernels.KernelLinear), "int8": (Int8Linear,),
               "int8-dynamic": (Int8DynamicLinear,), "int4": (Int4Linear,)}


class _Matrix(ctypes.Structure):  # decode_step.c's pg_matrix, field for field
    _fields_ = [("weights", _pointer), ("scales", _pointer), ("rows", _size)]


class _Layer(ctypes.Structure):  # pg_layer
    _fields_ = [("qkv", _Matrix * 3), ("o", _Matrix), ("gate_up", _Matrix * 2), ("down", _Matrix),
                ("input_norm", _pointer), ("attention_output_norm", _pointer), ("mlp_input_norm", _pointer),
                ("mlp_output_norm", _pointer), ("q_norm", _pointer), ("k_norm", _pointer), ("inv_freq", _pointer),
                ("keys", _pointer), ("values", _pointer), ("slots", _size)]


class _Model(ctypes.Structure):  # pg_model
    _fields_ = [("format", _size), ("layers", _size), ("hidden", _size), ("heads", _size), ("kv_heads", _size),
                ("head_dim", _size), ("intermediate", _size), ("vocab", _size), ("eps", ctypes.c_float),
                ("embed_scale", ctypes.c_float), ("attention_scale", ctypes.c_float),
                ("attention_cap", ctypes.c_float), ("final_cap", ctypes.c_float), ("embed_rows", _pointer),
                ("embed_scales", _pointer), ("final_norm", _pointer), ("head", _Matrix),
                ("layer", ctypes.POINTER(_Layer))]


def gemma1_norms(layer) -> dict:
    """Gemma 1: a norm before the attention, one before the MLP (named post_attention_layernorm), none after."""
    return {"input_norm": layer.input_layernorm, "attention_output_norm": None,
            "mlp_input_norm": layer.post_attention_layernorm, "mlp_output_norm": None}


def sandwich_norms(layer) -> dict:
    """Gemma 2 and 3: a norm before and after each block (post_attention_layernorm normalises the attention's
    output)."""
    return {"input_norm": layer.input_layernorm, "attention_output_norm": layer.post_attention_layernorm,
            "mlp_input_norm": layer.pre_feedforward_layernorm, "mlp_output_norm": layer.post_feedforward_layernorm}


def _norms(layer) -> dict:
    return sandwich_norms(layer) if isinstance(layer, Gemma2DecoderLayer) else gemma1_norms(layer)


def _rope_for(model, layer) -> torch.Tensor:
    """The layer's RoPE speeds: Gemma 3's local layers have their own rotary embedding (base 10k)."""
    if layer.attention_type == "sliding_attention" and hasattr(model, "rotary_emb_local"):
        return model.rotary_emb_local.inv_freq
    return model.rotary_emb.inv_freq


def pieces(block, names: tuple[str, ...]) -> list[nn.Module]:
    """The layers computing block's `names`, in order: the one stacked layer `quantize` made of them (what
    `apply_each` multiplies by), or each layer on its own."""
    parts = [getattr(block, name) for name in names]
    stack = getattr(parts[0], "stack", None)
    if all(isinstance(part, StackedPart) and part.stack is stack and part.index == i for i, part in enumerate(parts)) \
            and len(stack.sizes) == len(names):
        return [stack.layer]
    return parts


def _matrices(language_model) -> list[nn.Module]:
    """Every layer whose weights the step reads: per decoder layer q/k/v, o, gate/up, down; then the output head."""
    found = []
    for layer in language_model.model.layers:
        found += pieces(layer.self_attn, ("q_proj", "k_proj", "v_proj")) + [layer.self_attn.o_proj]
        found += pieces(layer.mlp, ("gate_proj", "up_proj")) + [layer.mlp.down_proj]
    return found + [language_model.lm_head]


def unsupported_reason(language_model) -> str | None:
    """Why the native step cannot run this Gemma decoder here, or None when it can."""
    mode = getattr(language_model, "quantized", None)
    model, config = language_model.model, language_model.config
    if not cpu_kernels.available():
        return f"the CPU kernels are not available: {cpu_kernels.unavailable_reason()}"
    if model.norm.weight.device.type != "cpu":
        return f"the native decode step runs on the CPU, not {model.norm.weight.device}"
    if mode is None and model.embed_tokens.weight.dtype != torch.float32:
        return (f"the native decode step computes in float32: a {model.embed_tokens.weight.dtype} model would not "
                "get its own numbers (use float32, or quantize it)")
    if mode is not None and not isinstance(model.embed_tokens, QuantizedEmbedding):
        return "the quantized model's embedding table is not quantize()'s"
    for layer in _matrices(language_model):
        if not isinstance(layer, LAYER_TYPES[mode]) or getattr(layer, "bias", None) is not None:
            return f"the native decode step needs {mode or 'float32'} layers without bias; found {layer}"
        if mode is None and not (layer.weight.dtype == torch.float32 and layer.weight.is_contiguous()):
            return f"the native decode step reads float32 weights row by row; found {layer.weight.dtype} {layer}"
    first = model.layers[0].self_attn
    for size, name in [(config.hidden_size, "hidden_size"), (first.num_heads * first.head_dim, "heads * head_dim"),
                       (config.intermediate_size, "intermediate_size")]:
        if size % cpu_kernels.BLOCK:
            return f"{name} ({size}) must be a multiple of {cpu_kernels.BLOCK} for the kernels"
    eps = model.norm.eps
    for i, layer in enumerate(model.layers):
        norms = [norm for norm in _norms(layer).values() if norm is not None]
        norms += [getattr(layer.self_attn, name) for name in ("q_norm", "k_norm") if hasattr(layer.self_attn, name)]
        if any(norm.eps != eps for norm in norms):
            return f"layer {i}: its norms' eps differ from the final norm's ({eps}); the native step takes one"
    return None


def check_native_request(language_model, batch: int) -> None:
    """Raise ValueError, with the reason, when generate(..., compile="native") cannot run (before any work)."""
    if batch != 1:
        raise ValueError(f'compile="native" decodes one row at a time; got a batch of {batch} (loop over the rows, '
                         'or use compile=True)')
    reason = unsupported_reason(language_model)
    if reason is not None:
        raise ValueError(f'compile="native": {reason}')


def _matrix(layer: nn.Module) -> _Matrix:
    """A layer's weights as decode_step.c reads them (the tensors stay the layer's own: no copy)."""
    if isinstance(layer, Int4Linear):
        return _Matrix(layer.rows.data_ptr(), None, layer.out_features)
    if isinstance(layer, Int8Linear):
        return _Matrix(layer.qweight.data_ptr(), layer.scales.data_ptr(), layer.out_features)
    return _Matrix(layer.weight.data_ptr(), None, layer.out_features)


def _matrix_array(layers: list[nn.Module], size: int):
    array = (_Matrix * size)()
    for i, layer in enumerate(layers):
        array[i] = _matrix(layer)
    return array


class NativeDecodeStep:
    """decode_step.c's pg_decode_step for one model and one preallocated cache, called as the torch step is.

    Built after the prefill (the cache's buffers exist then); holds every tensor whose address it passed to C.
    """

    def __init__(self, language_model, kv_cache):
        reason = unsupported_reason(language_model)
        if reason is not None:
            raise ValueError(reason)
        model, config = language_model.model, language_model.config
        first = model.layers[0].self_attn
        keep = []  # tensors whose addresses C holds and that are not the model's own: alive as long as this

        def address(tensor: torch.Tensor | None) -> int | None:
            if tensor is None:
                return None
            tensor = tensor.detach().float().contiguous()
            keep.append(tensor)
            return tensor.data_ptr()

        layers = (_Layer * len(model.layers))()
        for i, layer in enumerate(model.layers):
            keys, values = kv_cache.key_cache[i], kv_cache.value_cache[i]
            if keys.shape[0] != 1 or keys.dtype != torch.float32 \
                    or not (keys.is_contiguous() and values.is_contiguous()):
                raise ValueError(f"the native decode step needs a float32 cache of one row; layer {i} holds "
                                 f"{tuple(keys.shape)} {keys.dtype}")
            attention, mlp = layer.self_attn, layer.mlp
            norms = {name: None if norm is None else address(norm.weight) for name, norm in _norms(layer).items()}
            layers[i] = _Layer(
                qkv=_matrix_array(pieces(attention, ("q_proj", "k_proj", "v_proj")), 3), o=_matrix(attention.o_proj),
                gate_up=_matrix_array(pieces(mlp, ("gate_proj", "up_proj")), 2), down=_matrix(mlp.down_proj),
                **norms, q_norm=address(getattr(getattr(attention, "q_norm", None), "weight", None)),
                k_norm=address(getattr(getattr(attention, "k_norm", None), "weight", None)),
                inv_freq=address(_rope_for(model, layer)), keys=keys.data_ptr(), values=values.data_ptr(),
                slots=keys.shape[2])
        mode = getattr(language_model, "quantized", None)
        if mode is None:
            embed_rows, embed_scales = model.embed_tokens.weight, None
        else:
            table = model.embed_tokens.rows_of()
            embed_rows, embed_scales = table.qweight, table.scales
        self.vocab = language_model.lm_head.out_features
        self._model = _Model(
            format=FORMATS[mode], layers=len(model.layers), hidden=config.hidden_size, heads=first.num_heads,
            kv_heads=first.num_kv_heads, head_dim=first.head_dim, intermediate=config.intermediate_size,
            vocab=self.vocab, eps=model.norm.eps, embed_scale=config.embed_scale, attention_scale=first.scaling,
            attention_cap=getattr(first, "softcap", None) or 0.0,
            final_cap=getattr(config, "final_logit_softcapping", None) or 0.0,
            embed_rows=embed_rows.data_ptr(), embed_scales=None if embed_scales is None else embed_scales.data_ptr(),
            final_norm=address(model.norm.weight), head=_matrix(language_model.lm_head), layer=layers)
        self._layers, self._keep = layers, keep
        self._model_itself = language_model  # (its weights and the cache: what the other addresses point into)
        self._cache = kv_cache
        self._function = cpu_kernels._library().pg_decode_step

    def __call__(self, language_model, tokens, position_ids, cache_position, key_mask, kv_cache) -> torch.Tensor:
        """The torch step's arguments (tokens, position_ids (1, 1), cache_position (1,), key_mask (1, L) bool);
        float32 logits (1, vocab). The model and cache must be the ones this step was built for.

        C trusts what it is given, so what could send it outside its buffers is checked here (a few µs)."""
        if language_model is not self._model_itself or kv_cache is not self._cache:
            raise ValueError("this NativeDecodeStep was built for another model or cache; build one for these")
        slots = kv_cache.max_length
        if tuple(tokens.shape) != (1, 1) or tuple(position_ids.shape) != (1, 1) or cache_position.numel() != 1 \
                or tuple(key_mask.shape) != (1, slots) or key_mask.dtype != torch.bool:
            raise ValueError(f"the native decode step takes one token: tokens and position_ids (1, 1), "
                             f"cache_position (1,), a bool key_mask (1, {slots}); got {tuple(tokens.shape)}, "
                             f"{tuple(position_ids.shape)}, {tuple(cache_position.shape)}, {tuple(key_mask.shape)} "
                             f"{key_mask.dtype}")
        token, slot, position = int(tokens), int(cache_position), int(position_ids)
        if not (0 <= token < self.vocab and 0 <= slot < slots and position >= 0):
            raise ValueError(f"token {token} must lie in [0, {self.vocab}), cache_position {slot} in [0, {slots}), "
                             f"position {position} be >= 0")
        tokens, position_ids = tokens.long().contiguous(), position_ids.long().contiguous()
        cache_position, key_mask = cache_position.long().contiguous(), key_mask.contiguous()
        logits = torch.empty(1, self.vocab)
        self._function(ctypes.byref(self._model), tokens.data_ptr(), position_ids.data_ptr(),
                       cache_position.data_ptr(), key_mask.data_ptr(), key_mask.shape[1], logits.data_ptr(),
                       torch.get_num_threads())
        return logits
