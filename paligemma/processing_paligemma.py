"""PaliGemmaProcessor: images -> pixel_values in [-1, 1]; prompts -> `<image>`*N + `<bos>` + prompt + "\\n" token ids."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tokenizers import Tokenizer

from .files import CheckpointError, read_json_object, regular_file
from .modeling_paligemma import IGNORE_INDEX


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB with the pixel values transformers' SigLIP image processor gives.

    An image with an alpha band or a transparent colour (P or RGB PNGs with a tRNS chunk) is laid over white;
    every other mode goes through Pillow's `convert("RGB")`, which clips 16-bit, 32-bit and float greyscale
    (I;16, I, F) to 0..255 rather than rescaling it: scale such an image to 8 bits first if it uses a wider range.
    """
    transparent = "A" in image.getbands() or image.info.get("transparency") is not None
    if not transparent:
        return image if image.mode == "RGB" else image.convert("RGB")
    rgba = image.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


class PaliGemmaProcessor:
    """Turns (prompt, image) pairs into the model's inputs, left-padded into a batch.

    `suffix` (training targets) appends answer + `<eos>` with token_type_ids 1 and `labels` that score
    only those tokens; prefix and padding get token_type_ids 0 and label -100.
    """

    def __init__(self, tokenizer: Tokenizer, image_size: int, num_image_tokens: int, image_token: str = "<image>",
                 bos_token: str = "<bos>", eos_token: str = "<eos>", pad_token: str = "<pad>"):
        if not isinstance(tokenizer, Tokenizer):
            raise TypeError(f"tokenizer must be a tokenizers.Tokenizer (e.g. Tokenizer.from_file('tokenizer.json')), "
                            f"got {type(tokenizer).__name__}")
        self.tokenizer, self.image_size, self.num_image_tokens = tokenizer, image_size, num_image_tokens
        self.image_token = image_token
        ids = {}
        for name, token in (("image", image_token), ("bos", bos_token), ("eos", eos_token), ("pad", pad_token)):
            ids[name] = tokenizer.token_to_id(token)
            if ids[name] is None:
                raise ValueError(f"the tokenizer has no {token!r} token ({name})")
        self.image_token_id, self.bos_token_id = ids["image"], ids["bos"]
        self.eos_token_id, self.pad_token_id = ids["eos"], ids["pad"]

    @classmethod
    def from_pretrained(cls, path: str | Path) -> PaliGemmaProcessor:
        """tokenizer.json + the image size and token count from config.json of a checkpoint folder."""
        from .configuration import PaliGemmaConfig
        path = Path(path)
        if not (path / "tokenizer.json").exists():
            raise FileNotFoundError(f"no tokenizer.json in {path}: PaliGemmaProcessor needs the checkpoint's "
                                    "tokenizer (a tokenizers JSON file)")
        config = PaliGemmaConfig.from_dict(read_json_object(path / "config.json", "config file"))
        regular_file(path / "tokenizer.json", "tokenizer file")
        try:
            tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        except Exception as error:  # the tokenizers library raises a bare Exception for any malformed file
            raise CheckpointError(f"tokenizer file {path / 'tokenizer.json'} is not one the tokenizers library "
                                  f"can read: {str(error).splitlines()[0][:200]}") from None
        return cls(tokenizer, config.vision_config.image_size, config.num_image_tokens)

    def process_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """RGB, bicubic resize to image_size x image_size, [0, 255] -> [-1, 1]: (B, 3, S, S) float32."""
        arrays = []
        for i, image in enumerate(images):
            if not isinstance(image, Image.Image):
                raise TypeError(f"images[{i}] is a {type(image).__name__}, expected a PIL.Image.Image "
                                "(open files with PIL.Image.open)")
            if 0 in image.size:
                raise ValueError(f"images[{i}] is {image.width}x{image.height} pixels: an empty image has nothing "
                                 "to show the model")
            try:
                image = to_rgb(image).resize((self.image_size, self.image_size), Image.Resampling.BICUBIC)
            except (OSError, ValueError) as error:  # a truncated file opened lazily, or a mode Pillow cannot convert
                raise ValueError(f"images[{i}] (mode {image.mode}) cannot be read as RGB: {error}") from None
            arrays.append(np.asarray(image, dtype=np.float32) / 255.0)  # (S, S, 3) in [0, 1]
        pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)  # (B, 3, S, S)
        return (pixels - 0.5) / 0.5  # mean = std = 0.5 per channel

    def prompt_ids(self, prompt: str) -> list[int]:
        """`<image>` x num_image_tokens, `<bos>`, the prompt's tokens, "\\n"'s token(s).

        As in transformers' processor, a prompt may say where its image goes with one literal `<image>`: the
        image tokens replace it and `<bos>` follows it, so "<image>caption en" gives the ids of "caption en".
        """
        before, placeholder, after = prompt.rpartition(self.image_token)
        if not placeholder:
            before, after = "", prompt
        head = self.tokenizer.encode(before, add_special_tokens=False).ids if before else []
        text_ids = self.tokenizer.encode(after + "\n", add_special_tokens=False).ids
        return head + [self.image_token_id] * self.num_image_tokens + [self.bos_token_id] + text_ids

    def __call__(self, text: str | Sequence[str], images, suffix: str | Sequence[str] | None = None) -> dict:
        texts = self._strings(text, "text")
        if isinstance(images, Image.Image):
            images = [images]
        elif not isinstance(images, (list, tuple)):
            raise TypeError(f"images must be a PIL.Image.Image or a list of them, got {type(images).__name__}")
        if len(texts) != len(images):
            raise ValueError(f"got {len(texts)} prompts and {len(images)} images: PaliGemma takes one image per prompt")
        if not texts:
            raise ValueError("no prompts given")
        suffixes = None if suffix is None else self._strings(suffix, "suffix")
        if suffixes is not None and len(suffixes) != len(texts):
            raise ValueError(f"got {len(suffixes)} suffixes for {len(texts)} prompts")
        for name, strings in (("text", texts), ("suffix", suffixes or [])):
            for i, string in enumerate(strings):
                count = string.count(self.image_token)
                if count > (1 if name == "text" else 0):
                    raise ValueError(f"{name}[{i}] holds {count} {self.image_token!r} placeholders; a prompt may "
                                     f"hold one (where its one image goes), a suffix none")

        rows = []  # (ids, token types) per example
        for i, prompt in enumerate(texts):
            ids = self.prompt_ids(prompt)
            types = [0] * len(ids)
            if suffixes is not None:
                answer = self.tokenizer.encode(suffixes[i], add_special_tokens=False).ids + [self.eos_token_id]
                ids, types = ids + answer, types + [1] * len(answer)
            rows.append((ids, types))

        longest = max(len(ids) for ids, _ in rows)
        input_ids = torch.full((len(rows), longest), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), longest), dtype=torch.long)
        token_type_ids = torch.zeros((len(rows), longest), dtype=torch.long)
        for row, (ids, types) in enumerate(rows):  # left padding: every prompt ends at the last column
            input_ids[row, longest - len(ids):] = torch.tensor(ids)
            attention_mask[row, longest - len(ids):] = 1
            token_type_ids[row, longest - len(ids):] = torch.tensor(types)
        out = {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": self.process_images(images)}
        if suffixes is not None:
            out["token_type_ids"] = token_type_ids
            out["labels"] = input_ids.masked_fill(token_type_ids == 0, IGNORE_INDEX)
        return out

    @staticmethod
    def _strings(value, name: str) -> list[str]:
        """A str or a list/tuple of str, as a list; anything else is a TypeError naming the argument."""
        if isinstance(value, str):
            return [value]
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"{name} must be a str or a list of str, got {type(value).__name__}")
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise TypeError(f"{name}[{i}] is a {type(item).__name__}, expected a str")
        return list(value)

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def batch_decode(self, rows, skip_special_tokens: bool = True) -> list[str]:
        return [self.decode(row, skip_special_tokens) for row in rows]

    def save_pretrained(self, path: str | Path) -> None:
        """Write tokenizer.json (the image size and token count live in the model's config.json)."""
        Path(path).mkdir(parents=True, exist_ok=True)
        self.tokenizer.save(str(Path(path) / "tokenizer.json"))
