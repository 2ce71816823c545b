"""Sliding-window attention (Gemma 2 and 3's local layers): a query sees only the last `window` positions.

Two pieces: the mask (which keys a local layer may read) and a cache whose local layers keep only
their window, so decoding 8k tokens holds 8k keys in the global layers alone.
"""

from __future__ import annotations

import torch

from .kv_cache import KVCache
from .masks import prefix_pairs


def within_window(query_length: int, past_length: int, window: int, device=None) -> torch.Tensor:
    """(T, S) booleans: key j is among the `window` positions ending at query i's own, i - j < window.

    (Keys after the query are excluded by the causal part of the mask, not here.)
    """
    query_pos = torch.arange(past_length, past_length + query_length, device=device)[:, None]  # (T, 1)
    key_pos = torch.arange(past_length + query_length, device=device)[None, :]  # (1, S)
    return key_pos > query_pos - window


def sliding_window_allowed(allowed: torch.Tensor, past_length: int, window: int,
                           bidirectional: torch.Tensor | None = None) -> torch.Tensor:
    """A local layer's (B, T, S) table: the global one AND (within the window OR query and key both prefix).

    The prefix of PaliGemma 2 (image + prompt) still reads itself whole, even when it is longer than the
    window, as transformers does; suffix tokens see only the window.
    """
    local = within_window(allowed.shape[1], past_length, window, allowed.device)  # (T, S)
    if bidirectional is not None:
        local = local | prefix_pairs(bidirectional, past_length)  # (B, T, S)
    return allowed & local


def ring_allowed(cache_position: torch.Tensor, key_mask: torch.Tensor, ring_size: int) -> torch.Tensor:
    r"""Static decoding: which slots of a local layer's ring of R slots the new token may read. (B, 1, R)

    Position p is written to slot p mod R, so after writing position c, slot s holds
    $p_s = c - ((c - s) \bmod R)$: the last R positions, exactly the window when R = window.
    A slot is readable if it was written ($p_s \ge 0$) and that position is not padding.
    """
    slots = torch.arange(ring_size, device=key_mask.device)
    held = cache_position - torch.remainder(cache_position - slots, ring_size)  # (R,) positions in the slots
    real = key_mask.gather(1, held.clamp(min=0)[None].expand(key_mask.shape[0], -1))  # (B, R)
    return ((held >= 0)[None] & real)[:, None, :]


class SlidingWindowKVCache(KVCache):
    """A KVCache whose local layers keep only their window (same `update` / `num_items` API).

    `windows`: per layer, its sliding window, or None for a global layer (stored whole, as by KVCache).
    Without max_length a local layer keeps its last window - 1 tokens in a buffer twice that size,
    moved back to the front when full (amortised O(1) per token); `update` returns them followed by
    the new ones, in order, so the caller slices the last columns of its mask. With max_length (static
    decoding) a local layer is a ring of min(window, max_length) slots, position p in slot p mod R.
    """

    def __init__(self, windows: list[int | None], max_length: int | None = None):
        super().__init__(max_length=max_length)
        if any(w is not None and (isinstance(w, bool) or not isinstance(w, int) or w < 1) for w in windows):
            raise ValueError(f"SlidingWindowKVCache windows must be positive integers or None, got {windows}")
        self.windows = list(windows)
        self.window_start: dict[int, int] = {}  # dynamic local layers: where the kept tokens begin

    def stored(self, layer_idx: int) -> int:
        """Tokens layer `layer_idx` holds in memory (at most its window for a local layer)."""
        window = self.windows[layer_idx]
        seen = self.lengths[layer_idx]
        if window is None:
            return seen
        return min(seen, self.ring_size(layer_idx)) if self.max_length is not None else min(seen, window - 1)

    def ring_size(self, layer_idx: int) -> int:
        return min(self.windows[layer_idx], self.max_length)

    def reset(self) -> None:
        super().reset()
        self.window_start = {i: 0 for i in self.window_start}

    def update(self, key_states, value_states, layer_idx, cache_position=None):
        if layer_idx >= len(self.windows):
            raise ValueError(f"SlidingWindowKVCache has windows for {len(self.windows)} layers, not layer {layer_idx}")
        if self.windows[layer_idx] is None:
            return super().update(key_states, value_states, layer_idx, cache_position)
        if cache_position is not None:  # static decoding: write into the ring, return the whole ring
            self._check_slots(layer_idx, cache_position)
            slots = torch.remainder(cache_position, self.ring_size(layer_idx))
            self.key_cache[layer_idx].index_copy_(2, slots, key_states)
            self.value_cache[layer_idx].index_copy_(2, slots, value_states)
            return self.key_cache[layer_idx], self.value_cache[layer_idx]
        self._check_new(key_states, value_states, layer_idx)
        if self.max_length is not None:
            return self._update_ring(key_states, value_states, layer_idx)
        return self._update_window(key_states, value_states, layer_idx)

    def _update_window(self, key_states, value_states, layer_idx):
        keep = self.windows[layer_idx] - 1  # the next query needs window - 1 earlier keys besides its own
        new = key_states.shape[2]
        if layer_idx == len(self.key_cache):
            capacity = max(2 * keep, new, 16)
            self.key_cache.append(key_states.new_empty(*key_states.shape[:2], capacity, key_states.shape[3]))
            self.value_cache.append(value_states.new_empty(*value_states.shape[:2], capacity, value_states.shape[3]))
            self.lengths.append(0)
            self.window_start[layer_idx] = 0
        self._check_fits(layer_idx, key_states)
        keys, values = self.key_cache[layer_idx], self.value_cache[layer_idx]
        start, stored = self.window_start[layer_idx], self.stored(layer_idx)
        if start + stored + new > keys.shape[2]:  # full: move the kept tokens to the front (and grow if needed)
            capacity = max(keys.shape[2], stored + new)
            keys = self._moved_to_front(keys, start, stored, capacity)
            values = self._moved_to_front(values, start, stored, capacity)
            self.key_cache[layer_idx], self.value_cache[layer_idx], start = keys, values, 0
        end = start + stored
        keys[:, :, end:end + new], values[:, :, end:end + new] = key_states, value_states
        self.lengths[layer_idx] += new
        self.window_start[layer_idx] = end + new - min(stored + new, keep)
        return keys[:, :, start:end + new], values[:, :, start:end + new]  # (B, kv_heads, stored + new, d)

    @staticmethod
    def _moved_to_front(buffer: torch.Tensor, start: int, stored: int, capacity: int) -> torch.Tensor:
        moved = buffer.new_empty(*buffer.shape[:2], capacity, buffer.shape[3])
        moved[:, :, :stored] = buffer[:, :, start:start + stored]
        return moved

    def _update_ring(self, key_states, value_states, layer_idx):
        """Prefill of a static cache: read the earlier window in order, then write the chunk's last R tokens."""
        new = key_states.shape[2]
        ring = self.ring_size(layer_idx)
        if layer_idx == len(self.key_cache):
            self.key_cache.append(key_states.new_zeros(*key_states.shape[:2], ring, key_states.shape[3]))
            self.value_cache.append(value_states.new_zeros(*value_states.shape[:2], ring, value_states.shape[3]))
            self.lengths.append(0)
        self._check_fits(layer_idx, key_states)
        past = self.lengths[layer_idx]
        self._check_room(past + new, self.max_length)
        device = key_states.device
        earlier = torch.arange(max(0, past - ring + 1), past, device=device) % ring  # slots, oldest first
        keys = torch.cat([self.key_cache[layer_idx].index_select(2, earlier), key_states], dim=2)
        values = torch.cat([self.value_cache[layer_idx].index_select(2, earlier), value_states], dim=2)
        last = torch.arange(past + max(0, new - ring), past + new, device=device)  # positions that stay
        self.key_cache[layer_idx].index_copy_(2, last % ring, key_states[:, :, last - past])
        self.value_cache[layer_idx].index_copy_(2, last % ring, value_states[:, :, last - past])
        self.lengths[layer_idx] = past + new
        return keys, values
