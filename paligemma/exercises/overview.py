"""Checkers for the overview notebook's exercises."""

__all__: list[str] = []
