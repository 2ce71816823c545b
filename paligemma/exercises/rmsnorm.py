"""Checkers for the rmsnorm notebook's exercises."""

__all__: list[str] = []
