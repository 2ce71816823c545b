"""Reading a checkpoint folder's small files strictly: a malformed file is a CheckpointError naming it.

Every module that opens a file of a checkpoint folder (config.json, tokenizer.json, the safetensors index
and shards) goes through `regular_file` first: `open()` on a FIFO or a device would block or read forever.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded: a malformed file, or tensors that do not fit the model."""


def regular_file(path: str | Path, what: str) -> int:
    """The size in bytes of `path`, which must be a regular file (symlinks to one are fine, as in a hub cache)."""
    try:
        info = os.stat(path)  # follows symlinks
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {path} does not exist") from None
    except OSError as error:
        raise CheckpointError(f"cannot read {what} {path}: {error.strerror or error}") from None
    if not stat.S_ISREG(info.st_mode):
        kind = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file (a FIFO, socket or device?)"
        raise CheckpointError(f"{what} {path} is {kind}")
    return info.st_size


def read_json_object(path: str | Path, what: str) -> dict[str, Any]:
    """The object {...} a JSON file holds, e.g. read_json_object(folder / "config.json", "config file")."""
    regular_file(path, what)
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise CheckpointError(f"{what} {path} is not UTF-8 text (byte {error.start}): not a JSON file") from None
    except OSError as error:
        raise CheckpointError(f"cannot read {what} {path}: {error.strerror or error}") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{what} {path} is not valid JSON ({error.msg} at line {error.lineno} "
                              f"column {error.colno})") from None
    except RecursionError:
        raise CheckpointError(f"{what} {path} is not usable JSON (nested too deeply)") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{what} {path} holds a JSON {json_type(value)}, expected an object {{...}}")
    return value


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type, for error messages."""
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)
