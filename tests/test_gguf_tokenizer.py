"""The GGUF tokenizer builder on a tiny SentencePiece vocabulary laid out like Gemma's (one test per trap of the
real file; tests/test_gguf_real_tokenizer.py checks the real one against transformers)."""

from __future__ import annotations

import pytest

from gguf_helpers import V, write_gguf
from paligemma.gguf_file import GGUFError
from paligemma.gguf_tokenizer import BYTE, CONTROL, NORMAL, USER_DEFINED, gguf_tokenizer, merges_in_file_order

# (piece, type, score) as llama.cpp writes Gemma's: placeholders -1000 / 0 for the non-normal pieces, and
# strictly falling ranks for the normal ones, whose file order is their merge order.
SPECIAL = [("<pad>", CONTROL), ("<eos>", CONTROL), ("<bos>", CONTROL), ("<unk>", CONTROL),
           ("<start_of_turn>", CONTROL), ("<end_of_turn>", CONTROL),
           ("\n", USER_DEFINED), ("\n\n", USER_DEFINED), ("  ", USER_DEFINED), ("   ", USER_DEFINED),
           ("<table>", USER_DEFINED)]
BYTES = [(f"<0x{b:02X}>", BYTE) for b in range(256)]
NORMAL_PIECES = ["▁the", "the", "▁b", "▁t", "th", "he", "▁a", "▁", "t", "h", "e", "a", "b", "<", ">", "l"]


def _vocabulary():
    pieces = [(p, k, -1000.0) for p, k in SPECIAL] + [(p, k, 0.0) for p, k in BYTES]
    pieces += [(p, NORMAL, -float(rank)) for rank, p in enumerate(NORMAL_PIECES)]
    return pieces


def tokenizer_file(path, pieces=None, **flags):
    pieces = _vocabulary() if pieces is None else pieces
    metadata = {"tokenizer.ggml.model": ("llama", V.STRING),
                "tokenizer.ggml.tokens": ([p for p, _, _ in pieces], V.ARRAY, V.STRING),
                "tokenizer.ggml.scores": ([s for _, _, s in pieces], V.ARRAY, V.FLOAT32),
                "tokenizer.ggml.token_type": ([k for _, k, _ in pieces], V.ARRAY, V.INT32),
                "tokenizer.ggml.bos_token_id": (2, V.UINT32), "tokenizer.ggml.eos_token_id": (1, V.UINT32),
                "tokenizer.ggml.unknown_token_id": (3, V.UINT32), "tokenizer.ggml.padding_token_id": (0, V.UINT32),
                "tokenizer.ggml.add_bos_token": (True, V.BOOL), "tokenizer.ggml.add_space_prefix": (False, V.BOOL)}
    for key, value in flags.items():
        metadata[f"tokenizer.ggml.{key}"] = value
    return write_gguf(path, "gemma3", {k: v for k, v in metadata.items() if v is not None}, {})


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return gguf_tokenizer(tokenizer_file(tmp_path_factory.mktemp("tok") / "tok.gguf"))


def pieces_of(tokenizer, text):
    return tokenizer.encode(text, add_special_tokens=False).tokens


def test_whitespace_runs_stored_with_real_spaces_are_respelled(tiny):
    """Trap 1: the file stores "  " (real spaces); the BPE sees "▁▁" after its normalizer, and must find it."""
    assert pieces_of(tiny, "a  b") == ["a", "▁▁", "b"]
    assert tiny.encode("a  b", add_special_tokens=False).ids[1] == 8  # the id of the "  " piece in the file
    assert pieces_of(tiny, "   the") == ["▁▁▁", "the"]


def test_merge_priority_is_file_order_not_score(tiny):
    """Trap 2: "▁▁" scores -1000 (a placeholder) but sits early in the file. By score, "▁b" (-2) would merge
    first and give ["a", "▁", "▁b"]; by file order "▁▁" wins."""
    assert pieces_of(tiny, "a  b") != ["a", "▁", "▁b"]
    merges = merges_in_file_order(["ab", "a", "b", "abc", "c", "bc"])
    assert merges == [("a", "b"), ("ab", "c"), ("a", "bc"), ("b", "c")]


def test_scores_out_of_file_order_are_refused(tmp_path):
    pieces = _vocabulary()
    pieces[-1] = (pieces[-1][0], NORMAL, 5.0)  # a normal piece scoring above the ones before it
    with pytest.raises(GGUFError, match="scores of the normal pieces do not fall in file order"):
        gguf_tokenizer(tokenizer_file(tmp_path / "bad.gguf", pieces))


def test_control_tokens_are_special_and_user_defined_are_text(tiny):
    """Trap 3: CONTROL pieces are special (dropped by skip_special_tokens), USER_DEFINED ones are whole text."""
    text = "<start_of_turn>the\n\n<table><end_of_turn>"
    encoding = tiny.encode(text, add_special_tokens=False)
    assert encoding.tokens == ["<start_of_turn>", "the", "\n\n", "<table>", "<end_of_turn>"]
    assert tiny.decode(encoding.ids, skip_special_tokens=True) == "the\n\n<table>"
    assert tiny.decode(encoding.ids, skip_special_tokens=False) == text


def test_no_space_prefix_unless_the_file_asks(tiny, tmp_path):
    """Trap 4: add_space_prefix is false for Gemma: "the" and " the" are different pieces."""
    assert pieces_of(tiny, "the") == ["the"] and pieces_of(tiny, " the") == ["▁the"]
    prefixed = gguf_tokenizer(tokenizer_file(tmp_path / "prefix.gguf", add_space_prefix=(True, V.BOOL)))
    assert pieces_of(prefixed, "the") == ["▁the"]


def test_bos_is_added_unless_asked_not_to(tiny, tmp_path):
    """Trap 5: add_bos_token is true: encode() starts with <bos> (id 2); add_special_tokens=False leaves it out."""
    assert tiny.encode("the").tokens == ["<bos>", "the"] and tiny.encode("the").ids[0] == 2
    assert tiny.encode("the").ids[1:] == tiny.encode("the", add_special_tokens=False).ids
    plain = gguf_tokenizer(tokenizer_file(tmp_path / "nobos.gguf", add_bos_token=(False, V.BOOL),
                                          add_eos_token=(True, V.BOOL)))
    assert plain.encode("the").tokens == ["the", "<eos>"]


def test_byte_fallback_and_round_trip(tiny):
    """Characters outside the vocabulary fall back to their UTF-8 bytes, and decode back to the text."""
    assert pieces_of(tiny, "é") == ["<0xC3>", "<0xA9>"]
    for text in ["é the😀", "", " ", "the  the\n\n  \n", "<table>a b"]:
        assert tiny.decode(tiny.encode(text, add_special_tokens=False).ids, skip_special_tokens=False) == text


def test_not_a_sentencepiece_file(tmp_path):
    with pytest.raises(GGUFError, match="tokenizer.ggml.model is 'gpt2'; only SentencePiece"):
        gguf_tokenizer(tokenizer_file(tmp_path / "gpt2.gguf", model=("gpt2", V.STRING)))


def test_no_tokenizer_in_the_file(tmp_path):
    path = write_gguf(tmp_path / "none.gguf", "gemma3", {}, {})
    with pytest.raises(GGUFError, match="'tokenizer.ggml.model' is missing: the file carries no tokenizer"):
        gguf_tokenizer(path)


def test_mismatched_lengths(tmp_path):
    with pytest.raises(GGUFError, match="token_type has 2 entries for 283 tokens"):
        gguf_tokenizer(tokenizer_file(tmp_path / "len.gguf", token_type=([1, 1], V.ARRAY, V.INT32)))


def test_token_id_out_of_range(tmp_path):
    with pytest.raises(GGUFError, match="tokenizer.ggml.bos_token_id is 999, not an id of the 283 tokens"):
        gguf_tokenizer(tokenizer_file(tmp_path / "id.gguf", bos_token_id=(999, V.UINT32)))
