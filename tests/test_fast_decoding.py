"""The static cache and the compiled decode step give the same greedy tokens as the readable eager loop."""

import pytest
import torch

from conftest import make_causal_lm, make_gemma, make_paligemma, random_images
from paligemma import KVCache

IMAGE_PROMPT = [96] * 16 + [2]


def left_padded(rows):
    longest = max(len(r) for r in rows)
    ids, mask = torch.zeros(len(rows), longest, dtype=torch.long), torch.zeros(len(rows), longest, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, longest - len(r):], mask[i, longest - len(r):] = torch.tensor(r), 1
    return ids, mask


@pytest.mark.parametrize("mode", ["static", "compiled_aot_eager"])
@pytest.mark.parametrize("padded", [False, True])
def test_gemma_fast_paths_equal_eager(mode, padded):
    model = make_gemma(seed=61)
    ids, mask = left_padded([[2, 5, 6, 7, 8], [2, 9] if padded else [2, 9, 10, 11, 12]])
    fast = {"static": dict(static=True), "compiled_aot_eager": dict(compile={"backend": "aot_eager",
                                                                           "fullgraph": True})}[mode]
    eager = model.generate(ids, attention_mask=mask, max_new_tokens=12, eos_token_id=None)
    assert torch.equal(model.generate(ids, attention_mask=mask, max_new_tokens=12, eos_token_id=None, **fast), eager)


def test_paligemma_static_path_equals_eager_with_eos_and_padding():
    model = make_paligemma(seed=62)
    ids, mask = left_padded([IMAGE_PROMPT + [10, 11, 12, 13], IMAGE_PROMPT + [20]])
    pixels = random_images(2, seed=63)
    kwargs = dict(pixel_values=pixels, attention_mask=mask, max_new_tokens=20)
    eager = model.generate(ids, eos_token_id=None, **kwargs)
    assert torch.equal(model.generate(ids, eos_token_id=None, static=True, **kwargs), eager)
    eos = int(eager[0, 2])  # a token both loops will meet early: both must stop and pad identically
    assert torch.equal(model.generate(ids, eos_token_id=eos, static=True, **kwargs),
                       model.generate(ids, eos_token_id=eos, **kwargs))


def test_sampling_with_seed_is_identical_on_the_static_path():
    model = make_gemma(seed=64)
    ids = torch.tensor([[2, 5, 6]])
    kwargs = dict(max_new_tokens=10, do_sample=True, top_k=5, temperature=1.3, seed=5, eos_token_id=None)
    assert torch.equal(model.generate(ids, static=True, **kwargs), model.generate(ids, **kwargs))


def test_inductor_compiled_step_on_cpu_equals_eager():
    """torch.compile's default backend (C++ code generated for the CPU): same tokens, and reused across calls."""
    model = make_gemma(seed=65, num_hidden_layers=1)
    ids = torch.tensor([[2, 5, 6, 7]])
    eager = model.generate(ids, max_new_tokens=6, eos_token_id=None)
    assert torch.equal(model.generate(ids, max_new_tokens=6, eos_token_id=None, compile=True), eager)
    assert torch.equal(model.generate(ids, max_new_tokens=6, eos_token_id=None, compile=True), eager)
    assert len(model._compiled_decode_steps) == 1 and len(model._static_caches) == 1


def test_static_update_needs_a_preallocated_prefilled_cache():
    with pytest.raises(ValueError, match="preallocated"):
        KVCache().update(torch.zeros(1, 1, 1, 4), torch.zeros(1, 1, 1, 4), 0, torch.tensor([0]))


def test_static_path_checks_the_position_limit():
    model = make_gemma(seed=66)  # max_position_embeddings=128
    with pytest.raises(ValueError, match="max_position_embeddings=128"):
        model.generate(torch.tensor([[2] * 100]), max_new_tokens=40, static=True)


class CountingBackend:
    """A torch.compile backend that runs the traced graph as is and counts how often dynamo compiled."""

    def __init__(self):
        self.compilations = 0

    def __call__(self, graph_module, example_inputs):
        self.compilations += 1
        return graph_module.forward


def test_many_prompt_lengths_and_batch_sizes_reuse_a_few_compilations():
    """12 requests of different shapes: same tokens as eager, a handful of compilations, never the recompile limit."""
    from paligemma.static_decoding import KEPT_CACHES

    model = make_causal_lm("gemma3", seed=3, std=0.3, embed_std=0.02)
    backend = CountingBackend()
    shapes = [(1, 5, 8), (1, 9, 8), (2, 5, 8), (1, 30, 20), (3, 7, 5), (2, 60, 10), (1, 3, 70), (4, 11, 9),
              (1, 13, 3), (2, 17, 30), (1, 100, 20), (3, 40, 40)]  # (batch, prompt length, new tokens)
    for i, (batch, length, new) in enumerate(shapes):
        ids = torch.randint(3, 97, (batch, length), generator=torch.Generator().manual_seed(i))
        eager = model.generate(ids, max_new_tokens=new, eos_token_id=None)
        compiled = model.generate(ids, max_new_tokens=new, eos_token_id=None,
                                  compile={"backend": backend, "fullgraph": True})
        assert torch.equal(compiled, eager), (batch, length, new)
    assert backend.compilations <= 5
    assert len(model._static_caches) <= KEPT_CACHES


def test_each_model_compiles_its_own_copy_of_the_decode_step():
    """torch.compile files compiled versions per code object: two models must not check each other's guards."""
    from paligemma.static_decoding import compiled_decode_step, decode_step

    first, second = make_causal_lm("gemma", seed=1), make_causal_lm("gemma3", seed=2)
    options = {"backend": CountingBackend(), "fullgraph": True}
    steps = [compiled_decode_step(model, options) for model in (first, second)]
    assert compiled_decode_step(first, options) is steps[0]  # kept on the model
    codes = [step._torchdynamo_orig_callable.__code__ for step in steps]
    assert codes[0] is not codes[1] and all(code is not decode_step.__code__ for code in codes)
    assert all(code.co_code == decode_step.__code__.co_code for code in codes)  # the same function
    ids = torch.randint(3, 97, (1, 6), generator=torch.Generator().manual_seed(0))
    for model in (first, second):
        assert torch.equal(model.generate(ids, max_new_tokens=4, eos_token_id=None, compile=options),
                           model.generate(ids, max_new_tokens=4, eos_token_id=None))


def test_nested_compile_options_are_accepted_and_keep_one_compiled_step():
    """torch.compile's own `options` is a dict: the step kept per options must not need hashable values."""
    from paligemma.static_decoding import compiled_decode_step

    model = make_causal_lm("gemma", seed=3)
    options = {"fullgraph": True, "options": {"size_asserts": False, "cpp.threads": 2}}
    step = compiled_decode_step(model, options)
    same_in_another_order = {"options": {"cpp.threads": 2, "size_asserts": False}, "fullgraph": True}
    assert compiled_decode_step(model, same_in_another_order) is step
    assert compiled_decode_step(model, {"fullgraph": True, "options": {"size_asserts": True}}) is not step


def test_cache_lengths_are_rounded_up_to_powers_of_two():
    from paligemma.static_decoding import cache_bucket

    assert [cache_bucket(n) for n in (1, 64, 65, 128, 129, 1000, 4097)] == [64, 64, 128, 128, 256, 1024, 8192]


def test_concurrent_compiled_calls_from_threads_give_each_its_own_answer():
    """Threads share the model's compiled step and caches: the lock makes them take turns, answers stay right."""
    from concurrent.futures import ThreadPoolExecutor

    model = make_causal_lm("gemma2", seed=4, std=0.3, embed_std=0.02)
    options = {"backend": CountingBackend(), "fullgraph": True}
    prompts = [torch.randint(3, 97, (1 + i % 2, 4 + 3 * i), generator=torch.Generator().manual_seed(i))
               for i in range(6)]
    expected = [model.generate(p, max_new_tokens=12, eos_token_id=None) for p in prompts]

    def run(i):
        return model.generate(prompts[i], max_new_tokens=12, eos_token_id=None, compile=options)

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(run, list(range(6)) * 2))
    for i, result in enumerate(results):
        assert torch.equal(result, expected[i % 6]), i
