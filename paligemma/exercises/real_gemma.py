"""Checkers for notebook 13 (the real Gemma 3 270M): a Q5_0 dequantizer by hand, and perplexity from logits."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..gguf_file import read_gguf
from ..gguf_quants import q5_0
from .checking import ExerciseError, check_close, passed, run_candidate

__all__ = ["check_q5_0", "check_perplexity"]

Q5_0_BLOCK_BYTES = 22


def check_q5_0(dequantize_fn: Callable, gguf_path, tensor: str = "blk.0.attn_q.weight") -> None:
    """`dequantize_fn(raw)`: (n_blocks, 22) uint8 Q5_0 blocks -> (n_blocks, 32) float32 weights."""
    gguf = read_gguf(gguf_path)
    info = gguf.tensor(tensor)
    if info.type_name != "Q5_0":
        raise ExerciseError(f"{tensor} is {info.type_name}, not Q5_0: pick a Q5_0 tensor of the file")
    raw = torch.from_numpy(gguf.raw(tensor)[:Q5_0_BLOCK_BYTES * 512].copy()).view(-1, Q5_0_BLOCK_BYTES)
    expected = q5_0(raw)  # (512, 32)
    got = run_candidate(dequantize_fn, raw.clone())
    hints = {(512, 16): "each block holds 32 weights: 16 bytes of nibbles give two weights each",
             (512 * 32,): "return one row of 32 weights per block, (n_blocks, 32)"}
    if isinstance(got, torch.Tensor) and got.shape == expected.shape and got.is_floating_point():
        got = got.float()
        d = raw[:, :2].contiguous().view(torch.float16).float()  # (n, 1)
        if torch.allclose(got, expected + 16 * d, atol=1e-6):
            raise ExerciseError("your weights are all shifted by 16·d: Q5_0 stores q + 16, so subtract 16 "
                                "before multiplying by d")
        nibbles_only = torch.cat([raw[:, 6:] & 15, raw[:, 6:] >> 4], 1).float() - 16
        if torch.allclose(got, d * nibbles_only, atol=1e-6):
            raise ExerciseError("you used only the 4-bit nibbles: each weight's 5th bit sits in the 32-bit field "
                                "after d (bit j for weight j), and goes in at value 16")
    check_close(got, expected, what="your dequantized Q5_0 blocks", shape_hints=hints, atol=1e-6, rtol=0,
                value_hint="w = d·(q − 16) with q = low nibble + 16 × the weight's bit of the u32 field; weights "
                           "0-15 take the low nibbles of bytes 6-21, weights 16-31 their high nibbles")
    passed("Q5_0 dequantization")


def check_perplexity(perplexity_fn: Callable, model, input_ids: torch.Tensor) -> None:
    """`perplexity_fn(model, input_ids)` -> exp(mean cross-entropy of each next token), a float."""
    with torch.no_grad():
        expected = math.exp(model(input_ids=input_ids, labels=input_ids)["loss"].item())
        got = run_candidate(perplexity_fn, model, input_ids)
    if isinstance(got, torch.Tensor):
        if got.numel() != 1:
            raise ExerciseError(f"perplexity should be one number for the text, got a tensor of shape "
                                f"{tuple(got.shape)}: average the per-token losses first")
        got = got.item()
    if not isinstance(got, (int, float)):
        raise ExerciseError(f"perplexity should be a number, got {type(got).__name__}")
    with torch.no_grad():
        logits = model(input_ids=input_ids)["logits"][0].float()
    unshifted = torch.nn.functional.cross_entropy(logits, input_ids[0])
    if math.isclose(got, math.exp(unshifted.item()), rel_tol=1e-4):
        raise ExerciseError("you scored each position's own token: the logits at position t predict token t + 1, "
                            "so compare logits[:-1] with input_ids[1:]")
    if math.isclose(got, math.log(expected), rel_tol=1e-4):
        raise ExerciseError("that is the mean cross-entropy (the loss); perplexity is its exponential")
    if not math.isclose(got, expected, rel_tol=1e-4):
        raise ExerciseError(f"perplexity {got:.4g}, expected {expected:.4g}: exp(mean over the next tokens of "
                            "-log softmax(logits)[true next token])")
    passed("perplexity")
