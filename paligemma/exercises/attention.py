"""Checkers for the attention notebook's exercises."""

__all__: list[str] = []
