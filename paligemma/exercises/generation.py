"""Checkers for the generation notebook's exercises."""

__all__: list[str] = []
