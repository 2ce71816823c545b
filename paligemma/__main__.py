"""Command line: `python -m paligemma` shows the decoder's architecture and runs a tiny random forward pass."""

from __future__ import annotations

import argparse
import sys

import torch

from . import GemmaConfig, GemmaForCausalLM, KVCache


def demo(_: argparse.Namespace) -> int:
    """Print the real decoder's shape, then run a tiny random Gemma with and without the KV cache."""
    real = GemmaConfig()
    with torch.device("meta"):
        n_params = sum(p.numel() for p in GemmaForCausalLM(real).parameters())
    print(f"PaliGemma-3B's Gemma decoder: {real.num_hidden_layers} layers, hidden {real.hidden_size}, "
          f"{real.num_attention_heads} query heads sharing {real.num_key_value_heads} KV head, "
          f"head_dim {real.head_dim}, MLP {real.intermediate_size}, vocab {real.vocab_size:,}: "
          f"{n_params:,} parameters\n")

    torch.manual_seed(0)
    config = GemmaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=1, head_dim=16)
    model = GemmaForCausalLM(config).eval()
    print(model, "\n")
    prompt = torch.tensor([[2, 17, 42, 99, 7]])
    with torch.no_grad():
        logits = model(input_ids=prompt)["logits"]
        print(f"input_ids {tuple(prompt.shape)} -> logits {tuple(logits.shape)}")
        cache, tokens, step = KVCache(), [], prompt
        for _ in range(8):  # greedy decoding, one new token per step thanks to the cache
            step = model(input_ids=step, kv_cache=cache)["logits"][:, -1:].argmax(-1)
            tokens.append(step.item())
    print(f"greedy continuation of {prompt[0].tolist()} with a KV cache: {tokens}")
    print("(random weights: with lm_head tied to the embeddings, the last token scores itself highest)")
    print(f"tokens in the cache: {cache.num_items()} (5 prompt + 7 fed back)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m paligemma", description=__doc__)
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("demo", help="architecture + a tiny random forward pass (the default)").set_defaults(run=demo)
    args = parser.parse_args(argv)
    return getattr(args, "run", demo)(args)


if __name__ == "__main__":
    sys.exit(main())
