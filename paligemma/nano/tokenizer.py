"""A word-level tokenizer for the nano tasks, saved as a real `tokenizer.json` (the `tokenizers` library)."""

from __future__ import annotations

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

from .scenes import COLORS, NUMBER_WORDS, SHAPES
from .tasks import NUM_LOCATION_BINS

SPECIAL_TOKENS = ("<pad>", "<eos>", "<bos>", "<image>")  # ids 0-3, as in the Gemma config defaults (pad 0, eos 1, bos 2)
WORDS = ("a", "and", ";", "caption", "en", "detect", "answer", "how", "many", "shapes?",
         *COLORS, *SHAPES, *NUMBER_WORDS)
SPACE = "\u2581"  # '▁': a word's leading space, as SentencePiece (Gemma's tokenizer) writes it


def build_tokenizer() -> Tokenizer:
    """Specials, '\\n', <loc0000>.. and one token per word; words carry their leading space, so decoding is exact."""
    locations = [f"<loc{i:04d}>" for i in range(NUM_LOCATION_BINS)]
    tokens = [*SPECIAL_TOKENS, "<unk>", "\n", *locations, SPACE, *(SPACE + w for w in WORDS)]
    tokenizer = Tokenizer(models.WordLevel({t: i for i, t in enumerate(tokens)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SPACE, prepend_scheme="always", split=True)
    tokenizer.decoder = decoders.Metaspace(replacement=SPACE, prepend_scheme="always", split=True)
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in (*SPECIAL_TOKENS, "<unk>")])
    # Location tokens and the newline are ordinary text that must never be split: "added" tokens.
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in ("\n", *locations)])
    return tokenizer
