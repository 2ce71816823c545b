"""PaliGemmaProcessor: image modes and sizes, pixel scaling, the prompt layout, suffixes, left padding."""

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import tiny_tokenizer
from paligemma import PaliGemmaProcessor


@pytest.fixture
def processor():
    return PaliGemmaProcessor(tiny_tokenizer(), image_size=16, num_image_tokens=16)


def gradient_image(mode="RGB", size=(40, 30)):
    array = np.stack(np.meshgrid(np.linspace(0, 255, size[0]), np.linspace(0, 255, size[1])), -1)
    rgb = np.concatenate([array, array[..., :1] * 0 + 128], -1).astype(np.uint8)  # (H, W, 3)
    return Image.fromarray(rgb, "RGB").convert(mode) if mode != "RGB" else Image.fromarray(rgb, "RGB")


def test_prompt_layout(processor):
    out = processor(text="caption en", images=gradient_image())
    assert out["input_ids"].tolist() == [[96] * 16 + [2, 5, 6, 3]]  # <image>*16 <bos> caption en \n
    assert out["attention_mask"].tolist() == [[1] * 20]
    assert set(out) == {"input_ids", "attention_mask", "pixel_values"}


def test_pixels_are_bicubic_resized_and_scaled_to_minus_one_one(processor):
    image = gradient_image(size=(64, 48))
    pixels = processor(text="caption en", images=image)["pixel_values"]
    assert pixels.shape == (1, 3, 16, 16) and pixels.dtype == torch.float32
    expected = np.asarray(image.resize((16, 16), Image.Resampling.BICUBIC), dtype=np.float32) / 127.5 - 1
    torch.testing.assert_close(pixels[0], torch.from_numpy(expected).permute(2, 0, 1))
    assert pixels.min() >= -1 and pixels.max() <= 1


@pytest.mark.parametrize("mode", ["RGBA", "L", "CMYK", "P", "LA", "I;16", "1"])
def test_any_image_mode_becomes_three_channels(processor, mode):
    pixels = processor(text="caption en", images=gradient_image(mode))["pixel_values"]
    assert pixels.shape == (1, 3, 16, 16)
    assert torch.isfinite(pixels).all() and pixels.min() >= -1 and pixels.max() <= 1


def test_transparent_pixels_become_white(processor):
    clear = Image.new("RGBA", (16, 16), (255, 0, 0, 0))  # fully transparent red
    pixels = processor(text="caption en", images=clear)["pixel_values"]
    torch.testing.assert_close(pixels, torch.ones(1, 3, 16, 16))


def test_greyscale_is_replicated_into_three_equal_channels(processor):
    pixels = processor(text="caption en", images=gradient_image("L"))["pixel_values"][0]
    assert torch.equal(pixels[0], pixels[1]) and torch.equal(pixels[1], pixels[2])


def test_batch_left_padding_and_suffix(processor):
    out = processor(text=["caption en", "en"], images=[gradient_image(), gradient_image("L")],
                    suffix=["a red circle", "blue"])
    ids, mask, types, labels = out["input_ids"], out["attention_mask"], out["token_type_ids"], out["labels"]
    row0 = [96] * 16 + [2, 5, 6, 3] + [7, 8, 10, 1]  # prompt, then "a red circle" <eos>
    row1 = [96] * 16 + [2, 6, 3] + [9, 1]
    assert ids[0].tolist() == row0
    assert ids[1].tolist() == [0] * (len(row0) - len(row1)) + row1  # left padded with <pad>
    assert mask[1].tolist() == [0] * 3 + [1] * len(row1)
    assert types[0].tolist() == [0] * 20 + [1] * 4
    assert labels[0].tolist() == [-100] * 20 + [7, 8, 10, 1]
    assert labels[1].tolist() == [-100] * (len(row0) - 2) + [9, 1]
    assert out["pixel_values"].shape == (2, 3, 16, 16)


def test_decode_skips_special_tokens(processor):
    assert processor.decode([7, 8, 10, 1, 0]) == "a red circle"
    assert processor.batch_decode(torch.tensor([[7, 9], [8, 11]])) == ["a blue", "red square"]


def test_bad_inputs(processor, tmp_path):
    with pytest.raises(ValueError, match="2 prompts and 1 images"):
        processor(text=["caption en", "en"], images=[gradient_image()])
    with pytest.raises(TypeError, match="PIL.Image.Image"):
        processor(text="caption en", images=[np.zeros((4, 4, 3))])
    with pytest.raises(ValueError, match="suffixes"):
        processor(text=["caption en"], images=[gradient_image()], suffix=["a", "b"])
    with pytest.raises(TypeError, match="tokenizers.Tokenizer"):
        PaliGemmaProcessor("tokenizer.json", 16, 16)
    with pytest.raises(ValueError, match="no '<img>' token"):
        PaliGemmaProcessor(tiny_tokenizer(), 16, 16, image_token="<img>")
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        PaliGemmaProcessor.from_pretrained(tmp_path)
