"""Checkers for the multimodal notebook's exercises."""

__all__: list[str] = []
