"""Bad API input is a ValueError naming the argument; configs transformers' own tests use load and run as there."""

import pytest
import torch

from conftest import TOL, make_gemma, make_paligemma, random_images
from paligemma import KVCache, PaliGemmaForConditionalGeneration
from paligemma.sliding_window import SlidingWindowKVCache

IMAGE_PROMPT = [96] * 16 + [2, 10, 11]


@pytest.fixture(scope="module")
def paligemma():
    return make_paligemma(seed=1)


@pytest.mark.parametrize("call, words", [
    (lambda m: m(input_ids=[[2, 10, 11]]), "input_ids must be a torch tensor.*got a list"),
    (lambda m: m(input_ids=torch.tensor([IMAGE_PROMPT]), pixel_values=torch.full((1, 3, 16, 16), float("nan"))),
     "pixel_values hold NaN"),
    (lambda m: m(input_ids=torch.tensor([IMAGE_PROMPT]), pixel_values=torch.zeros(1, 3, 16, 16, dtype=torch.uint8)),
     "pixel_values must be floating point"),
    (lambda m: m(input_ids=torch.tensor([[2, 10, 11]]), pixel_values=random_images(1)),
     "pixel_values were given but input_ids hold no <image> token"),
    (lambda m: m(input_ids=torch.tensor([IMAGE_PROMPT, [96] * 8 + [2] * 11]), pixel_values=random_images(2)),
     r"different numbers of <image> tokens \(\[16, 8\]\)"),
    (lambda m: m(input_ids=torch.tensor([IMAGE_PROMPT]), pixel_values=random_images(1), logits_to_keep=-1),
     "logits_to_keep must be a non-negative integer"),
    (lambda m: m(input_ids=torch.tensor([IMAGE_PROMPT]), pixel_values=random_images(1),
                 labels=torch.tensor([[-100] * 18 + [500]])), r"labels must be token ids in \[0, 97\) or -100"),
    (lambda m: m(input_ids=torch.tensor([IMAGE_PROMPT]), pixel_values=random_images(1),
                 labels=torch.zeros(1, 19)), "labels must be integer token ids"),
    (lambda m: m.generate(torch.tensor([IMAGE_PROMPT]), pixel_values=random_images(1), eos_token_id="<eos>"),
     "eos_token_id must be None, a token id"),
    (lambda m: m.generate(torch.tensor([IMAGE_PROMPT]), pixel_values=random_images(1), eos_token_id=[1, 2.0]),
     "eos_token_id must be None"),
    (lambda m: m.generate([IMAGE_PROMPT], pixel_values=random_images(1)), "input_ids must be a"),
])
def test_bad_paligemma_input_is_named(paligemma, call, words):
    with pytest.raises(ValueError, match=words):
        with torch.no_grad():
            call(paligemma)


def test_decoder_input_checks():
    model = make_gemma(seed=2)
    with pytest.raises(ValueError, match="logits_to_keep"):
        model(input_ids=torch.tensor([[2, 3]]), logits_to_keep=1.5)
    with pytest.raises(ValueError, match="labels need the logits of every position"):
        model(input_ids=torch.tensor([[2, 3]]), labels=torch.tensor([[2, 3]]), logits_to_keep=1)
    with pytest.raises(ValueError, match="eos_token_id must be None"):
        model.generate(torch.tensor([[2, 3]]), eos_token_id=10_000)
    with pytest.raises(ValueError, match="prompts must be a string"):
        from paligemma.text_generation import generate_text
        generate_text(model, None, [])


def test_kv_cache_misuse_is_named():
    cache = KVCache(max_length=4)
    cache.update(torch.zeros(1, 1, 2, 8), torch.zeros(1, 1, 2, 8), 0)
    with pytest.raises(ValueError, match=r"cache_position \[7\] is outside the preallocated max_length=4"):
        cache.update(torch.zeros(1, 1, 1, 8), torch.zeros(1, 1, 1, 8), 0, torch.tensor([7]))
    with pytest.raises(ValueError, match="KVCache is full"):
        cache.update(torch.zeros(1, 1, 3, 8), torch.zeros(1, 1, 3, 8), 0)
    uneven = KVCache()
    uneven.update(torch.zeros(1, 1, 3, 8), torch.zeros(1, 1, 3, 8), 0)
    uneven.update(torch.zeros(1, 1, 2, 8), torch.zeros(1, 1, 2, 8), 1)
    with pytest.raises(ValueError, match=r"layers disagree on how many tokens they hold \(\[3, 2\]\)"):
        make_gemma(seed=3)(input_ids=torch.tensor([[2]]), kv_cache=uneven)
    with pytest.raises(ValueError, match="windows must be positive integers"):
        SlidingWindowKVCache([4, 0])


def transformers_tester_config(transformers):
    """A PaliGemma config like transformers' own model tests: SigLIP's default pooling head (vision_use_head),
    an image size that is not a multiple of the patch size, an <image> id outside the text vocabulary."""
    return transformers.PaliGemmaConfig(
        text_config={"model_type": "gemma", "vocab_size": 99, "hidden_size": 32, "num_hidden_layers": 2,
                     "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 8, "intermediate_size": 37,
                     "hidden_activation": "gelu_pytorch_tanh", "max_position_embeddings": 512, "pad_token_id": 0},
        vision_config={"image_size": 30, "patch_size": 4, "num_channels": 3, "hidden_size": 32, "num_hidden_layers": 2,
                       "num_attention_heads": 4, "intermediate_size": 37, "attention_dropout": 0.1},
        image_token_index=99, projection_dim=32)


def test_transformers_tester_style_config_loads_runs_and_saves_back(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers_tester_config(transformers)
    assert config.vision_config.vision_use_head and 30 % 4 and config.image_token_index >= 99
    torch.manual_seed(0)
    theirs = transformers.PaliGemmaForConditionalGeneration(config).eval()
    theirs.save_pretrained(tmp_path / "theirs")
    ours = PaliGemmaForConditionalGeneration.from_pretrained(tmp_path / "theirs")
    assert ours.config.num_image_tokens == 49  # 30 // 4 = 7 patches a side; the last 2 pixels are cut off
    assert hasattr(ours.vision_tower, "head")  # the pooling head's weights are kept (and saved back)
    ids = torch.tensor([[99] * 49 + [2, 10, 11, 12]])
    pixels = torch.rand(1, 3, 30, 30) * 2 - 1
    with torch.no_grad():
        expected = theirs(input_ids=ids, pixel_values=pixels, token_type_ids=torch.zeros_like(ids),
                          position_ids=torch.arange(1, ids.shape[1] + 1)[None]).logits
        torch.testing.assert_close(ours(input_ids=ids, pixel_values=pixels)["logits"], expected, **TOL)
    ours.save_pretrained(tmp_path / "ours")
    again = transformers.PaliGemmaForConditionalGeneration.from_pretrained(tmp_path / "ours").eval()
    for name, tensor in theirs.state_dict().items():
        torch.testing.assert_close(again.state_dict()[name], tensor, atol=0, rtol=0, msg=name)
