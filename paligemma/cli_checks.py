"""Argument checks shared by the command lines (paligemma, paligemma.nano, paligemma.benchmark).

Bad input ends as one line, `PROG: error: ...`, with exit status 2, never a traceback; and everything that
would fail late (an unwritable output file, a missing optional package) is checked before the slow work.
"""

from __future__ import annotations

import argparse
import io
import math
import tempfile
from pathlib import Path

import torch

MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed takes at most an unsigned 64-bit integer


class OneLineParser(argparse.ArgumentParser):
    """argparse, but an error is one line naming the problem (the usage is one `--help` away)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def usable_devices() -> list[str]:
    """The device names this machine can run the model on."""
    names = ["cpu"]
    if torch.cuda.is_available():
        names += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        names.append("mps")
    return names


def device_arg(value: str) -> str:
    """argparse type of --device: a device torch can run the model on here, else the list of those it can."""
    available = ", ".join(usable_devices())
    try:
        device = torch.device(value)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"{value!r} is not a device name (available here: {available})") from None
    if device.type == "meta":
        raise argparse.ArgumentTypeError(f"'meta' tensors hold no data, so nothing can run there "
                                         f"(available here: {available})")
    if str(device) not in usable_devices() and not (device.type == "cpu" and device.index in (None, 0)):
        reason = "PyTorch sees no CUDA GPU" if device.type == "cuda" and not torch.cuda.is_available() else \
            "not available on this machine"
        raise argparse.ArgumentTypeError(f"{value!r}: {reason} (available here: {available})")
    return value


def seed_arg(value: str) -> int:
    """argparse type of a random seed: an integer from 0 to 2**64 - 1."""
    seed = int_arg(value)
    if not 0 <= seed <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"{seed} is out of range: a seed is an integer from 0 to 2**64 - 1")
    return seed


def int_arg(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from None


def positive_int_arg(value: str) -> int:
    number = int_arg(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {number}")
    return number


def non_negative_int_arg(value: str) -> int:
    number = int_arg(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {number}")
    return number


def float_arg(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {value}")
    return number


def positive_float_arg(value: str) -> float:
    number = float_arg(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {value}")
    return number


def probability_arg(value: str) -> float:
    """argparse type of --top-p: a probability mass in (0, 1]."""
    number = float_arg(value)
    if not 0 < number <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return number


def writable_file_problem(path: Path) -> str | None:
    """Why `path` cannot be written (a missing or read-only folder, a folder in the way), or None.

    Permission bits say little to root, so this tries: it opens an existing file for appending (nothing is
    written to it) or creates and removes a hidden probe file beside it.
    """
    if path.is_dir():
        return f"{path} is a folder"
    if not path.parent.is_dir():
        return f"the folder {path.parent} does not exist"
    try:
        if path.exists():
            with open(path, "ab"):
                pass
        else:
            with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".write-test-"):
                pass
    except OSError as error:
        return f"cannot write there ({error.strerror or error})"
    return None


def image_format_problem(path: Path) -> str | None:
    """Why Pillow cannot save an RGB image under `path`'s extension, or None (a trial save in memory)."""
    from PIL import Image

    extension = path.suffix.lower()
    image_format = Image.registered_extensions().get(extension)
    if image_format is None or image_format not in Image.SAVE:
        return f"Pillow cannot write {extension or 'files without an extension'} (use .png, .jpg, .bmp, ...)"
    try:
        Image.new("RGB", (2, 2)).save(io.BytesIO(), format=image_format)
    except (OSError, ValueError, KeyError) as error:
        return f"Pillow cannot write an RGB image as {image_format}: {error}"
    return None


def streamed_decoding_options(args: argparse.Namespace) -> dict:
    """The generate command's decoding flags as keyword arguments of `generate` / `generate_text`, streaming the
    answer to stdout; sampling is on when any sampling flag is given."""
    sampling = args.temperature is not None or args.top_p is not None or args.top_k is not None
    return dict(max_new_tokens=args.max_new_tokens, do_sample=sampling,
                temperature=args.temperature if args.temperature is not None else 1.0, top_k=args.top_k,
                top_p=args.top_p, seed=args.seed, compile="native" if args.native else args.compile,
                on_token=lambda pieces: print(pieces[0], end="", flush=True))
