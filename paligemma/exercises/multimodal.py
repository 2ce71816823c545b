"""Checkers for notebook 07 (the PaliGemma model): one training row in PaliGemma's format, built by hand.

The learner writes, from token ids, what `PaliGemmaProcessor(..., suffix=...)` makes of a (prompt, answer)
pair in a left-padded batch: input ids, attention mask, token types and labels. The reference is the
package's processor on the same words; each wrong field is compared with the usual mistakes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image

from ..modeling_paligemma import IGNORE_INDEX
from .checking import ExerciseError, passed, run_candidate

__all__ = ["check_training_example"]

FIELDS = ("input_ids", "attention_mask", "token_type_ids", "labels")


def _words(tokenizer, count: int) -> list[str]:
    """`count` ordinary words of the tokenizer (no special tokens, no newline)."""
    special = {"<pad>", "<eos>", "<bos>", "<image>", "<unk>", "\n"}
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    return [word for word, _ in vocab if word not in special and not word.startswith("<")][:count]


def _row_mistakes(row: dict) -> dict[str, dict[str, torch.Tensor]]:
    """For each field, the usual wrong versions of the reference row, with what each one means."""
    ids, mask, types, labels = (row[name] for name in FIELDS)
    real = mask.bool()
    n_pad = int((~real).sum())
    right_padded = {name: torch.cat((value[n_pad:], value[:n_pad])) for name, value in row.items()}
    no_eos_type = types.clone()
    no_eos_type[-1] = 0
    prompt_typed = types.masked_fill(real, 1)
    padding_typed = types.masked_fill(~real, 1)
    eos_unscored = labels.clone()
    eos_unscored[-1] = IGNORE_INDEX
    return {
        "input_ids": {
            "the batch must be padded on the left (notebook 03): the padding goes first, so that every row ends "
            "with its last answer token": right_padded["input_ids"],
        },
        "attention_mask": {
            "the attention mask is 0 on the padding and 1 on every real token (image, prompt and answer)":
                torch.ones_like(mask),
            "the attention mask is 0 on the padding (left), 1 everywhere else": right_padded["attention_mask"],
        },
        "token_type_ids": {
            "the answer's <eos> belongs to the suffix too: token type 1": no_eos_type,
            "token type 0 marks the whole prefix, image tokens and prompt included; only the answer and its <eos> "
            "get 1": prompt_typed,
            "padding gets token type 0 (the processor marks only the answer and <eos> with 1)": padding_typed,
            "token types are swapped: 0 for the prefix (image, <bos>, prompt, newline), 1 for the answer":
                1 - types,
        },
        "labels": {
            "the <eos> must be scored too: the model has to learn when to stop": eos_unscored,
            "labels stay aligned with input_ids: the loss shifts them itself (position t predicts token t + 1)":
                torch.cat((labels[1:], labels.new_tensor([IGNORE_INDEX]))),
            "positions that are not scored get -100, the loss's ignore_index; 0 is the <pad> token and would be "
            "scored": labels.masked_fill(labels == IGNORE_INDEX, 0),
            "only the answer (and its <eos>) is scored: the prompt, the image tokens and the padding get -100":
                ids.masked_fill(~real, IGNORE_INDEX),
        },
    }


def _missing_token(got_ids: torch.Tensor, ids: torch.Tensor, names: dict[int, str]) -> str | None:
    """Which special token is missing (or extra) in `got_ids`, judged by counting it."""
    for token, name in names.items():
        have, want = int((got_ids == token).sum()), int((ids == token).sum())
        if have != want:
            return f"the row has {have} {name} token(s) where the format has {want}"
    return None


def check_training_example(training_example_fn: Callable, processor) -> None:
    """`training_example_fn(prompt_ids, answer_ids, length)` -> {input_ids, attention_mask, token_type_ids, labels},
    each a (length,) LongTensor, as `processor(text, images, suffix)` makes one row of a left-padded batch."""
    tokenizer = processor.tokenizer
    words = _words(tokenizer, 7)
    image = Image.new("RGB", (processor.image_size, processor.image_size))
    newline = tokenizer.token_to_id("\n")
    names = {processor.image_token_id: "<image>", processor.bos_token_id: "<bos>", processor.eos_token_id: "<eos>",
             newline: "newline"}
    cases = ((words[:2], words[2:4], words[1:2], words[:7]),  # the first row is padded
             (words[3:6], words[:1], words[:1], words[:1]))   # the first row is the longer: no padding
    for prompt, answer, other_prompt, other_answer in cases:
        batch = processor(text=[" ".join(prompt), " ".join(other_prompt)], images=[image, image],
                          suffix=[" ".join(answer), " ".join(other_answer)])
        row = {name: batch[name][0] for name in FIELDS}
        length = row["input_ids"].shape[0]
        prompt_ids = [tokenizer.token_to_id(word) for word in prompt]
        answer_ids = [tokenizer.token_to_id(word) for word in answer]
        call = f"training_example(prompt_ids={prompt_ids}, answer_ids={answer_ids}, length={length})"
        got = run_candidate(training_example_fn, list(prompt_ids), list(answer_ids), length)
        if not isinstance(got, dict) or set(got) != set(FIELDS):
            raise ExerciseError(f"{call} should return a dict with the keys {list(FIELDS)}, got "
                                f"{sorted(got) if isinstance(got, dict) else type(got).__name__}")
        for name in FIELDS:
            value = got[name]
            if not isinstance(value, torch.Tensor) or value.shape != (length,):
                shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise ExerciseError(f"{call}: {name} should be a tensor of shape ({length},), got {shape}"
                                    + (": pad on the left up to `length`" if isinstance(value, torch.Tensor)
                                       and value.dim() == 1 and value.shape[0] < length else ""))
            if torch.equal(value, row[name]):
                continue
            if name == "input_ids":
                missing = _missing_token(value, row[name], names)
                if missing:
                    raise ExerciseError(f"{call}: {missing}: <image> x {processor.num_image_tokens}, <bos>, the "
                                        "prompt, the newline, then the answer and <eos>, after the padding")
            for message, wrong in _row_mistakes(row)[name].items():
                if torch.equal(value, wrong):
                    raise ExerciseError(f"{call}: {message}")
            position = int((value != row[name]).nonzero()[0])
            raise ExerciseError(f"{call}: {name} differs from the processor's at position {position} (yours "
                                f"{int(value[position])}, expected {int(row[name][position])})")
    passed("training_example", "PaliGemmaProcessor")
