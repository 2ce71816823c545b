"""The language-modelling loss: cross-entropy of each next token, skipping positions labelled -100."""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100  # label value that the loss skips (prompt and padding positions)


def check_logits_to_keep(logits_to_keep, labels) -> None:
    if isinstance(logits_to_keep, bool) or not isinstance(logits_to_keep, int) or logits_to_keep < 0:
        raise ValueError(f"logits_to_keep must be a non-negative integer (0 = every position), got {logits_to_keep!r}")
    if logits_to_keep and labels is not None:
        raise ValueError("labels need the logits of every position: pass logits_to_keep=0 with labels")


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of predicting token t+1 from position t, over labels that are not -100."""
    if not isinstance(labels, torch.Tensor) or labels.shape != logits.shape[:2]:
        raise ValueError(f"labels must be a tensor of the shape of input_ids {tuple(logits.shape[:2])}, got "
                         f"{tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__}")
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integer token ids (or -100), got dtype {labels.dtype}")
    scored = labels[labels != IGNORE_INDEX]
    if scored.numel() and (scored.min() < 0 or scored.max() >= logits.shape[-1]):
        raise ValueError(f"labels must be token ids in [0, {logits.shape[-1]}) or -100 (not scored), got values from "
                         f"{int(scored.min())} to {int(scored.max())}")
    shifted_logits = logits[:, :-1].float().reshape(-1, logits.shape[-1])  # (B*(T-1), vocab)
    return F.cross_entropy(shifted_logits, labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX)
