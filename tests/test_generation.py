"""Decoding: greedy equals transformers' generate; sampling respects top-k/top-p; seeds reproduce; EOS stops."""

import pytest
import torch

from conftest import hf_gemma_twin, hf_paligemma_twin, make_gemma, make_paligemma, random_images
from paligemma.generation import filter_logits, generate_tokens
from paligemma import cpu_kernels
from paligemma.sampling import ARGMAX_BLOCK, greedy_tokens

transformers = pytest.importorskip("transformers")


def left_padded(rows):
    longest = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), longest, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, longest - len(r):], mask[i, longest - len(r):] = torch.tensor(r), 1
    return ids, mask


def test_paligemma_greedy_is_token_identical_to_transformers():
    model = make_paligemma(seed=31)
    twin = hf_paligemma_twin(model)
    image = [96] * 16 + [2]
    ids, mask = left_padded([image + [10, 11, 12, 13, 14], image + [20]])
    pixels = random_images(2, seed=32)
    ours = model.generate(ids, pixel_values=pixels, attention_mask=mask, max_new_tokens=20, eos_token_id=None)
    theirs = twin.generate(input_ids=ids, pixel_values=pixels, attention_mask=mask,
                           token_type_ids=torch.zeros_like(ids), max_new_tokens=20, min_new_tokens=20,
                           do_sample=False, eos_token_id=None, pad_token_id=0)
    assert ours.shape == (2, 20)
    assert torch.equal(ours, theirs[:, ids.shape[1]:])


def test_gemma_greedy_is_token_identical_to_transformers_and_stops_at_eos():
    model = make_gemma(seed=33)
    twin = hf_gemma_twin(model)
    ids, mask = left_padded([[2, 5, 6, 7], [2, 9]])
    theirs = twin.generate(input_ids=ids, attention_mask=mask, max_new_tokens=15, min_new_tokens=15,
                           do_sample=False, eos_token_id=None, pad_token_id=0)[:, ids.shape[1]:]
    ours = model.generate(ids, attention_mask=mask, max_new_tokens=15, eos_token_id=None)
    assert torch.equal(ours, theirs)
    # declare the last distinct token of row 0 to be the EOS: row 0 stops there and is padded afterwards
    row0 = ours[0].tolist()
    step = max(row0.index(token) for token in set(row0))
    eos = row0[step]
    stopped = model.generate(ids, attention_mask=mask, max_new_tokens=15, eos_token_id=eos)
    assert stopped[0, :step + 1].tolist() == row0[:step + 1]
    assert (stopped[0, step + 1:] == 0).all()
    row1 = ours[1].tolist()
    if eos not in row1:  # row 1 never finishes, so the loop runs to max_new_tokens
        assert stopped.shape[1] == 15 and stopped[1].tolist() == row1
    else:  # the loop ends as soon as both rows have finished
        assert stopped.shape[1] == max(step, row1.index(eos)) + 1


@pytest.mark.parametrize("top_k, top_p", [(3, None), (None, 0.5), (5, 0.3)])
def test_sampling_never_leaves_the_allowed_set(top_k, top_p):
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(34)) * 3
    filtered = filter_logits(logits, temperature=0.7, top_k=top_k, top_p=top_p)
    allowed = torch.isfinite(filtered)
    probs = (logits / 0.7).softmax(-1)
    for row in range(4):
        order = probs[row].argsort(descending=True)
        if top_k is not None:
            assert set(allowed[row].nonzero().flatten().tolist()) <= set(order[:top_k].tolist())
        if top_p is not None:  # the smallest prefix of the ranking whose mass reaches top_p
            mass = probs[row][order].cumsum(0)
            needed = int((mass < top_p).sum()) + 1
            assert set(allowed[row].nonzero().flatten().tolist()) <= set(order[:needed].tolist())
        assert allowed[row, order[0]]  # the most likely token always stays
    model = make_gemma(seed=35)
    ids = torch.tensor([[2, 5, 6]])
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):  # and every sampled token lies in the filtered set of its own step
        tokens = generate_tokens(model, ids, max_new_tokens=1, do_sample=True, temperature=0.7, top_k=top_k,
                                 top_p=top_p, seed=int(torch.randint(0, 10**6, (1,), generator=generator)))
        with torch.no_grad():
            step_logits = model(input_ids=ids)["logits"][:, -1]
        assert torch.isfinite(filter_logits(step_logits, 0.7, top_k, top_p)[0, tokens[0, 0]])


def test_seed_reproduces_samples():
    model = make_gemma(seed=36)
    ids = torch.tensor([[2, 5, 6, 7]])
    kwargs = dict(max_new_tokens=12, do_sample=True, temperature=1.5, eos_token_id=None)
    first = model.generate(ids, seed=7, **kwargs)
    assert torch.equal(first, model.generate(ids, seed=7, **kwargs))
    assert not all(torch.equal(first, model.generate(ids, seed=s, **kwargs)) for s in range(8, 12))


@pytest.mark.parametrize("kwargs, words", [
    (dict(temperature=0.5), "do_sample=True"),
    (dict(do_sample=True, temperature=0), "temperature"),
    (dict(do_sample=True, top_k=0), "top_k"),
    (dict(do_sample=True, top_p=1.5), "top_p"),
    (dict(max_new_tokens=0), "max_new_tokens"),
])
def test_bad_generation_arguments(kwargs, words):
    with pytest.raises(ValueError, match=words):
        make_gemma().generate(torch.tensor([[2, 5]]), **kwargs)


def test_gemma_rejects_pixel_values():
    with pytest.raises(ValueError, match="no vision tower"):
        make_gemma().generate(torch.tensor([[2, 5]]), pixel_values=random_images(1))


@pytest.mark.parametrize("path", ["our kernel", "blocks"])
@pytest.mark.parametrize("vocab", [64 * ARGMAX_BLOCK, 262144, 257219, 100])  # whole blocks, a short last block, tiny
def test_greedy_tokens_picks_what_argmax_picks_ties_nan_and_infinities_included(vocab, path, monkeypatch):
    if path == "blocks":
        monkeypatch.setattr(cpu_kernels, "argmax_rows", lambda logits: None)
    elif not cpu_kernels.available():
        pytest.skip(f"the kernels are not built here: {cpu_kernels.unavailable_reason()}")
    threads = torch.get_num_threads()
    torch.set_num_threads(3)  # the kernel splits a row between threads: shares of 87,381 or 87,382 of 262144
    generator = torch.Generator().manual_seed(vocab)
    logits = torch.randn(6, vocab, generator=generator)
    logits[1, [7, vocab // 2, vocab - 1]] = 50.0  # ties: the first one wins
    logits[2, vocab - 1] = 60.0  # the maximum in the last column
    logits[3, [vocab // 3, vocab - 2]] = float("nan")  # a NaN counts as the largest, the first one
    logits[4] = float("-inf")  # all -inf: column 0
    logits[5, ARGMAX_BLOCK - 1: ARGMAX_BLOCK + 1] = 70.0  # equal maxima straddling two blocks
    logits[5, vocab // 3 - 1: vocab // 3 + 2] = 70.0  # ... and straddling two threads' shares
    try:
        assert torch.equal(greedy_tokens(logits), logits.argmax(-1))
        assert greedy_tokens(logits)[1] == 7
        nan_later = logits[:2].clone()
        nan_later[0, vocab - 3] = float("nan")  # a NaN in the last share after a large value in the first
        nan_later[1, [2, vocab - 3]] = float("nan")  # NaNs in two shares: the first one
        assert torch.equal(greedy_tokens(nan_later), nan_later.argmax(-1))
        for seed in range(20):  # and random rows, repeated values included
            rows = torch.randint(-3, 4, (3, vocab), generator=torch.Generator().manual_seed(seed)).float()
            assert torch.equal(greedy_tokens(rows), rows.argmax(-1))
    finally:
        torch.set_num_threads(threads)
