"""Checkers for the kv_cache notebook's exercises."""

__all__: list[str] = []
