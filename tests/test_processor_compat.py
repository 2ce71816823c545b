"""PaliGemmaProcessor against transformers' processor: pixel values for every Pillow mode (SigLIP's image
processor, same size / resample / rescale / normalisation), token ids for prompts holding a literal <image>,
and a clear TypeError / ValueError naming the argument for everything else."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import tiny_tokenizer
from paligemma import PaliGemmaProcessor

transformers = pytest.importorskip("transformers")
SIZE = 16


@pytest.fixture(scope="module")
def ours():
    return PaliGemmaProcessor(tiny_tokenizer(), image_size=SIZE, num_image_tokens=16)


@pytest.fixture(scope="module")
def theirs():
    """transformers' PaliGemmaProcessor with the same tokenizer and SigLIP's PIL image processor."""
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=tiny_tokenizer(), bos_token="<bos>",
                                                     eos_token="<eos>", pad_token="<pad>", unk_token="<unk>")
    image_processor = transformers.SiglipImageProcessorPil(size={"height": SIZE, "width": SIZE},
                                                           resample=Image.Resampling.BICUBIC, do_rescale=True,
                                                           rescale_factor=1 / 255, do_normalize=True,
                                                           image_mean=[0.5] * 3, image_std=[0.5] * 3)
    image_processor.image_seq_length = 16
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # its "no <image> in the text" advice is expected here
    yield transformers.PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer)
    transformers.logging.set_verbosity(verbosity)


def png_round_trip(image: Image.Image, **save_args) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **save_args)
    return Image.open(io.BytesIO(buffer.getvalue()))


def images_of_every_mode():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    alpha = rng.integers(0, 256, (30, 40, 1), dtype=np.uint8)
    rgba = Image.fromarray(np.concatenate([rgb, alpha], -1), "RGBA")
    rgb[::3, ::2] = (10, 200, 30)  # a colour that the RGB+tRNS image marks transparent
    palette = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=32)
    return {
        "RGB": Image.fromarray(rgb),
        "RGBA": rgba,
        "LA": rgba.convert("LA"),
        "L": Image.fromarray(rgb).convert("L"),
        "1": Image.fromarray(rgb).convert("1"),
        "CMYK": Image.fromarray(rgb).convert("CMYK"),
        "P": palette,
        "P+transparency": png_round_trip(palette, transparency=3),
        "RGB+tRNS": png_round_trip(Image.fromarray(rgb), transparency=(10, 200, 30)),
        "I;16": Image.fromarray(rng.integers(0, 65536, (30, 40), dtype=np.uint16)),
        "I;16 PNG": png_round_trip(Image.fromarray(rng.integers(0, 1024, (30, 40), dtype=np.uint16))),
        "I": Image.fromarray(rng.integers(-1000, 70_000, (30, 40)).astype(np.int32)),
        "F": Image.fromarray(rng.uniform(-10, 300, (30, 40)).astype(np.float32)),
    }


@pytest.mark.parametrize("name, image", list(images_of_every_mode().items()))
def test_pixels_equal_transformers_siglip_image_processor(ours, theirs, name, image):
    if name == "RGB+tRNS":
        assert image.mode == "RGB" and image.info["transparency"] == (10, 200, 30)
    expected = theirs.image_processor(image, return_tensors="np")["pixel_values"]
    got = ours(text="caption en", images=image)["pixel_values"]
    assert got.shape == expected.shape == (1, 3, SIZE, SIZE)
    torch.testing.assert_close(got, torch.from_numpy(expected).float(), atol=1e-6, rtol=0)


def test_transparent_colour_of_an_rgb_png_becomes_white(ours):
    image = png_round_trip(Image.new("RGB", (8, 8), (10, 200, 30)), transparency=(10, 200, 30))
    torch.testing.assert_close(ours(text="caption en", images=image)["pixel_values"], torch.ones(1, 3, SIZE, SIZE))


PROMPTS = ["caption en", "<image>caption en", "caption <image> en", "caption en <image>", "<image>"]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_token_ids_equal_transformers_processor(ours, theirs, prompt):
    image = Image.new("RGB", (20, 10), (200, 30, 30))
    expected = theirs(text=prompt, images=image, return_tensors="np")
    got = ours(text=prompt, images=image)
    assert got["input_ids"].tolist() == expected["input_ids"].tolist()
    assert got["attention_mask"].tolist() == expected["attention_mask"].tolist()
    assert (got["input_ids"] == 96).sum() == 16  # one image's tokens, never a 17th from the literal <image>


def test_suffix_ids_labels_and_token_types_equal_transformers(ours, theirs):
    image = Image.new("RGB", (20, 10), (20, 30, 200))
    expected = theirs(text="<image>caption en", images=image, suffix="a blue square", return_tensors="np")
    got = ours(text="<image>caption en", images=image, suffix="a blue square")
    for key in ("input_ids", "token_type_ids", "labels"):
        assert got[key].tolist() == expected[key].tolist(), key


def test_prompts_with_and_without_image_mix_in_one_batch(ours):
    """transformers refuses a batch where only some prompts hold <image>; ours reads each prompt by itself."""
    image = Image.new("RGB", (20, 10))
    mixed = ours(text=["<image>caption en", "caption en"], images=[image, image])["input_ids"]
    assert mixed[0].tolist() == mixed[1].tolist() == ours(text="caption en", images=image)["input_ids"][0].tolist()


BAD_CALLS = [  # (keyword arguments, error type, words of the message)
    (dict(text=None), TypeError, "text must be a str or a list of str, got NoneType"),
    (dict(text=5), TypeError, "text must be a str or a list of str, got int"),
    (dict(text=b"caption en"), TypeError, "text must be a str or a list of str, got bytes"),
    (dict(text=["caption en", 3], images=[Image.new("RGB", (4, 4))] * 2), TypeError,
     r"text\[1\] is a int, expected a str"),
    (dict(images=None), TypeError, "images must be a PIL.Image.Image or a list of them, got NoneType"),
    (dict(images=np.zeros((4, 4, 3), np.uint8)), TypeError,
     "images must be a PIL.Image.Image or a list of them, got ndarray"),
    (dict(images="photo.jpg"), TypeError, "images must be a PIL.Image.Image or a list of them, got str"),
    (dict(images=[torch.zeros(3, 4, 4)]), TypeError, r"images\[0\] is a Tensor, expected a PIL.Image.Image"),
    (dict(images=Image.new("RGB", (0, 0))), ValueError, r"images\[0\] is 0x0 pixels"),
    (dict(images=Image.new("L", (5, 0))), ValueError, r"images\[0\] is 5x0 pixels"),
    (dict(text="<image><image>caption"), ValueError,
     r"text\[0\] holds 2 '<image>' placeholders; a prompt may hold one"),
    (dict(suffix="a <image> circle"), ValueError, r"suffix\[0\] holds 1 '<image>' placeholders; .* a suffix none"),
    (dict(suffix=7), TypeError, "suffix must be a str or a list of str, got int"),
    (dict(suffix=[None]), TypeError, r"suffix\[0\] is a NoneType, expected a str"),
]


@pytest.mark.parametrize("arguments, error, words", BAD_CALLS)
def test_bad_arguments_are_named(ours, arguments, error, words):
    call = dict(text="caption en", images=Image.new("RGB", (4, 4)))
    call.update(arguments)
    with pytest.raises(error, match=words):
        ours(**call)


def test_an_image_pillow_cannot_decode_is_a_value_error(ours, tmp_path):
    path = tmp_path / "cut.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:300])  # the header survives, the pixels do not
    with pytest.raises(ValueError, match=r"images\[0\] \(mode RGB\) cannot be read as RGB"):
        ours(text="caption en", images=Image.open(path))
