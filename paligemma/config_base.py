"""What every config dataclass shares: reading config.json, and checking each field's type and range."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import fields
from pathlib import Path
from typing import Any

from .files import read_json_object


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class ConfigMixin:
    """`from_dict` / `from_pretrained` / `to_dict` and field checks shared by every config dataclass."""

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        """Build a config from a config.json dictionary: unknown keys are ignored, known ones validated."""
        if not isinstance(d, dict):
            raise TypeError(f"{cls.__name__}.from_dict expects a dict, got {type(d).__name__}")
        return cls._build(d)

    @classmethod
    def _build(cls, d: dict[str, Any]):
        d = cls._normalise_dict(dict(d))
        names = {f.name for f in fields(cls)}
        # A null in config.json means "use the default" (e.g. "head_dim": null), not None.
        return cls(**{k: v for k, v in d.items() if k in names and v is not None})

    @classmethod
    def _normalise_dict(cls, d: dict[str, Any]) -> dict[str, Any]:
        """Hook for subclasses: map alternative spellings of keys to the field names."""
        return d

    @classmethod
    def from_pretrained(cls, path: str | Path):
        """Read `config.json` from a checkpoint folder (or the file itself)."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"checkpoint folder {path} does not exist")
        file = path / "config.json" if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(f"no config.json found at {path}")
        return cls.from_dict(read_json_object(file, "config.json"))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # Field checks: each raises ValueError naming the class, the field and the value.
    def _fail(self, name: str, expected: str) -> None:
        raise ValueError(f"{type(self).__name__}.{name} must be {expected}, got {getattr(self, name)!r}")

    def _check_positive(self, *names: str) -> None:
        for name in names:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                self._fail(name, "a positive integer")

    def _check_token_id(self, name: str, vocab_size: int) -> None:
        """None, an id in [0, vocab_size), or (eos) a list of such ids."""
        value = getattr(self, name)
        ids = value if isinstance(value, list) else [value]
        if value is None:
            return
        if not ids or any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < vocab_size for i in ids):
            self._fail(name, f"a token id in [0, {vocab_size}) or null" + (" (or a list of them)"
                                                                          if name == "eos_token_id" else ""))

    def _check_number(self, name: str, low: float | None = None, high: float | None = None,
                      low_inclusive: bool = True, optional: bool = False) -> None:
        """A finite real number within [low, high] (or (low, high] when low_inclusive is False)."""
        value = getattr(self, name)
        if optional and value is None:
            return
        ok = _is_number(value) and math.isfinite(value)
        if ok and low is not None:
            ok = value >= low if low_inclusive else value > low
        if ok and high is not None:
            ok = value <= high
        if not ok:
            bounds = {(True, True): "[{}, {}]", (False, True): "({}, {}]"}
            if low is not None and high is not None:
                expected = "a number in " + bounds[(low_inclusive, True)].format(low, high)
            elif low is not None:
                expected = f"a finite number {'>=' if low_inclusive else '>'} {low}"
            else:
                expected = "a finite number"
            self._fail(name, expected + (" or null" if optional else ""))

    def _check_bool(self, *names: str) -> None:
        for name in names:
            if not isinstance(getattr(self, name), bool):
                self._fail(name, "true or false")

    def _check_choice(self, name: str, choices: tuple, why: str = "") -> None:
        if getattr(self, name) not in choices:
            self._fail(name, f"one of {choices}{why}")
