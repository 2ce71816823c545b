"""The key/value cache: what each layer has already computed, so a new token costs O(1) projections."""

from __future__ import annotations

import torch


class KVCache:
    """Per-layer keys and values of every token seen so far, each (B, kv_heads, T, head_dim).

    `update` appends the new tokens and returns the whole history for that layer. Storage is a
    buffer per layer that doubles when full (amortised O(1) per token, unlike a `torch.cat` of the
    whole history at every step, which is O(n^2) in total). With `max_length` the buffer is
    allocated once at that size (zero-filled) and never moves; writing past it raises an error.

    Compiled decoding needs shapes that never change: `update(..., cache_position)` writes the new
    keys/values at those slots and returns the whole max_length buffer; the attention mask hides
    the slots not written yet. The caller then records the new length with `advance`.
    """

    def __init__(self, max_length: int | None = None):
        if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int)
                                       or max_length <= 0):
            raise ValueError(f"KVCache max_length must be a positive integer or None, got {max_length!r}")
        self.max_length = max_length
        self.key_cache: list[torch.Tensor] = []  # per layer: (B, kv_heads, capacity, head_dim)
        self.value_cache: list[torch.Tensor] = []
        self.lengths: list[int] = []  # tokens stored per layer

    def num_items(self) -> int:
        """Number of tokens seen (the same in every layer between forward passes), 0 when empty."""
        if len(set(self.lengths)) > 1:
            raise ValueError(f"KVCache layers disagree on how many tokens they hold ({self.lengths}): a forward pass "
                             "was interrupted, or layers were updated one by one; start from a fresh KVCache()")
        return self.lengths[0] if self.lengths else 0

    def __len__(self) -> int:
        return len(self.key_cache)

    def capacity(self, layer_idx: int = 0) -> int:
        """Tokens the layer's buffer can hold before it must grow."""
        return self.key_cache[layer_idx].shape[2]

    def _allocate(self, like: torch.Tensor, capacity: int) -> torch.Tensor:
        batch, heads, _, head_dim = like.shape
        if self.max_length is not None:  # zeros: unwritten slots are read (then masked) by static decoding
            return like.new_zeros(batch, heads, capacity, head_dim)
        return like.new_empty(batch, heads, capacity, head_dim)

    def reset(self) -> None:
        """Forget the stored tokens but keep the buffers (a compiled step can then be replayed on them)."""
        self.lengths = [0 for _ in self.lengths]

    def advance(self, n_tokens: int) -> None:
        """Record `n_tokens` more tokens in every layer after position-indexed (static) updates."""
        self.lengths = [length + n_tokens for length in self.lengths]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int,
               cache_position: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Append (B, kv_heads, T_new, d) keys/values to layer `layer_idx`; return all of them so far.

        With `cache_position` (T_new,) (a preallocated cache only): write at those slots and return the
        full (B, kv_heads, max_length, d) buffers, a fixed shape that torch.compile / CUDA graphs can replay.
        """
        if cache_position is not None:
            self._check_slots(layer_idx, cache_position)
            self.key_cache[layer_idx].index_copy_(2, cache_position, key_states)
            self.value_cache[layer_idx].index_copy_(2, cache_position, value_states)
            return self.key_cache[layer_idx], self.value_cache[layer_idx]
        self._check_new(key_states, value_states, layer_idx)
        new = key_states.shape[2]
        if layer_idx == len(self.key_cache):  # first call for this layer
            capacity = self.max_length if self.max_length is not None else max(new, 16)
            self._check_room(new, capacity)
            self.key_cache.append(self._allocate(key_states, capacity))
            self.value_cache.append(self._allocate(value_states, capacity))
            self.lengths.append(0)
        self._check_fits(layer_idx, key_states)
        keys, values = self.key_cache[layer_idx], self.value_cache[layer_idx]
        length = self.lengths[layer_idx]
        if length + new > keys.shape[2]:
            self._check_room(length + new, keys.shape[2])
            capacity = max(2 * keys.shape[2], length + new)  # geometric growth: amortised O(1) per token
            keys, values = self._grow(keys, length, capacity), self._grow(values, length, capacity)
            self.key_cache[layer_idx], self.value_cache[layer_idx] = keys, values
        keys[:, :, length:length + new] = key_states
        values[:, :, length:length + new] = value_states
        self.lengths[layer_idx] = length + new
        return keys[:, :, :length + new], values[:, :, :length + new]

    def _check_new(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int) -> None:
        if key_states.shape != value_states.shape or key_states.dim() != 4:
            raise ValueError(f"KVCache.update expects keys and values of the same 4-D shape (B, kv_heads, T, d), "
                             f"got {tuple(key_states.shape)} and {tuple(value_states.shape)}")
        if layer_idx > len(self.key_cache) or layer_idx < 0:
            raise ValueError(f"KVCache.update: layer {layer_idx} written before layer {len(self.key_cache)}; "
                             "layers must be filled in order")

    def _check_fits(self, layer_idx: int, key_states: torch.Tensor) -> None:
        keys = self.key_cache[layer_idx]
        if keys.shape[0] != key_states.shape[0] or keys.shape[1] != key_states.shape[1] \
                or keys.shape[3] != key_states.shape[3]:
            raise ValueError(f"KVCache layer {layer_idx} holds (B, kv_heads, *, d) = {tuple(keys.shape)}; "
                             f"cannot append {tuple(key_states.shape)}")

    def _check_slots(self, layer_idx: int, cache_position: torch.Tensor) -> None:
        """Static writes need a preallocated, prefilled layer, and (checked on the CPU, where it costs no
        device sync, outside compilation) positions inside the buffer."""
        if self.max_length is None or layer_idx >= len(self.key_cache):
            raise ValueError("KVCache.update with cache_position needs a preallocated cache "
                             "(KVCache(max_length=...)) whose layer was already filled by a prefill")
        if cache_position.device.type == "cpu" and not torch.compiler.is_compiling() and cache_position.numel() \
                and (int(cache_position.min()) < 0 or int(cache_position.max()) >= self.max_length):
            raise ValueError(f"KVCache.update: cache_position {cache_position.tolist()} is outside the preallocated "
                             f"max_length={self.max_length}")

    def _check_room(self, needed: int, capacity: int) -> None:
        if self.max_length is not None and needed > self.max_length:
            raise ValueError(f"KVCache is full: {needed} tokens needed but max_length={self.max_length}; "
                             "create the cache with a larger max_length")

    def _grow(self, buffer: torch.Tensor, length: int, capacity: int) -> torch.Tensor:
        bigger = self._allocate(buffer, capacity)
        bigger[:, :, :length] = buffer[:, :, :length]
        return bigger
