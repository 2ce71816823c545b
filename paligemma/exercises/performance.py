"""Checkers for the performance notebook's exercises."""

__all__: list[str] = []
