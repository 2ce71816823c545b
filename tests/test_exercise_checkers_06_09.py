"""The checkers of notebooks 06-09 accept the package's own code and name the usual mistakes in plain words."""

import json
import struct

import pytest
import torch
import torch.nn.functional as F

from paligemma.exercises import (check_checkpoint_key_to_ours, check_resize_position_embeddings, check_top_k,
                                 check_top_p, check_training_example, check_write_safetensors)
from paligemma.modeling_paligemma import checkpoint_key_to_ours
from paligemma.sampling import filter_logits
from exercise_helpers import assert_rejected, not_written


@pytest.mark.parametrize("checker", [check_resize_position_embeddings, check_top_k, check_top_p,
                                     check_write_safetensors, check_checkpoint_key_to_ours])
def test_a_stub_is_reported_as_not_implemented(checker):
    assert_rejected(checker, not_written, "not implemented yet")


def test_a_stubbed_training_example_is_reported_as_not_implemented(processor):
    assert_rejected(lambda fn: check_training_example(fn, processor), not_written, "not implemented yet")


# ---------------------------------------------------------------- position table resize (notebook 06)

def resize(table, new_side, order="rows", **options):
    """Bilinear resize of a (side^2, D) table; `order` and `options` reproduce the usual mistakes."""
    side, width = int(table.shape[0] ** 0.5), table.shape[1]
    grid = table.reshape(side, side, width)
    if order == "columns":
        grid = grid.transpose(0, 1)
    image = grid.permute(2, 0, 1)[None]  # (1, D, side, side)
    resized = F.interpolate(image, size=(new_side, new_side), **{"mode": "bilinear", "align_corners": False,
                                                                  **options})[0].permute(1, 2, 0)
    return resized.reshape(new_side * new_side, width)


def test_resize_checker_accepts_a_bilinear_resize_written_two_ways(capsys):
    check_resize_position_embeddings(resize)
    check_resize_position_embeddings(lambda t, n: F.interpolate(
        t.T.reshape(1, t.shape[1], int(t.shape[0] ** 0.5), -1), size=(n, n), mode="bilinear")[0].flatten(1).T)
    assert capsys.readouterr().out.count("Correct: resize_position_embeddings") == 2


@pytest.mark.parametrize("wrong, phrases", [
    (lambda t, n: F.interpolate(t.T[None], size=n * n, mode="linear")[0].T, ["one long sequence"]),
    (lambda t, n: F.interpolate(t.reshape(1, t.shape[1], int(t.shape[0] ** 0.5), -1), size=(n, n),
                                mode="bilinear").reshape(n * n, -1), ["straight to (1, D, side, side)"]),
    (lambda t, n: resize(t, n, align_corners=True), ["align_corners=True"]),
    (lambda t, n: resize(t, n, mode="nearest", align_corners=None), ["mode='bilinear'"]),
    (lambda t, n: resize(t, n, mode="bicubic"), ["not bicubic"]),
    (lambda t, n: resize(t, n, order="columns"), ["transposed", "reading order"]),
    (lambda t, n: resize(t, n).reshape(n, n, -1), ["shape (6, 6, 8)", "one row per patch"]),
    (lambda t, n: resize(t, n).T, ["shape (8, 36)", "(new_side * new_side, D)"]),
    (lambda t, n: resize(t, n) * 2, ["wrong values"]),
])
def test_resize_checker_names_the_mistake(wrong, phrases):
    assert_rejected(check_resize_position_embeddings, wrong, *phrases)


def test_resize_must_not_change_the_table():
    def in_place(table, new_side):
        out = resize(table, new_side)
        table.zero_()
        return out

    assert_rejected(check_resize_position_embeddings, in_place, "changed the table in place")


# ---------------------------------------------------------------- a training row (notebook 07)

@pytest.fixture(scope="module")
def processor():
    from conftest import tiny_tokenizer
    from paligemma import PaliGemmaProcessor

    return PaliGemmaProcessor(tiny_tokenizer(), image_size=16, num_image_tokens=4)


def row(processor, mistake=None):
    """training_example for the processor's tokenizer; `mistake` reproduces one of the usual ones."""
    tokenizer = processor.tokenizer
    image, bos, eos, pad = (tokenizer.token_to_id(t) for t in ("<image>", "<bos>", "<eos>", "<pad>"))
    newline = tokenizer.token_to_id("\n")

    def training_example(prompt_ids, answer_ids, length):
        prefix = [image] * processor.num_image_tokens + ([] if mistake == "no bos" else [bos]) + prompt_ids
        prefix += [] if mistake == "no newline" else [newline]
        suffix = answer_ids + ([] if mistake == "no eos" else [eos])
        padding = length - len(prefix) - len(suffix)
        ids = prefix + suffix + [pad] * padding if mistake == "right padding" else [pad] * padding + prefix + suffix
        input_ids = torch.tensor(ids)
        real = input_ids != pad if mistake != "mask all ones" else torch.ones_like(input_ids, dtype=torch.bool)
        types = torch.tensor([0] * (padding + len(prefix)) + [1] * len(suffix))
        if mistake == "eos type 0":
            types[-1] = 0
        if mistake == "prompt typed 1":
            types = real.long()
        labels = input_ids.masked_fill(types == 0, -100)
        if mistake == "eos unscored":
            labels[-1] = -100
        if mistake == "zeros":
            labels = input_ids.masked_fill(types == 0, 0)
        if mistake == "shifted":
            labels = torch.cat((labels[1:], torch.tensor([-100])))
        return {"input_ids": input_ids, "attention_mask": real.long(), "token_type_ids": types, "labels": labels}
    return training_example


def test_training_example_checker_accepts_the_format(processor, capsys):
    check_training_example(row(processor), processor)
    assert "Correct: training_example" in capsys.readouterr().out


@pytest.mark.parametrize("mistake, phrases", [
    ("no bos", ["0 <bos> token(s) where the format has 1"]),
    ("no newline", ["0 newline token(s)"]),
    ("no eos", ["<eos>"]),
    ("right padding", ["padded on the left"]),
    ("mask all ones", ["0 on the padding and 1 on every real token"]),
    ("eos type 0", ["<eos> belongs to the suffix too"]),
    ("prompt typed 1", ["only the answer and its <eos> get 1"]),
    ("eos unscored", ["<eos> must be scored"]),
    ("zeros", ["-100, the loss's ignore_index"]),
    ("shifted", ["labels stay aligned with input_ids"]),
])
def test_training_example_checker_names_the_mistake(processor, mistake, phrases):
    assert_rejected(lambda fn: check_training_example(fn, processor), row(processor, mistake), *phrases)


def test_training_example_checker_wants_a_dict_of_full_length_rows(processor):
    assert_rejected(lambda fn: check_training_example(fn, processor), lambda p, a, n: [p, a],
                    "should return a dict with the keys")
    short = lambda p, a, n: {k: v[2:] for k, v in row(processor)(p, a, n).items()}  # noqa: E731
    assert_rejected(lambda fn: check_training_example(fn, processor), short, "pad on the left up to `length`")


# ---------------------------------------------------------------- top-k and top-p (notebook 08)

def test_sampling_checkers_accept_the_package(capsys):
    check_top_k(lambda logits, k: filter_logits(logits, top_k=k))
    check_top_k(lambda logits, k: top_k_by(logits, k))
    assert "Correct: top_k" in capsys.readouterr().out
    check_top_p(lambda logits, p: filter_logits(logits, top_p=p))
    assert "Correct: top_p" in capsys.readouterr().out


def top_k_by(logits, k, largest=True, dim=-1, keep=None, fill=float("-inf")):
    values = torch.topk(logits, k if keep is None else keep, dim=dim, largest=largest).values
    threshold = values[:, -1:] if dim == -1 else values[-1:]
    dropped = logits < threshold if largest else logits > threshold
    return logits.masked_fill(dropped, fill)


@pytest.mark.parametrize("wrong, phrases", [
    (lambda logits, k: top_k_by(logits, k, largest=False), ["k smallest"]),
    (lambda logits, k: logits.masked_fill(logits <= torch.topk(logits, k).values[:, -1:], float("-inf")),
     ["kept 0 tokens instead of k = 1", "k-th largest logit itself must stay"]),
    (lambda logits, k: top_k_by(logits, k, keep=min(k + 1, logits.shape[-1])), ["kept 2 tokens instead of k = 1"]),
    (lambda logits, k: top_k_by(logits, min(k, logits.shape[0]), dim=0), ["not down the batch axis"]),
    (lambda logits, k: top_k_by(logits, k, fill=0.0), ["must get -inf", "0 is an ordinary logit"]),
    (lambda logits, k: top_k_by(logits, k).T, ["keep the logits' (batch, vocab) layout"]),
    (lambda logits, k: top_k_by(logits, k) * 2, ["kept tokens must keep their logits"]),
])
def test_top_k_names_the_mistake(wrong, phrases):
    assert_rejected(check_top_k, wrong, *phrases)


def nucleus(logits, p, descending=True, use_logits=False, crossing_token=True, unsort=True, fill=float("-inf")):
    sorted_logits, order = logits.sort(-1, descending=descending)
    weights = sorted_logits if use_logits else sorted_logits.softmax(-1)
    total = weights.cumsum(-1) - (weights if crossing_token else 0)
    drop = total >= p
    if unsort:
        drop = drop.scatter(-1, order, drop)
    return logits.masked_fill(drop, fill)


def shift_left(logits, p):
    """The transformers-style shift of the 'cumulative sum crosses p' mask, done the wrong way."""
    sorted_logits, order = logits.sort(-1, descending=True)
    crossed = sorted_logits.softmax(-1).cumsum(-1) >= p
    drop = torch.cat((crossed[:, 1:], torch.ones_like(crossed[:, :1])), dim=-1)
    return logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))


def top_p_fn(logits, p):
    return 1 / 0


@pytest.mark.parametrize("wrong, phrases", [
    (lambda logits, p: nucleus(logits, p, crossing_token=False), ["dropped the token that takes the running total"]),
    (lambda logits, p: nucleus(logits, p, use_logits=True), ["add probabilities", "not the logits"]),
    (lambda logits, p: nucleus(logits, p, unsort=False), ["in sorted order", "scatter it back"]),
    (lambda logits, p: nucleus(logits, p, descending=False), ["descending=True"]),
    (lambda logits, p: nucleus(logits, p, fill=0.0), ["must get -inf"]),
    (lambda logits, p: nucleus(logits, p)[:, :-1], ["has shape (3, 11), expected (3, 12)"]),
    (lambda logits, p: nucleus(logits, min(1.0, p + 0.2)), ["top_p(logits, p=0.5): in row", "should be dropped"]),
    (shift_left, ["shifted the mask the wrong way", "and the one before it"]),
    (lambda logits, p: logits.masked_fill(logits.softmax(-1) < p, float("-inf")), ["own probability reaches p"]),
    (lambda logits, p: nucleus(logits, p).softmax(-1), ["not probabilities"]),
    (top_p_fn, ["top_p_fn raised ZeroDivisionError: division by zero", "line", "return 1 / 0"]),
])
def test_top_p_names_the_mistake(wrong, phrases):
    assert_rejected(check_top_p, wrong, *phrases)


# ---------------------------------------------------------------- writing safetensors, key layouts (notebook 09)

DTYPE_NAMES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.int64: "I64"}


def write(tensors, path, endian="<", names=DTYPE_NAMES, first_offset=0, contiguous=True, gap=0, shape=list):
    """A safetensors writer by hand; the keyword arguments reproduce the usual mistakes."""
    header, chunks, offset = {}, [], first_offset
    for name, tensor in tensors.items():
        tensor = tensor.contiguous() if contiguous else tensor
        data = bytes(tensor.reshape(-1).view(torch.uint8).numpy()) if contiguous else bytes(
            tensor.untyped_storage())
        header[name] = {"dtype": names[tensor.dtype], "shape": shape(tensor.shape),
                        "data_offsets": [offset, offset + len(data)]}
        chunks.append(data + b"\0" * gap)
        offset += len(data) + gap
    text = json.dumps(header).encode()
    with open(path, "wb") as file:
        file.write(struct.pack(endian + "Q", len(text)) + text + b"".join(chunks))


def test_write_checker_accepts_the_library_and_a_hand_written_file(capsys):
    from safetensors.torch import save_file

    check_write_safetensors(lambda tensors, path: save_file({k: v.contiguous() for k, v in tensors.items()}, path))
    check_write_safetensors(write)
    assert capsys.readouterr().out.count("Correct: write_safetensors") == 2


@pytest.mark.parametrize("wrong, phrases", [
    (lambda t, p: write(t, p, endian=">"), ["big-endian", "struct.pack('<Q', N)"]),
    (lambda t, p: write(t, p, names={k: str(k) for k in DTYPE_NAMES}), ["dtype names must be safetensors' own",
                                                                         "torch.float32"]),
    (lambda t, p: write(t, p, first_offset=8), ["first tensor starts at 0, not at 8"]),
    (lambda t, p: write(t, p, contiguous=False), ["'proj.weight' comes back transposed", ".contiguous()"]),
    (lambda t, p: write({k: v.float() if v.dtype == torch.bfloat16 else v for k, v in t.items()}, p),
     ["'norm.weight' comes back as torch.float32 (4,), it was torch.bfloat16 (4,)"]),
    (lambda t, p: write({k: v for k, v in t.items() if k != "steps"}, p), ["the file holds the tensors"]),
    (lambda t, p: write({k: v.flip(0) for k, v in t.items()}, p), ["comes back with other values"]),
    (lambda t, p: None, ["no file was written"]),
    (lambda t, p: open(p, "wb").write(b"{}"), ["the file has 2 bytes"]),
    (lambda t, p: [v.numpy() for v in t.values()], ["unsupported ScalarType BFloat16", "view(torch.uint8)"]),
])
def test_write_checker_names_the_mistake(wrong, phrases):
    assert_rejected(check_write_safetensors, wrong, *phrases)


def test_key_checker_accepts_the_package(capsys):
    check_checkpoint_key_to_ours(checkpoint_key_to_ours)
    assert "Correct: checkpoint_key_to_ours" in capsys.readouterr().out


def without(rule):
    """The package's mapping with one of its rules left out."""
    def key_to_ours(key):
        if rule == "vision_model" and key.startswith("vision_tower.vision_model."):
            return key
        if rule == "lm_head" and key == "lm_head.weight":
            return key
        if rule == "language_model" and key.startswith("model.language_model."):
            return key.removeprefix("model.")
        if rule == "model" and key.startswith("model.") and not key.startswith("model.language_model."):
            return key
        return checkpoint_key_to_ours(key)
    return key_to_ours


@pytest.mark.parametrize("wrong, phrases", [
    (without("vision_model"), ["no vision_model level"]),
    (without("lm_head"), ["lm_head.weight -> language_model.lm_head.weight"]),
    (without("language_model"), ["model.language_model.X are our language_model.model.X"]),
    (without("model"), ["strip it for the vision tower"]),
    (lambda key: checkpoint_key_to_ours(key.replace("model.", "", 1)), ["leave them alone", "leading prefix"]),
    (lambda key: None, ["should return a str, got NoneType"]),
])
def test_key_checker_names_the_mistake(wrong, phrases):
    assert_rejected(check_checkpoint_key_to_ours, wrong, *phrases)
