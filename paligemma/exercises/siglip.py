"""Checkers for the siglip notebook's exercises."""

__all__: list[str] = []
