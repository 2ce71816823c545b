"""The C decode step (native_decoding, decode_step.c): the torch step's numbers, token for token, and clear refusals.

Float32 and weight-only int8 models round nothing between layers, so the C step must give the torch step's logits
to float rounding (1e-5). int8-dynamic and int4 also round every layer's input to int8; a last-bit difference in
a norm then moves an activation across a rounding boundary now and then (measured on these tiny models: about one
step in fifty, by ~1e-2 of the logits' scale), so they are held to the same greedy tokens and a bound that one such
step stays inside; every piece of float arithmetic they share with the first two is checked tightly there.
"""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import TOL, hf_gemma_twin, make_causal_lm, make_paligemma, random_images
from paligemma import cpu_kernels, static_decoding
from paligemma.native_decoding import NativeDecodeStep, unsupported_reason
from paligemma.quantization import quantize

pytestmark = pytest.mark.skipif(not cpu_kernels.available(),
                                reason=f"the CPU kernels are not built here: {cpu_kernels.unavailable_reason()}")

GENERATIONS = ["gemma", "gemma2", "gemma3"]  # tiny configs: Gemma 2 and 3 with a window of 4 (the ring wraps)
SIZES = dict(hidden_size=64, head_dim=16, intermediate_size=128)  # multiples of 32, as the kernels need


def model_in(generation: str, mode: str, seed: int = 0):
    model = make_causal_lm(generation, seed=seed, **SIZES)
    return model if mode == "float32" else quantize(model, mode)


def steps_side_by_side(model, prompt: torch.Tensor, steps: int = 12, slots: int = 64):
    """The torch step and the C step from the same prefill, fed the same tokens (forced and greedy, alternating,
    chosen by the torch step's logits); the logits of both, (steps, vocab) each."""
    tokens = []  # filled by the torch run, replayed by the C run

    def run(native: bool) -> torch.Tensor:
        cache = model.new_kv_cache(max_length=slots)
        with torch.no_grad():
            logits = model(input_ids=prompt, kv_cache=cache, logits_to_keep=1)["logits"][:, -1]
            step = NativeDecodeStep(model, cache) if native else static_decoding.decode_step
            key_mask = torch.ones(1, slots, dtype=torch.bool)
            position, slot = torch.tensor([[prompt.shape[1]]]), torch.tensor([prompt.shape[1]])
            found = []
            for t in range(steps):
                if not native:
                    tokens.append(logits.argmax(-1, keepdim=True) if t % 2 else torch.tensor([[3 + t]]))
                logits = step(model, tokens[t], position, slot, key_mask, cache)
                found.append(logits.clone())
                cache.advance(1)
                position += 1
                slot += 1
        return torch.cat(found)

    return run(native=False), run(native=True)


@pytest.mark.parametrize("mode", ["float32", "int8"])
@pytest.mark.parametrize("generation", GENERATIONS)
def test_native_step_gives_the_torch_steps_logits(generation, mode):
    for seed in range(3):
        model = model_in(generation, mode, seed)
        prompt = torch.randint(3, 97, (1, 7), generator=torch.Generator().manual_seed(seed))
        torch_logits, native_logits = steps_side_by_side(model, prompt)
        scale = torch_logits.abs().amax(-1, keepdim=True)
        assert float(((native_logits - torch_logits).abs() / scale).max()) < 1e-5


@pytest.mark.parametrize("mode", ["int8-dynamic", "int4"])
@pytest.mark.parametrize("generation", GENERATIONS)
def test_native_step_with_rounded_activations_decodes_the_same_tokens(generation, mode):
    model = model_in(generation, mode, seed=1)
    prompt = torch.randint(3, 97, (1, 7), generator=torch.Generator().manual_seed(1))
    torch_logits, native_logits = steps_side_by_side(model, prompt)
    scale = torch_logits.abs().amax(-1, keepdim=True)
    assert float(((native_logits - torch_logits).abs() / scale).max()) < 3e-2
    assert torch.equal(native_logits.argmax(-1), torch_logits.argmax(-1))
    tokens = model.generate(prompt, max_new_tokens=12, eos_token_id=None, static=True)
    assert torch.equal(model.generate(prompt, max_new_tokens=12, eos_token_id=None, compile="native"), tokens)


@pytest.mark.parametrize("generation", GENERATIONS)
def test_native_float32_decoding_is_transformers_token_for_token(generation):
    """Our greedy tokens through the C step; transformers then scores prompt + continuation in one pass: its
    logits at every new position must be the C step's (1e-5) and its argmax our next token."""
    model = make_causal_lm(generation, seed=4, embed_std=0.02, **SIZES)
    twin = hf_gemma_twin(model)
    prompt = torch.randint(3, 97, (1, 6), generator=torch.Generator().manual_seed(4))
    new = model.generate(prompt, max_new_tokens=16, eos_token_id=None, compile="native")
    assert len(set(new[0].tolist())) > 3  # a continuation that moves, not one token repeated
    sequence = torch.cat([prompt, new], 1)
    with torch.no_grad():
        theirs = twin(input_ids=sequence).logits[0, prompt.shape[1] - 1:-1]
    assert torch.equal(theirs.argmax(-1), new[0])
    torch_logits, native_logits = steps_side_by_side(model, prompt, steps=8)
    torch.testing.assert_close(native_logits, torch_logits, **TOL)


def test_native_decoding_follows_generate_with_eos_padding_and_paligemma():
    """The loop around the step is static decoding's: end of sequence, left padding, a PaliGemma prefix."""
    model = make_causal_lm("gemma3", seed=5, **SIZES)
    prompt = torch.randint(3, 97, (1, 6), generator=torch.Generator().manual_seed(5))
    free = model.generate(prompt, max_new_tokens=10, eos_token_id=None, static=True)
    eos = int(free[0, 4])
    expected = model.generate(prompt, max_new_tokens=10, eos_token_id=eos, static=True)
    assert torch.equal(model.generate(prompt, max_new_tokens=10, eos_token_id=eos, compile="native"), expected)
    padded, mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), prompt], 1), torch.tensor([[0] * 3 + [1] * 6])
    assert torch.equal(model.generate(padded, attention_mask=mask, max_new_tokens=10, eos_token_id=None,
                                      compile="native"), free)
    paligemma = make_paligemma(seed=6, generation="gemma2", **SIZES)
    ids, images = torch.tensor([[96] * 16 + [2, 10, 11]]), random_images(1)
    expected = paligemma.generate(ids, pixel_values=images, max_new_tokens=8, eos_token_id=None, static=True)
    assert torch.equal(paligemma.generate(ids, pixel_values=images, max_new_tokens=8, eos_token_id=None,
                                          compile="native"), expected)


def test_a_model_still_deep_copies_after_static_and_native_decoding():
    model = make_causal_lm("gemma3", seed=10, **SIZES)
    prompt = torch.tensor([[2, 5, 6, 7]])
    expected = model.generate(prompt, max_new_tokens=4, eos_token_id=None, compile="native")
    model.generate(prompt, max_new_tokens=4, eos_token_id=None, static=True)
    twin = copy.deepcopy(model)  # (the per-model lock is kept beside the model, not on it)
    assert torch.equal(twin.generate(prompt, max_new_tokens=4, eos_token_id=None, compile="native"), expected)


def test_native_decoding_refuses_what_it_cannot_run_with_the_reason():
    model = make_causal_lm("gemma", seed=7, **SIZES)
    two_rows = torch.randint(3, 97, (2, 5))
    with pytest.raises(ValueError, match="one row at a time; got a batch of 2"):
        model.generate(two_rows, max_new_tokens=3, compile="native")
    with pytest.raises(ValueError, match="computes in float32"):
        copy.deepcopy(model).to(torch.bfloat16).generate(two_rows[:1], max_new_tokens=3, compile="native")
    with pytest.raises(ValueError, match="must be a multiple of 32"):
        make_causal_lm("gemma", seed=7).generate(two_rows[:1], max_new_tokens=3, compile="native")  # hidden 32, 48
    with pytest.raises(ValueError, match="compile must be True, False, a dict"):
        model.generate(two_rows[:1], max_new_tokens=3, compile="nativ")
    assert unsupported_reason(model) is None
    transposed = copy.deepcopy(model)  # the same weights, stored column by column: C reads rows
    projection = transposed.model.layers[0].self_attn.q_proj
    projection.weight = torch.nn.Parameter(projection.weight.detach().t().contiguous().t())
    assert "reads float32 weights row by row" in unsupported_reason(transposed)


def test_native_step_checks_what_it_hands_to_c():
    model = make_causal_lm("gemma2", seed=9, **SIZES)
    cache = model.new_kv_cache(max_length=16)
    with torch.no_grad():
        model(input_ids=torch.tensor([[2, 5, 6]]), kv_cache=cache)
    step = NativeDecodeStep(model, cache)
    good = dict(tokens=torch.tensor([[7]]), position_ids=torch.tensor([[3]]), cache_position=torch.tensor([3]),
                key_mask=torch.ones(1, 16, dtype=torch.bool))
    assert step(model, kv_cache=cache, **good).shape == (1, 97)
    for change, words in [(dict(tokens=torch.tensor([[97]])), "token 97 must lie in"),
                          (dict(cache_position=torch.tensor([16])), "cache_position 16 in"),
                          (dict(key_mask=torch.ones(1, 15, dtype=torch.bool)), "key_mask"),
                          (dict(tokens=torch.tensor([[7, 8]])), "takes one token")]:
        with pytest.raises(ValueError, match=words):
            step(model, kv_cache=cache, **{**good, **change})
    with pytest.raises(ValueError, match="another model or cache"):
        step(model, kv_cache=model.new_kv_cache(max_length=16), **good)


def test_native_step_without_kernels_says_why(monkeypatch):
    model = make_causal_lm("gemma", seed=8, **SIZES)
    monkeypatch.setattr(cpu_kernels, "available", lambda: False)
    monkeypatch.setattr(cpu_kernels, "unavailable_reason", lambda: "PALIGEMMA_CPU_KERNELS=0 is set")
    with pytest.raises(ValueError, match="CPU kernels are not available: PALIGEMMA_CPU_KERNELS=0"):
        model.generate(torch.tensor([[2, 5, 6]]), max_new_tokens=2, compile="native")
