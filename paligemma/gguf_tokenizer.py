"""The tokenizer a Gemma GGUF file carries in its metadata, rebuilt as a `tokenizers.Tokenizer`.

Gemma's tokenizer is SentencePiece BPE with byte fallback. The file (`tokenizer.ggml.model` = "llama")
stores only the pieces, their scores and types, and no merge list. Its traps, each handled below:
1. Runs of 2-31 spaces are USER_DEFINED pieces stored with real spaces ("  "), while every other piece
   spells a space as "▁" (U+2581): they are respelled "▁▁" so the BPE can build them from "▁"s.
2. The scores are merge priorities, not log-probabilities: a normal piece scores -(its rank), but control
   and user-defined pieces all score -1000 and byte pieces 0, placeholders that would misplace the
   whitespace runs. A piece's position in the file is its true priority, so the merges follow file order.
3. Token types: CONTROL (3: <bos>, <start_of_turn>, <unusedN>) become special tokens (skipped when decoding
   with skip_special_tokens); USER_DEFINED (4: "\\n\\n", "\\t\\t", "<table>") are matched whole in the text
   but are ordinary text; BYTE (6: <0x00>..<0xFF>) are the byte fallback.
4. `tokenizer.ggml.add_space_prefix` is false for Gemma: " hello" and "hello" are different pieces.
5. `tokenizer.ggml.add_bos_token` is true: encode() prepends <bos>; encode(..., add_special_tokens=False) does not.
The result equals transformers' GGUF tokenizer id for id (tests/test_gguf_real_tokenizer.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors

from .gguf_file import GGUFFile, read_gguf

SPACE = "\u2581"  # SentencePiece's visible space
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6  # llama.cpp's token types


def respell_whitespace(piece: str) -> str:
    """A piece made only of spaces, stored with real spaces, in SentencePiece's spelling ("  " -> "▁▁")."""
    return SPACE * len(piece) if piece and piece.strip(" ") == "" else piece


def merges_in_file_order(pieces: list[str]) -> list[tuple[str, str]]:
    """Every split of a piece into two pieces of the vocabulary; earlier pieces merge first.

    SentencePiece BPE merges, at each step, the adjacent pair whose union is the best piece; here "best" is
    "earliest in the file". Splits of one piece come longest left part first, as transformers orders them.
    """
    known, merges = set(pieces), []
    add = merges.append
    for piece in pieces:
        for cut in range(len(piece) - 1, 0, -1):
            if piece[:cut] in known and piece[cut:] in known:
                add((piece[:cut], piece[cut:]))
    return merges


def _metadata(gguf: GGUFFile, name: str, default=None):
    value = gguf.metadata.get(f"tokenizer.ggml.{name}", default)
    if value is None:
        raise gguf.error(f"metadata key 'tokenizer.ggml.{name}' is missing: the file carries no tokenizer")
    return value


def _token_id(gguf: GGUFFile, name: str, count: int) -> int:
    token_id = _metadata(gguf, f"{name}_token_id")
    if not isinstance(token_id, int) or not 0 <= token_id < count:
        raise gguf.error(f"tokenizer.ggml.{name}_token_id is {token_id!r}, not an id of the {count} tokens")
    return token_id


def gguf_tokenizer(gguf: GGUFFile | str | Path) -> Tokenizer:
    """A `tokenizers.Tokenizer` equal to the SentencePiece (Gemma) tokenizer stored in a GGUF file."""
    gguf = gguf if isinstance(gguf, GGUFFile) else read_gguf(gguf)
    kind = _metadata(gguf, "model")
    if kind != "llama":
        raise gguf.error(f"tokenizer.ggml.model is {kind!r}; only SentencePiece ('llama', Gemma's) is supported")
    pieces, types = _metadata(gguf, "tokens"), _metadata(gguf, "token_type")
    if len(types) != len(pieces):
        raise gguf.error(f"tokenizer.ggml.token_type has {len(types)} entries for {len(pieces)} tokens")
    spelled = [respell_whitespace(p) if t == USER_DEFINED else p for p, t in zip(pieces, types)]
    if len(set(spelled)) != len(spelled):
        raise gguf.error("tokenizer.ggml.tokens holds the same piece twice (after respelling whitespace runs)")
    _check_scores_follow_file_order(gguf, types)
    unk_id = _token_id(gguf, "unknown", len(pieces))

    vocab = {piece: index for index, piece in enumerate(spelled)}
    bpe = models.BPE(vocab=vocab, merges=merges_in_file_order(spelled), unk_token=spelled[unk_id],
                     fuse_unk=True, byte_fallback=True)
    tokenizer = Tokenizer(bpe)
    if gguf.metadata.get("tokenizer.ggml.add_space_prefix", False):  # llama.cpp's option; False for Gemma
        tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend(SPACE), normalizers.Replace(" ", SPACE)])
    else:
        tokenizer.normalizer = normalizers.Replace(" ", SPACE)
    tokenizer.decoder = decoders.Sequence([decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()])

    # Pieces that must never be cut: control tokens as special, user-defined ones as plain text. The respelled
    # whitespace runs are left to the BPE (they only exist as "▁" runs after the normalizer).
    tokenizer.add_special_tokens([AddedToken(p, special=True, normalized=False)
                                  for p, t in zip(pieces, types) if t == CONTROL])
    tokenizer.add_tokens([AddedToken(p, special=False, normalized=False)
                          for p, s, t in zip(pieces, spelled, types) if t == USER_DEFINED and p == s])
    _set_post_processor(gguf, tokenizer, spelled)
    return tokenizer


def _check_scores_follow_file_order(gguf: GGUFFile, types: list[int]) -> None:
    """Normal pieces' scores must fall strictly in file order, or file order would not be the merge order."""
    scores = np.asarray(_metadata(gguf, "scores"), dtype=np.float64)
    if len(scores) != len(types):
        raise gguf.error(f"tokenizer.ggml.scores has {len(scores)} entries for {len(types)} tokens")
    normal = scores[np.asarray(types) == NORMAL]
    if (np.diff(normal) >= 0).any():
        raise gguf.error("tokenizer.ggml.scores of the normal pieces do not fall in file order, so this is not "
                         "a SentencePiece BPE vocabulary whose merges follow the file order")


def _set_post_processor(gguf: GGUFFile, tokenizer: Tokenizer, pieces: list[str]) -> None:
    """<bos> before (and <eos> after) each sequence, as `tokenizer.ggml.add_bos_token` / `add_eos_token` say."""
    meta = gguf.metadata
    before = [_token_id(gguf, "bos", len(pieces))] if meta.get("tokenizer.ggml.add_bos_token", True) else []
    after = [_token_id(gguf, "eos", len(pieces))] if meta.get("tokenizer.ggml.add_eos_token", False) else []
    if not before and not after:
        return
    first = " ".join([pieces[i] for i in before] + ["$A"] + [pieces[i] for i in after])
    second = " ".join([f"{pieces[i]}:1" for i in before] + ["$B:1"] + [f"{pieces[i]}:1" for i in after])
    tokenizer.post_processor = processors.TemplateProcessing(
        single=first, pair=f"{first} {second}", special_tokens=[(pieces[i], i) for i in sorted(set(before + after))])
