"""Checkers for the weights notebook's exercises."""

__all__: list[str] = []
