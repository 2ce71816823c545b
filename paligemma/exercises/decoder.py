"""Checkers for the decoder notebook's exercises."""

__all__: list[str] = []
