"""Command line.

  python -m paligemma                      the decoder's architecture and a tiny random forward pass
  python -m paligemma generate             the shipped PaliGemma-nano captions a freshly drawn scene
  python -m paligemma generate --prompt "detect red circle"
  python -m paligemma generate --model DIR --image PATH --prompt "caption en"
                                           caption / answer / detect with a checkpoint folder, streamed
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from . import GemmaConfig, GemmaForCausalLM, KVCache

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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


def load_image(path: Path):
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise SystemExit(f"error: image file {path} does not exist")
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except (UnidentifiedImageError, OSError) as err:
        raise SystemExit(f"error: {path} is not an image Pillow can read ({err})") from None


def load_model(args: argparse.Namespace):
    from . import PaliGemmaForConditionalGeneration, PaliGemmaProcessor
    from .weights import CheckpointError

    folder = args.model
    if folder is None:  # the embedded default: PaliGemma-nano, trained on synthetic scenes
        from .nano import load
        return load(device=args.device)
    if not folder.is_dir():
        raise SystemExit(f"error: model folder {folder} does not exist (expected a PaliGemma checkpoint folder "
                         "with config.json, model.safetensors and tokenizer.json)")
    if not (folder / "tokenizer.json").is_file():
        raise SystemExit(f"error: {folder} has no tokenizer.json; copy the checkpoint's tokenizer.json there")
    device = torch.device(args.device)
    try:
        model = PaliGemmaForConditionalGeneration.from_pretrained(folder, dtype=args.dtype and DTYPES[args.dtype],
                                                                  device=device)
        processor = PaliGemmaProcessor.from_pretrained(folder)
    except (FileNotFoundError, CheckpointError, ValueError) as err:
        raise SystemExit(f"error: cannot load {folder}: {err}") from None
    return model, processor


def draw_scene(args: argparse.Namespace):
    """No --image: draw a nano scene (PaliGemma-nano has never seen it), save it as a PNG and say what is in it."""
    from .nano import make_scene
    from .nano.evaluation import scene_seed_for

    seed, note = scene_seed_for(args.prompt, args.scene_seed)  # a detect prompt gets a scene holding its object
    scene = make_scene(seed)
    try:
        scene.image.save(args.save_scene)
    except OSError as err:
        raise SystemExit(f"error: cannot save the scene to {args.save_scene}: {err}") from None
    boxes = "; ".join(f"{obj.name} at {list(obj.box)}" for obj in scene.objects)
    print(f"drew scene {seed} (--scene-seed {seed} draws it again), saved to {args.save_scene}\n"
          f"it holds {scene.caption} (boxes y_min, x_min, y_max, x_max in pixels: {boxes})" + (note and f"\n{note}"))
    return scene.image


def run_generate(args: argparse.Namespace) -> int:
    """Load a checkpoint, read the image, stream the answer to stdout."""
    from .generation import generate

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda asked for, but PyTorch sees no CUDA GPU")
    if args.image is not None:
        image = load_image(args.image)
    else:
        image = draw_scene(args)
    model, processor = load_model(args)
    if args.image is None:
        print(f"prompt: {args.prompt}\nanswer: ", end="", flush=True)
    sampling = args.temperature is not None or args.top_p is not None or args.top_k is not None
    try:
        generate(model, processor, [image], [args.prompt], max_new_tokens=args.max_new_tokens, do_sample=sampling,
                 temperature=args.temperature if args.temperature is not None else 1.0, top_k=args.top_k,
                 top_p=args.top_p, seed=args.seed, compile=args.compile,
                 on_token=lambda pieces: print(pieces[0], end="", flush=True))
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    print()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m paligemma", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("demo", help="architecture + a tiny random forward pass (the default)").set_defaults(run=demo)
    gen = commands.add_parser("generate", help="run a PaliGemma checkpoint on an image and a prompt",
                              description="Caption, answer or detect: the answer is printed as it is generated.")
    gen.add_argument("--model", type=Path,
                     help="checkpoint folder: config.json, model.safetensors (or shards + index), tokenizer.json "
                          "(default: the shipped PaliGemma-nano, trained on synthetic shapes)")
    gen.add_argument("--image", type=Path,
                     help="image file (any format Pillow reads); without it, a fresh nano scene is drawn and saved")
    gen.add_argument("--scene-seed", type=int, help="without --image: which scene to draw (default: a random one)")
    gen.add_argument("--save-scene", type=Path, default=Path("nano_scene.png"),
                     help="without --image: where the drawn scene is saved (default: %(default)s)")
    gen.add_argument("--prompt", default="caption en",
                     help='task prompt, e.g. "caption en", "detect red circle", "answer en how many shapes?" (default: %(default)s)')
    gen.add_argument("--max-new-tokens", type=int, default=32, help="most tokens to generate (default: %(default)s)")
    gen.add_argument("--temperature", type=float, help="sample with this temperature instead of greedy decoding")
    gen.add_argument("--top-p", type=float, help="sample from the smallest set of tokens holding this probability")
    gen.add_argument("--top-k", type=int, help="sample from the k most likely tokens")
    gen.add_argument("--seed", type=int, help="random seed, for reproducible sampling")
    gen.add_argument("--compile", action="store_true",
                     help="compile the decode step (CUDA graphs on a GPU): slower start, faster tokens")
    gen.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                     help="cpu, cuda or cuda:N (default: %(default)s)")
    gen.add_argument("--dtype", choices=sorted(DTYPES),
                     help="weights' dtype (default: bfloat16 on cuda, float32 on cpu)")
    gen.set_defaults(run=run_generate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return getattr(args, "run", demo)(args)


if __name__ == "__main__":
    sys.exit(main())
