"""Checkers for the rope notebook's exercises."""

__all__: list[str] = []
