"""`python -m paligemma generate --model FILE.gguf|gemma-3-270m|GEMMA_DIR --prompt "..."`: a decoder alone, text in,
text out, streamed (the real Gemma 3 270M of notebook 13, or any Gemma folder or GGUF file)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from .cli_checks import streamed_decoding_options
from .gguf_loading import GEMMA3_270M, is_gguf, resolve_model_file

TEXT_MODEL_TYPES = ("gemma", "gemma2", "gemma3_text")


def is_text_model(model: Path | None) -> bool:
    """A GGUF file, the short name of the installed real model, or a folder whose config.json is a Gemma LM."""
    if model is None:
        return False
    if str(model) == GEMMA3_270M or is_gguf(model):
        return True
    config = model / "config.json"
    try:
        d = json.loads(config.read_text()) if config.is_file() else None  # is_file: a regular file, never a FIFO
    except (OSError, ValueError):
        return False  # the PaliGemma loader reports what is wrong with the folder
    return isinstance(d, dict) and d.get("model_type") in TEXT_MODEL_TYPES


def text_tokenizer(path: Path):
    """The tokenizer a GGUF file carries, or a checkpoint folder's tokenizer.json."""
    if is_gguf(path):
        from .gguf_tokenizer import gguf_tokenizer
        return gguf_tokenizer(path)
    if not (path / "tokenizer.json").is_file():  # tokenizers' own error is a bare Exception without the path
        raise FileNotFoundError(f"{path} has no tokenizer.json")
    from tokenizers import Tokenizer
    return Tokenizer.from_file(str(path / "tokenizer.json"))


def load_text_model(args: argparse.Namespace, dtype: torch.dtype | None):
    """(model, tokenizer) of --model; every loading problem ends as one `error:` line."""
    from . import GemmaForCausalLM

    source = args.model
    try:
        path = resolve_model_file(source)
        if is_gguf(path) and not path.is_file():
            raise FileNotFoundError(f"GGUF file {path} does not exist")
        model = GemmaForCausalLM.from_pretrained(path, dtype=dtype, device=torch.device(args.device))
        tokenizer = text_tokenizer(path)
    except torch.OutOfMemoryError:
        raise SystemExit(f"error: not enough memory on {args.device} to load {source}") from None
    except (OSError, ValueError, TypeError) as err:  # CheckpointError, GGUFError and config errors are ValueErrors
        raise SystemExit(f"error: cannot load {source}: {err}") from None
    return apply_quantize(model, args), tokenizer


def apply_quantize(model, args: argparse.Namespace):
    """--quantize MODE: the decoder's weights in 8 or 4 bits (CPU only; --dtype is then the mode's)."""
    if args.quantize is None:
        return model
    from .quantization import quantize
    if args.dtype is not None:
        raise SystemExit("error: --quantize sets the activations' dtype itself; leave out --dtype")
    try:
        return quantize(model, args.quantize)
    except ValueError as err:
        raise SystemExit(f"error: --quantize {args.quantize}: {err}") from None


def run_text_generation(args: argparse.Namespace, dtype: torch.dtype | None) -> int:
    """Print the prompt, then stream the model's continuation of it."""
    from .text_generation import generate_text

    for flag, value in (("--image", args.image), ("--scene-seed", args.scene_seed), ("--save-scene", args.save_scene)):
        if value is not None:
            raise SystemExit(f"error: {flag} is for image models; {args.model} is a text-only Gemma")
    if args.prompt is None:
        raise SystemExit(f'error: {args.model} is a text model: give it a --prompt "..." to continue')
    model, tokenizer = load_text_model(args, dtype)
    print(args.prompt, end="", flush=True)
    try:
        generate_text(model, tokenizer, [args.prompt], **streamed_decoding_options(args))
    except ValueError as err:
        raise SystemExit(f"\nerror: {err}") from None
    print()
    return 0
