"""The checkers of notebooks 06-09 accept the package's own code and name the usual mistakes in plain words."""

import json
import struct

import pytest
import torch
import torch.nn.functional as F

from paligemma.exercises import (check_checkpoint_key_to_ours, check_patchify, check_prefix_lm_mask,
                                 check_read_safetensors_header, check_top_k, check_top_p)
from paligemma.modeling_paligemma import checkpoint_key_to_ours
from paligemma.sampling import filter_logits
from paligemma.weights import file_header
from exercise_helpers import assert_rejected, not_written


@pytest.mark.parametrize("checker", [check_patchify, check_prefix_lm_mask, check_top_k, check_top_p,
                                     check_read_safetensors_header, check_checkpoint_key_to_ours])
def test_a_stub_is_reported_as_not_implemented(checker):
    assert_rejected(checker, not_written, "not implemented yet")


# ---------------------------------------------------------------- patchify (notebook 06)

def split(x, p):
    B, C, H, W = x.shape
    return x.reshape(B, C, H // p, p, W // p, p)  # (B, C, h, p, w, p)


def merge(x):
    return x.reshape(x.shape[0], x.shape[1] * x.shape[2], -1)


def test_patchify_accepts_permute_and_unfold(capsys):
    check_patchify(lambda x, p: merge(split(x, p).permute(0, 2, 4, 1, 3, 5)))
    check_patchify(lambda x, p: F.unfold(x, p, stride=p).transpose(1, 2))
    assert capsys.readouterr().out.count("Correct: patchify") == 2


@pytest.mark.parametrize("wrong, phrases", [
    (lambda x, p: merge(split(x, p).permute(0, 2, 4, 3, 5, 1)), ["channels-last", "(channel, row, column)"]),
    (lambda x, p: merge(split(x, p).permute(0, 4, 2, 1, 3, 5)), ["column by column", "row by row"]),
    (lambda x, p: x.reshape(x.shape[0], (x.shape[2] // p) ** 2, -1), ["plain reshape mixes pixels"]),
    (lambda x, p: x.permute(0, 2, 3, 1).reshape(x.shape[0], (x.shape[2] // p) ** 2, -1), ["still mixes pixels"]),
    (lambda x, p: F.unfold(x, p, stride=p), ["shape (2, 48, 4), expected (2, 4, 48)", "one row per patch"]),
    (lambda x, p: split(x, p).permute(0, 2, 4, 1, 3, 5).flatten(3), ["shape (2, 2, 2, 48)", "merge the two grid"]),
    (lambda x, p: F.unfold(x, p, stride=p).transpose(1, 2).double(), ["dtype torch.float64"]),
    (lambda x, p: F.unfold(x, p, stride=p).transpose(1, 2) * 0.5, ["wrong values"]),
])
def test_patchify_names_the_mistake(wrong, phrases):
    assert_rejected(check_patchify, wrong, *phrases)


def test_patchify_must_not_change_its_input():
    def in_place(x, p):
        out = F.unfold(x, p, stride=p).transpose(1, 2).clone()
        x.mul_(0.5)
        return out

    assert_rejected(check_patchify, in_place, "changed its input in place")


# ---------------------------------------------------------------- prefix-LM mask (notebook 07)

def prefix_lm(token_type_ids, attention_mask, prefix_type=0, hide=("keys",), bidirectional_prefix=True):
    T = token_type_ids.shape[1]
    allowed = torch.ones(T, T, dtype=torch.bool).tril().expand(token_type_ids.shape[0], T, T)
    if bidirectional_prefix:
        prefix = token_type_ids == prefix_type
        allowed = allowed | (prefix[:, :, None] & prefix[:, None, :])
    real = attention_mask.bool()
    if "keys" in hide:
        allowed = allowed & real[:, None, :]
    if "queries" in hide:
        allowed = allowed & real[:, :, None]
    return allowed


def test_prefix_lm_mask_accepts_the_reference_and_the_package(capsys):
    from paligemma.masks import allowed_positions

    check_prefix_lm_mask(prefix_lm)
    check_prefix_lm_mask(lambda tt, am: allowed_positions(tt.shape[1], 0, am, tt == 0, tt.shape[0]))
    assert capsys.readouterr().out.count("Correct: prefix_lm_mask") == 2


@pytest.mark.parametrize("wrong, phrases", [
    (lambda tt, am: prefix_lm(tt, am, bidirectional_prefix=False), ["every token is causal", "both directions"]),
    (lambda tt, am: prefix_lm(tt, am, prefix_type=1), ["roles of the token types are swapped"]),
    (lambda tt, am: am.bool()[:, None, :].expand(-1, tt.shape[1], -1), ["suffix", "must stay causal"]),
    (lambda tt, am: prefix_lm(tt, am, hide=()), ["padding keys are not hidden"]),
    (lambda tt, am: prefix_lm(tt, am, hide=("queries",)), ["rows (queries) instead of the padding columns"]),
    (lambda tt, am: prefix_lm(tt, am, hide=("keys", "queries")), ["also hid the padding rows"]),
    (lambda tt, am: ~prefix_lm(tt, am), ["inverted"]),
    (lambda tt, am: prefix_lm(tt, am).float(), ["dtype torch.float32, expected torch.bool"]),
    (lambda tt, am: prefix_lm(tt, am)[0], ["shape (7, 7), expected (1, 7, 7)", "keep the batch axis"]),
    (lambda tt, am: prefix_lm(tt, am)[:, None], ["without the head axis"]),
    (lambda tt, am: prefix_lm(tt, am) & ~torch.eye(tt.shape[1], dtype=torch.bool), ["query 0 and key 0 should be "
                                                                                     "allowed", "7 entries differ"]),
])
def test_prefix_lm_mask_names_the_mistake(wrong, phrases):
    assert_rejected(check_prefix_lm_mask, wrong, *phrases)


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


@pytest.mark.parametrize("wrong, phrases", [
    (lambda logits, p: nucleus(logits, p, crossing_token=False), ["dropped the token that takes the running total"]),
    (lambda logits, p: nucleus(logits, p, use_logits=True), ["add probabilities", "not the logits"]),
    (lambda logits, p: nucleus(logits, p, unsort=False), ["in sorted order", "scatter it back"]),
    (lambda logits, p: nucleus(logits, p, descending=False), ["descending=True"]),
    (lambda logits, p: nucleus(logits, p, fill=0.0), ["must get -inf"]),
    (lambda logits, p: nucleus(logits, p)[:, :-1], ["has shape (3, 11), expected (3, 12)"]),
    (lambda logits, p: nucleus(logits, min(1.0, p + 0.2)), ["top_p(logits, p=0.5): in row", "should be dropped"]),
])
def test_top_p_names_the_mistake(wrong, phrases):
    assert_rejected(check_top_p, wrong, *phrases)


# ---------------------------------------------------------------- safetensors header and key layouts (notebook 09)

def read_header(path, endian="<", skip_length=True, drop_metadata=True, parse=True):
    with open(path, "rb") as file:
        raw_length = file.read(8)
        (length,) = struct.unpack(endian + "Q", raw_length)
        if not skip_length:
            file.seek(0)
        text = file.read(min(length, 1 << 20))
    if not parse:
        return text
    header = json.loads(text)
    if drop_metadata:
        header.pop("__metadata__", None)
    return header


def test_header_checker_accepts_the_package_and_a_plain_reader(capsys):
    check_read_safetensors_header(file_header)
    check_read_safetensors_header(read_header)
    assert capsys.readouterr().out.count("Correct: read_safetensors_header") == 2


@pytest.mark.parametrize("wrong, phrases", [
    (lambda path: read_header(path, endian=">"), ["raised", "little-endian"]),
    (lambda path: read_header(path, skip_length=False), ["raised", "8 bytes"]),
    (lambda path: read_header(path, drop_metadata=False), ["'__metadata__'", "remove it"]),
    (lambda path: read_header(path, parse=False), ["as bytes", "json.loads"]),
    (lambda path: list(read_header(path)), ["should return a dict, got list"]),
    (lambda path: {k: v for k, v in read_header(path).items() if k != "proj.bias"}, ["the file holds"]),
    (lambda path: {k: {**v, "shape": tuple(v["shape"])} for k, v in read_header(path).items()},
     ["parsed JSON entries unchanged"]),
])
def test_header_checker_names_the_mistake(wrong, phrases):
    assert_rejected(check_read_safetensors_header, wrong, *phrases)


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
