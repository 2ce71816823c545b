"""The Gemma decoder: MLP, pre-norm decoder layer, the stack, and the causal LM with a tied lm_head."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .attention import GemmaAttention
from .configuration import GemmaConfig
from .kv_cache import KVCache
from .loss import IGNORE_INDEX, causal_lm_loss, check_logits_to_keep
from .masks import additive_mask, allowed_positions
from .rmsnorm import GemmaRMSNorm
from .rope import GemmaRotaryEmbedding
from .stacked_linear import apply_each
from .weights import CheckpointError, load_checkpoint, save_checkpoint

__all__ = ["GemmaConfig", "KVCache", "GemmaMLP", "GemmaDecoderLayer", "GemmaModel", "GemmaForCausalLM",
           "causal_lm_loss", "IGNORE_INDEX"]

class GemmaMLP(nn.Module):
    r"""Gated feed-forward: $\mathrm{down}(\mathrm{gelu_{tanh}}(\mathrm{gate}(x)) \odot \mathrm{up}(x))$."""

    def __init__(self, config: GemmaConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = apply_each((self.gate_proj, self.up_proj), x)  # one product where quantize stacked them
        return self.down_proj(F.gelu(gate, approximate="tanh") * up)


class GemmaDecoderLayer(nn.Module):
    """x + attn(norm(x)), then x + mlp(norm(x)): normalise before each block, add the result back."""

    attention_class = GemmaAttention

    def __init__(self, config: GemmaConfig, layer_idx: int):
        super().__init__()
        self.attention_type = config.layer_attention_types[layer_idx]  # "full_attention" in Gemma 1
        self.self_attn = self.attention_class(config, layer_idx)
        self.mlp = GemmaMLP(config)
        self.input_layernorm = GemmaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = GemmaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, hidden_states, position_embeddings, attention_mask=None, kv_cache=None, cache_position=None):
        hidden_states = hidden_states + self.self_attn(self.input_layernorm(hidden_states), position_embeddings,
                                                       attention_mask, kv_cache, cache_position)
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))


class GemmaModel(nn.Module):
    """Token embeddings -> N decoder layers -> final RMSNorm. Returns hidden states (B, T, hidden)."""

    layer_class = GemmaDecoderLayer

    def __init__(self, config: GemmaConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(self.layer_class(config, i) for i in range(config.num_hidden_layers))
        self.norm = GemmaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = GemmaRotaryEmbedding(config.head_dim, config.rope_theta)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Look up tokens and scale by sqrt(hidden_size), rounded to the weights' dtype (45.25 in bfloat16)."""
        embeds = self.embed_tokens(input_ids)
        return embeds * torch.tensor(self.config.embed_scale, dtype=embeds.dtype)

    def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None, position_ids=None,
                kv_cache: KVCache | None = None, bidirectional: torch.Tensor | None = None) -> torch.Tensor:
        """`inputs_embeds` are used as given (already scaled); `bidirectional` (B, T) marks prefix tokens."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if input_ids is not None:
            self._check_input_ids(input_ids)
            inputs_embeds = self.embed(input_ids)
        elif not isinstance(inputs_embeds, torch.Tensor) or inputs_embeds.dim() != 3 \
                or inputs_embeds.shape[-1] != self.config.hidden_size:
            raise ValueError(f"inputs_embeds must have shape (batch, seq_len, {self.config.hidden_size}), "
                             f"got {tuple(getattr(inputs_embeds, 'shape', ())) or type(inputs_embeds).__name__}")
        batch, length, _ = inputs_embeds.shape
        past = kv_cache.num_items() if kv_cache is not None else 0
        if length == 0:
            raise ValueError("the input sequence is empty (seq_len 0)")
        if past + length > self.config.max_position_embeddings:
            raise ValueError(f"sequence of {past + length} tokens ({past} cached + {length} new) is longer than "
                             f"max_position_embeddings={self.config.max_position_embeddings}")
        if attention_mask is not None and tuple(attention_mask.shape) != (batch, past + length):
            raise ValueError(f"attention_mask must cover the cached and new tokens: expected shape "
                             f"({batch}, {past + length}), got {tuple(attention_mask.shape)}")
        if bidirectional is not None and tuple(bidirectional.shape) != (batch, length):
            raise ValueError(f"bidirectional must have shape ({batch}, {length}), got {tuple(bidirectional.shape)}")
        position_ids = self._position_ids(position_ids, attention_mask, batch, past, length, inputs_embeds.device)

        allowed = None  # one decode step with no padding may attend to everything: no mask at all
        if attention_mask is not None or bidirectional is not None or length > 1:
            allowed = allowed_positions(length, past, attention_mask, bidirectional, batch, inputs_embeds.device)
        hidden_states = inputs_embeds
        inputs = self.layer_inputs(hidden_states, position_ids, allowed, past, bidirectional)
        for layer, (position_embeddings, mask) in zip(self.layers, inputs):
            hidden_states = layer(hidden_states, position_embeddings, mask, kv_cache)
        return self.norm(hidden_states)

    def layer_inputs(self, hidden_states, position_ids, allowed, past_length, bidirectional) -> list[tuple]:
        """Per layer: (cos, sin) and the additive mask (B, 1, T, S). In Gemma 1 every layer gets the same."""
        position_embeddings = self.rotary_emb(hidden_states, position_ids)  # cos, sin: (B, T, head_dim)
        mask = None if allowed is None else additive_mask(allowed, hidden_states.dtype)
        return [(position_embeddings, mask)] * len(self.layers)

    def decode_layer_inputs(self, hidden_states, position_ids, cache_position, key_mask) -> list[tuple]:
        """The same for one new token per row over a preallocated cache of L slots (notebook 11's static decoding):
        slots after `cache_position` are not written yet, and key_mask (B, L) is False at padding."""
        slots = torch.arange(key_mask.shape[1], device=hidden_states.device)
        allowed = (slots <= cache_position)[None, None, :] & key_mask[:, None, :]  # (B, 1, L)
        return self.layer_inputs(hidden_states, position_ids, allowed, None, None)

    def _check_input_ids(self, input_ids) -> None:
        if not isinstance(input_ids, torch.Tensor):
            raise ValueError(f"input_ids must be a torch tensor of token ids with shape (batch, seq_len), got a "
                             f"{type(input_ids).__name__} (use torch.tensor([[...]]))")
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must have shape (batch, seq_len), got {tuple(input_ids.shape)}"
                             + ("; add a batch axis with input_ids[None]" if input_ids.dim() == 1 else ""))
        if input_ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"input_ids must be integer token ids, got dtype {input_ids.dtype}")
        if input_ids.numel() and (input_ids.min() < 0 or input_ids.max() >= self.config.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.config.vocab_size}), got values from "
                             f"{int(input_ids.min())} to {int(input_ids.max())}")

    @staticmethod
    def _position_ids(position_ids, attention_mask, batch, past, length, device):
        """Default positions count real tokens only, so left padding does not shift them."""
        if position_ids is not None:
            if position_ids.dim() != 2 or position_ids.shape[-1] != length or position_ids.shape[0] not in (1, batch):
                raise ValueError(f"position_ids must have shape ({batch}, {length}), got {tuple(position_ids.shape)}")
            return position_ids
        if attention_mask is None:
            return torch.arange(past, past + length, device=device)[None]  # (1, T)
        return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, past:]  # (B, T)


class GemmaForCausalLM(nn.Module):
    """GemmaModel + lm_head tied to the embedding table: hidden states -> next-token logits."""

    config_class = GemmaConfig
    model_class = GemmaModel
    generations: ClassVar[dict[type, type]] = {}  # config class -> causal LM class, filled by subclasses

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        GemmaForCausalLM.generations[cls.config_class] = cls

    def __init__(self, config: GemmaConfig):
        super().__init__()
        if type(config) is not self.config_class:
            raise TypeError(f"{type(self).__name__} builds a {self.config_class.__name__} model, got a "
                            f"{type(config).__name__}: use GemmaForCausalLM.for_config(config), which picks the class")
        self.config = config
        self.model = self.model_class(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.apply(init_weights)
        self.tie_weights()

    @classmethod
    def for_config(cls, config: GemmaConfig) -> GemmaForCausalLM:
        """The causal LM of the config's generation: GemmaConfig -> GemmaForCausalLM, Gemma2Config -> Gemma2..."""
        return GemmaForCausalLM.generations[type(config)](config)

    def tie_weights(self) -> None:
        self.lm_head.weight = self.model.embed_tokens.weight

    def logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Final hidden states (B, T, hidden) -> next-token scores (B, T, vocab)."""
        return self.lm_head(hidden_states)

    def new_kv_cache(self, max_length: int | None = None) -> KVCache:
        """An empty cache for this model (Gemma 2 and 3 keep only a window in their local layers)."""
        return KVCache(max_length=max_length)

    def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None, position_ids=None,
                kv_cache: KVCache | None = None, logits_to_keep: int = 0, labels: torch.Tensor | None = None) -> dict:
        """{"logits": (B, T, vocab), "kv_cache"}; "loss" with `labels`; `logits_to_keep=n` keeps the last n only."""
        check_logits_to_keep(logits_to_keep, labels)
        hidden = self.model(input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                            position_ids=position_ids, kv_cache=kv_cache)
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        out = {"logits": self.logits(hidden), "kv_cache": kv_cache}
        if labels is not None:
            out["loss"] = causal_lm_loss(out["logits"], labels)
        return out

    def generate(self, input_ids, attention_mask=None, **kwargs) -> torch.Tensor:
        """Token-level decoding; see `paligemma.generation.generate_tokens` for the arguments."""
        from .generation import generate_tokens  # generation builds on the models, not the reverse
        return generate_tokens(self, input_ids, attention_mask=attention_mask, **kwargs)

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: torch.dtype | None = None,
                        device: torch.device | str | None = None, attn_implementation: str | None = None):
        """Load a Hugging Face checkpoint folder of any Gemma generation (config.json + safetensors), or a
        llama.cpp GGUF file (`model.gguf`, or the short name "gemma-3-270m" of the installed real model)."""
        from .gguf_loading import GEMMA3_270M, is_gguf, load_gguf_model, resolve_model_file  # notebook 13

        if is_gguf(path) or str(path) == GEMMA3_270M:
            model = load_gguf_model(resolve_model_file(path), dtype, device, attn_implementation)
            if not isinstance(model, cls):
                raise ValueError(f"{path} holds a {model.config.model_type!r} model, not a {cls.__name__}")
            return model
        config = GemmaConfig.from_pretrained(path)
        if attn_implementation is not None:
            config.attn_implementation = attn_implementation
            config.__post_init__()
        target = GemmaForCausalLM.generations[type(config)]
        if not issubclass(target, cls):
            raise ValueError(f"{path} holds a {config.model_type!r} model; load it with GemmaForCausalLM."
                             f"from_pretrained (or {target.__name__})")
        with torch.device("meta"):
            model = target(config)
        load_checkpoint(model, path, rename=lambda key: key, optional={"lm_head.weight"}, dtype=dtype, device=device)
        return model._finish_loading()

    def _finish_loading(self):
        lm_head, embed = self.lm_head.weight, self.model.embed_tokens.weight
        if lm_head is not embed and lm_head.device.type != "meta" and not torch.equal(lm_head, embed):
            raise CheckpointError("lm_head.weight differs from model.embed_tokens.weight, "
                                  "but Gemma ties them (tie_word_embeddings=True)")
        self.tie_weights()
        for module in self.modules():
            if isinstance(module, GemmaRotaryEmbedding):
                module.reset_parameters(device=embed.device)
        return self.eval()

    def save_pretrained(self, path: str | Path, max_shard_size: int | None = None) -> None:
        """Write config.json + model.safetensors (sharded above `max_shard_size` bytes) for transformers too."""
        if getattr(self, "quantized", None):
            raise ValueError(f"this model was quantized for decoding ({self.quantized}); save the original instead")
        state = {k: v for k, v in self.state_dict().items() if k != "lm_head.weight"}  # tied: stored once
        config = self.config.to_hf_dict()
        config["dtype"] = str(self.model.embed_tokens.weight.dtype).removeprefix("torch.")
        save_checkpoint(state, config, path, max_shard_size)


GemmaForCausalLM.generations[GemmaConfig] = GemmaForCausalLM


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """Gemma's initialisation: N(0, 0.02) for linear layers and embeddings, zeros for biases and norm weights."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=std)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, GemmaRMSNorm):
        nn.init.zeros_(module.weight)
