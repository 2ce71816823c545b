"""Checkers for the nano notebook's exercises."""

__all__: list[str] = []
