"""Gemma, Gemma 2 and Gemma 3 GGUF files -> a Hugging Face config.json dict and Hugging Face-named tensors.

llama.cpp's conventions, undone here (facts from its convert_hf_to_gguf.py and llama-model.cpp):
- dims are stored reversed (handled by `gguf_file`: shapes there are already in torch order);
- every Gemma RMSNorm weight (names ending in `norm.weight`, q_norm / k_norm included) is stored as 1 + w,
  because Gemma scales by (1 + w) and llama.cpp by w; we subtract the 1 back, in float32;
- there is no `output.weight`: the output projection is tied to `token_embd`, so there is no lm_head;
- Gemma uses the NeoX ("half-split") RoPE in llama.cpp, so Q and K rows are NOT permuted (Llama's are).
- `ffn_norm` is Gemma 1's post_attention_layernorm (the norm before the MLP), but Gemma 2/3's
  pre_feedforward_layernorm; their post_attention_layernorm is llama.cpp's `post_attention_norm`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch

from .gguf_file import GGUFError, GGUFFile, read_gguf
from .gguf_quants import DEQUANTIZERS, dequantize

ARCHITECTURES = {"gemma": ("gemma", "GemmaForCausalLM"), "gemma2": ("gemma2", "Gemma2ForCausalLM"),
                 "gemma3": ("gemma3_text", "Gemma3ForCausalLM")}
_REQUIRED = object()

# llama.cpp block tensor -> Hugging Face module path inside model.layers.N
LAYER_TENSORS = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
                 "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj",
                 "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
GEMMA1_TENSORS = {"ffn_norm": "post_attention_layernorm"}
SANDWICH_TENSORS = {"post_attention_norm": "post_attention_layernorm", "ffn_norm": "pre_feedforward_layernorm",
                    "post_ffw_norm": "post_feedforward_layernorm"}  # Gemma 2 and 3
QK_NORM_TENSORS = {"attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm"}  # Gemma 3


def _architecture(gguf: GGUFFile) -> str:
    arch = gguf.metadata.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise gguf.error(f"architecture {arch!r} is not a Gemma; this loader reads {', '.join(ARCHITECTURES)}")
    return arch


def _reader(gguf: GGUFFile, arch: str):
    def key(name: str, default=_REQUIRED):
        full = f"{arch}.{name}"
        if full in gguf.metadata:
            return gguf.metadata[full]
        if default is _REQUIRED:
            raise gguf.error(f"metadata key {full!r} is missing")
        return default
    return key


SIZE_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "head_dim", "max_position_embeddings")


def _check_sizes(gguf: GGUFFile, config: dict) -> None:
    for name in SIZE_FIELDS:  # a list here would be a per-layer value, which no Gemma file has
        value = config[name]
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise gguf.error(f"{name} must be a positive integer, the metadata gives {value!r}")
    if not isinstance(config["rms_norm_eps"], float) or not config["rms_norm_eps"] > 0:
        raise gguf.error(f"rms_norm_eps must be a positive float, the metadata gives {config['rms_norm_eps']!r}")
    if config["num_attention_heads"] % config["num_key_value_heads"]:
        raise gguf.error(f"num_attention_heads {config['num_attention_heads']} is not a multiple of "
                         f"num_key_value_heads {config['num_key_value_heads']}")


def gemma_config(gguf: GGUFFile) -> dict:
    """The transformers config.json dict a GGUF file's metadata describes (Gemma 1, 2 or 3)."""
    arch = _architecture(gguf)
    key, meta = _reader(gguf, arch), gguf.metadata
    model_type, class_name = ARCHITECTURES[arch]
    hidden, heads, layers = key("embedding_length"), key("attention.head_count"), key("block_count")
    head_dim = key("attention.key_length", None)
    if head_dim is None and isinstance(hidden, int) and isinstance(heads, int) and heads > 0:
        head_dim = hidden // heads  # llama.cpp's default: n_embd / n_head
    if key("attention.value_length", head_dim) != head_dim:
        raise gguf.error(f"{arch}.attention.value_length differs from key_length {head_dim}; Gemma needs them equal")
    tokens = meta.get("tokenizer.ggml.tokens")
    vocab = len(tokens) if tokens else gguf.tensor("token_embd.weight").shape[0]
    config = {
        "architectures": [class_name], "model_type": model_type, "vocab_size": vocab, "hidden_size": hidden,
        "intermediate_size": key("feed_forward_length"), "num_hidden_layers": layers,
        "num_attention_heads": heads, "num_key_value_heads": key("attention.head_count_kv", heads),
        "head_dim": head_dim, "max_position_embeddings": key("context_length"),
        "rms_norm_eps": key("attention.layer_norm_rms_epsilon"), "hidden_activation": "gelu_pytorch_tanh",
        "attention_bias": False, "tie_word_embeddings": "output.weight" not in gguf.tensors,
        "bos_token_id": meta.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": meta.get("tokenizer.ggml.eos_token_id"),
        "pad_token_id": meta.get("tokenizer.ggml.padding_token_id"),
    }
    _check_sizes(gguf, config)
    # Gemma 1 and 2 files carry no rope.freq_base: llama.cpp and transformers both use 10000 then.
    rope_theta = _number(gguf, key, "rope.freq_base", 10000.0)
    if arch == "gemma":
        config["rope_parameters"] = {"rope_type": "default", "rope_theta": rope_theta}
        return config
    # llama.cpp scales queries by 1/sqrt(head_dim), except for the 27B models (46 layers in Gemma 2, 62 in
    # Gemma 3): 1/sqrt(hidden / heads). transformers' GGUF loader leaves its own default (256) instead.
    big = layers == (46 if arch == "gemma2" else 62)
    config["query_pre_attn_scalar"] = hidden // heads if big else head_dim
    config.update(_gemma2_fields(gguf, key, layers, rope_theta) if arch == "gemma2"
                  else _gemma3_fields(gguf, key, layers, rope_theta))
    return config


def _number(gguf: GGUFFile, key, name: str, default=_REQUIRED) -> float | None:
    value = key(name, default)
    if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)):
        raise gguf.error(f"metadata {name!r} must be a number, not {value!r}")
    return None if value is None else float(value)


def _window(gguf: GGUFFile, key, default=_REQUIRED) -> int | None:
    window = key("attention.sliding_window", default)
    if window is not None and (not isinstance(window, int) or window <= 0):
        raise gguf.error(f"sliding_window must be a positive integer, the metadata gives {window!r}")
    return window


def _gemma2_fields(gguf: GGUFFile, key, layers: int, rope_theta: float) -> dict:
    """Soft caps (llama.cpp always writes them; its defaults are 50 and 30), and local / global layers in turn."""
    return {"rope_parameters": {"rope_type": "default", "rope_theta": rope_theta},
            "attn_logit_softcapping": _number(gguf, key, "attn_logit_softcapping", 50.0),
            "final_logit_softcapping": _number(gguf, key, "final_logit_softcapping", 30.0),
            "sliding_window": _window(gguf, key),
            "layer_types": ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers)]}


def _gemma3_fields(gguf: GGUFFile, key, layers: int, rope_theta: float) -> dict:
    """No attention cap; 5 local : 1 global layers; RoPE base 10000 locally, the file's (1e6) globally."""
    window = _window(gguf, key, None)  # no window written = every layer global (llama.cpp)
    global_rope = {"rope_type": "default", "rope_theta": rope_theta}
    if (scaling := key("rope.scaling.type", "none")) not in ("none", "linear"):
        raise gguf.error(f"gemma3.rope.scaling.type {scaling!r} is not supported (only linear)")
    if scaling == "linear":  # Gemma 3 4B and larger: positions / 8 on the global layers only
        global_rope = {"rope_type": "linear", "factor": _number(gguf, key, "rope.scaling.factor"),
                       "rope_theta": rope_theta}
    return {"sliding_window": window, "attn_logit_softcapping": None,
            "final_logit_softcapping": _number(gguf, key, "final_logit_softcapping", None),
            "layer_types": ["full_attention" if window is None or (i + 1) % 6 == 0 else "sliding_attention"
                            for i in range(layers)],
            "rope_parameters": {"full_attention": global_rope,
                                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}}


def expected_tensors(config: dict) -> dict[str, tuple[str, tuple[int, ...]]]:
    """{GGUF tensor name: (Hugging Face name, torch shape)} that a file with this config must hold."""
    hidden, head_dim, inter = config["hidden_size"], config["head_dim"], config["intermediate_size"]
    q_rows, kv_rows = config["num_attention_heads"] * head_dim, config["num_key_value_heads"] * head_dim
    shapes = {"attn_norm": (hidden,), "attn_q": (q_rows, hidden), "attn_k": (kv_rows, hidden),
              "attn_v": (kv_rows, hidden), "attn_output": (hidden, q_rows), "ffn_gate": (inter, hidden),
              "ffn_up": (inter, hidden), "ffn_down": (hidden, inter), "ffn_norm": (hidden,),
              "post_attention_norm": (hidden,), "post_ffw_norm": (hidden,),
              "attn_q_norm": (head_dim,), "attn_k_norm": (head_dim,)}
    per_layer = dict(LAYER_TENSORS)
    if config["model_type"] == "gemma":
        per_layer.update(GEMMA1_TENSORS)
    else:
        per_layer.update(SANDWICH_TENSORS)
    if config["model_type"] == "gemma3_text":
        per_layer.update(QK_NORM_TENSORS)
    embedding = (config["vocab_size"], hidden)
    table = {"token_embd.weight": ("model.embed_tokens.weight", embedding),
             "output_norm.weight": ("model.norm.weight", (hidden,))}
    if not config["tie_word_embeddings"]:
        table["output.weight"] = ("lm_head.weight", embedding)
    for layer in range(config["num_hidden_layers"]):
        for gguf_part, hf_part in per_layer.items():
            table[f"blk.{layer}.{gguf_part}.weight"] = (f"model.layers.{layer}.{hf_part}.weight", shapes[gguf_part])
    return table


def _describe(names, limit: int = 8) -> str:
    names = sorted(names)
    return ", ".join(names[:limit]) + (f" … and {len(names) - limit} more" if len(names) > limit else "")


def check_tensors(gguf: GGUFFile, table: dict[str, tuple[str, tuple[int, ...]]]) -> None:
    """Every expected tensor present, nothing else, shapes right, types decodable; else one error naming all."""
    problems = []
    if missing := set(table) - set(gguf.tensors):
        problems.append(f"missing tensors: {_describe(missing)}")
    if unexpected := set(gguf.tensors) - set(table):
        problems.append(f"unexpected tensors: {_describe(unexpected)}")
    wrong = [f"{name}: file {info.shape}, config {table[name][1]}" for name, info in gguf.tensors.items()
             if name in table and info.shape != table[name][1]]
    if wrong:
        problems.append("shape mismatches: " + "; ".join(wrong[:8]) + (" …" if len(wrong) > 8 else ""))
    types = [f"{name} ({info.type_name})" for name, info in gguf.tensors.items() if info.type_name not in DEQUANTIZERS]
    if types:
        problems.append(f"tensors of types this package cannot dequantize: {_describe(types)}")
    if problems:
        raise GGUFError(f"{gguf.path} is not a valid {gguf.metadata['general.architecture']} file: "
                        + " | ".join(problems))


def load_tensor(gguf: GGUFFile, name: str, dtype: torch.dtype, device=None) -> torch.Tensor:
    """One tensor dequantized into `dtype`, with llama.cpp's 1 + w undone on norm weights (in float32)."""
    if name.endswith("norm.weight"):
        return (dequantize(gguf, name, torch.float32, device) - 1.0).to(dtype)
    return dequantize(gguf, name, dtype, device)


def read_gemma_gguf(path: str | Path, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
                    ) -> tuple[dict, Iterator[tuple[str, torch.Tensor]]]:
    """(config.json dict, iterator of (Hugging Face name, tensor)) for a Gemma / Gemma 2 / Gemma 3 GGUF file.

    The file is checked whole first (architecture, metadata, every tensor's name, shape and type), so errors come
    from this call; the iterator then dequantizes one tensor at a time into `dtype` on `device`.
    """
    gguf = read_gguf(path)
    config = gemma_config(gguf)
    table = expected_tensors(config)
    check_tensors(gguf, table)

    def tensors() -> Iterator[tuple[str, torch.Tensor]]:
        for gguf_name, (hf_name, _) in table.items():
            yield hf_name, load_tensor(gguf, gguf_name, dtype, device)
    return config, tensors()
