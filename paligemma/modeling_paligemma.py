"""PaliGemma: SigLIP patch features, projected into Gemma's embedding space, read as a prefix by the decoder."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .configuration import PaliGemmaConfig
from .kv_cache import KVCache
from .loss import IGNORE_INDEX, causal_lm_loss, check_logits_to_keep
from .modeling_gemma import GemmaForCausalLM, init_weights
from .modeling_siglip import SiglipVisionModel
from .weights import load_checkpoint, save_checkpoint

__all__ = ["PaliGemmaMultiModalProjector", "PaliGemmaForConditionalGeneration", "IGNORE_INDEX",
           "causal_lm_loss", "checkpoint_key_to_ours"]

# Checkpoint key prefixes of the three layouts in circulation -> ours (the first match wins).
_KEY_PREFIXES = (
    ("model.language_model.", "language_model.model."),            # transformers 5 state_dict
    ("model.vision_tower.vision_model.", "vision_tower."),
    ("model.vision_tower.", "vision_tower."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
    ("vision_tower.vision_model.", "vision_tower."),                # hub files (transformers 4 layout)
)


def checkpoint_key_to_ours(key: str) -> str:
    """Map any supported checkpoint key to our parameter name (ours equal the transformers 5 save layout)."""
    if key == "lm_head.weight":
        return "language_model.lm_head.weight"
    for old, new in _KEY_PREFIXES:
        if key.startswith(old):
            return new + key[len(old):]
    return key


class PaliGemmaMultiModalProjector(nn.Module):
    """One linear layer: SigLIP width (1152) -> Gemma width (2048), so image patches become token embeddings."""

    def __init__(self, config: PaliGemmaConfig):
        super().__init__()
        self.linear = nn.Linear(config.vision_config.hidden_size, config.projection_dim)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        return self.linear(image_features)  # (B, N, vision_hidden) -> (B, N, text_hidden)


class PaliGemmaForConditionalGeneration(nn.Module):
    """Image + prompt -> next-token logits: `<image>` placeholders are replaced by projected SigLIP features."""

    def __init__(self, config: PaliGemmaConfig):
        super().__init__()
        self.config = config
        self.vision_tower = SiglipVisionModel(config.vision_config)
        self.multi_modal_projector = PaliGemmaMultiModalProjector(config)
        self.language_model = GemmaForCausalLM.for_config(config.text_config)  # Gemma 2 in PaliGemma 2
        self.vision_tower.apply(init_weights)
        self.multi_modal_projector.apply(init_weights)

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, num_patches, text_hidden). Not scaled by sqrt(hidden): only text embeddings are."""
        return self.multi_modal_projector(self.vision_tower(pixel_values))

    def merge_image_features(self, input_ids: torch.Tensor, inputs_embeds: torch.Tensor,
                             pixel_values: torch.Tensor | None) -> torch.Tensor:
        """Write image features, in order, over the embeddings of the `<image>` tokens."""
        image_positions = input_ids == self.config.image_token_index  # (B, T)
        per_row = image_positions.sum(-1).tolist()
        if not any(per_row):
            if pixel_values is not None:
                raise ValueError("pixel_values were given but input_ids hold no <image> token: the prompt must start "
                                 f"with {self.config.num_image_tokens} <image> tokens per image (the processor "
                                 "writes them)")
            return inputs_embeds
        if pixel_values is None:
            raise ValueError(f"input_ids hold {sum(per_row)} <image> tokens but no pixel_values were given")
        check_pixel_values(pixel_values)
        if len(set(per_row)) > 1:
            raise ValueError(f"rows of input_ids hold different numbers of <image> tokens ({per_row}): every row "
                             f"needs {self.config.num_image_tokens} per image")
        features = self.get_image_features(pixel_values)  # (B_img, N, D)
        n_features = features.shape[0] * features.shape[1]
        if n_features != sum(per_row):
            raise ValueError(f"the prompt has {sum(per_row)} <image> tokens but the images give {n_features} "
                             f"features ({features.shape[0]} image(s) x {features.shape[1]} patches); use the "
                             "processor, which writes exactly num_image_tokens placeholders per image")
        return inputs_embeds.masked_scatter(image_positions[..., None], features.to(inputs_embeds.dtype))

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Text embeddings (scaled). An <image> id outside the table (allowed, as in transformers) is looked up
        as id 0: its embedding is replaced by an image feature anyway."""
        language = self.language_model.model
        image_token = self.config.image_token_index
        ids = input_ids
        if image_token >= language.config.vocab_size:
            ids = input_ids.masked_fill(input_ids == image_token, 0)
        language._check_input_ids(ids)
        return language.embed(ids)

    def forward(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, kv_cache: KVCache | None = None,
                token_type_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, logits_to_keep: int = 0) -> dict:
        """Returns {"logits", "kv_cache"} and "loss" when `labels` are given (-100 = not scored).

        Without `token_type_ids`, a call with an empty cache treats every token as prefix (bidirectional): to
        recompute a prompt plus generated tokens in one call, pass `token_type_ids` with 1 on the generated part.
        """
        language = self.language_model.model
        check_logits_to_keep(logits_to_keep, labels)
        inputs_embeds = self.embed_tokens(input_ids)
        batch, length = input_ids.shape
        past = kv_cache.num_items() if kv_cache is not None else 0
        if past == 0:  # the prompt: images go in. Later steps find them in the KV cache; pixel_values are unused
            inputs_embeds = self.merge_image_features(input_ids, inputs_embeds, pixel_values)

        # Prefix-LM: prefix tokens (token_type 0: image + prompt) see each other both ways; suffix tokens
        # (type 1) are causal. Without token types, a first chunk is all prefix and later tokens are causal.
        bidirectional = None
        if token_type_ids is not None:
            if tuple(token_type_ids.shape) != (batch, length):
                raise ValueError(f"token_type_ids must have the shape of input_ids {(batch, length)}, "
                                 f"got {tuple(token_type_ids.shape)}")
            bidirectional = token_type_ids == 0
        elif past == 0:
            bidirectional = torch.ones(batch, length, dtype=torch.bool, device=input_ids.device)

        if position_ids is None and attention_mask is not None and attention_mask.shape[-1] == past + length:
            position_ids = attention_mask.long().cumsum(-1)[:, past:]  # (B, T), real tokens counted from 1
        elif position_ids is None:
            position_ids = torch.arange(past + 1, past + length + 1, device=input_ids.device)[None]
        hidden = language(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
                          kv_cache=kv_cache, bidirectional=bidirectional)
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.language_model.logits(hidden)  # soft-capped in PaliGemma 2
        out = {"logits": logits, "kv_cache": kv_cache}
        if labels is not None:
            out["loss"] = causal_lm_loss(logits, labels)
        return out

    def generate(self, input_ids, pixel_values=None, attention_mask=None, **kwargs) -> torch.Tensor:
        """Token-level decoding; see `paligemma.generation.generate_tokens` for the arguments."""
        from .generation import generate_tokens  # generation builds on the models, not the reverse
        return generate_tokens(self, input_ids, pixel_values=pixel_values, attention_mask=attention_mask, **kwargs)

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: torch.dtype | None = None,
                        device: torch.device | str | None = None):
        """Load a PaliGemma checkpoint folder in any of the layouts listed in DESIGN.md."""
        config = PaliGemmaConfig.from_pretrained(path)
        with torch.device("meta"):
            model = cls(config)
        load_checkpoint(model, path, rename=checkpoint_key_to_ours, optional={"language_model.lm_head.weight"},
                        dtype=dtype, device=device)
        model.language_model._finish_loading()
        model.vision_tower.embeddings.reset_parameters(device=model.language_model.lm_head.weight.device)
        return model.eval()

    def save_pretrained(self, path: str | Path, max_shard_size: int | None = None) -> None:
        """config.json + safetensors in the layout transformers writes (and reads back)."""
        state = {k: v for k, v in self.state_dict().items() if k != "language_model.lm_head.weight"}
        config = self.config.to_hf_dict()
        config["dtype"] = str(self.language_model.lm_head.weight.dtype).removeprefix("torch.")
        save_checkpoint(state, config, path, max_shard_size)


def check_pixel_values(pixel_values) -> None:
    """Images as the processor makes them: a floating-point (B, 3, H, W) tensor of finite values in about [-1, 1]."""
    if not isinstance(pixel_values, torch.Tensor):
        raise ValueError(f"pixel_values must be a torch tensor (B, 3, H, W), got a {type(pixel_values).__name__}")
    if not pixel_values.is_floating_point():
        raise ValueError(f"pixel_values must be floating point, scaled to [-1, 1] (the processor does it), got dtype "
                         f"{pixel_values.dtype}: raw 0-255 integers would be read as huge values")
    if not bool(torch.isfinite(pixel_values).all()):
        raise ValueError("pixel_values hold NaN or infinite values")
