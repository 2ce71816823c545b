"""Command line.

  python -m paligemma                      the decoder's architecture and a tiny random forward pass
  python -m paligemma generate             the shipped PaliGemma-nano captions a freshly drawn scene
  python -m paligemma generate --prompt "detect red circle"
  python -m paligemma generate --model DIR --image PATH --prompt "caption en"
                                           caption / answer / detect with a checkpoint folder, streamed
  python -m paligemma generate --model gemma-3-270m --prompt "The capital of France is"
                                           the real Gemma 3 270M (or any Gemma GGUF file / folder) continues text
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

import torch

from . import GemmaConfig, GemmaForCausalLM, KVCache
from .cli_checks import (OneLineParser, device_arg, image_format_problem, non_negative_int_arg, positive_float_arg,
                         positive_int_arg, probability_arg, seed_arg, streamed_decoding_options,
                         writable_file_problem)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
QUANTIZE_MODES = ("int8", "int8-dynamic", "int4")  # paligemma.quantization.MODES, without importing it here


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
    """The image, fully decoded; an image over Pillow's pixel limit (a decompression bomb?) is refused."""
    from PIL import Image, UnidentifiedImageError

    from .files import CheckpointError, regular_file

    try:
        regular_file(path, "image file")
    except (FileNotFoundError, CheckpointError) as err:
        raise SystemExit(f"error: {err}") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()
                return image.copy()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise SystemExit(f"error: {path} is too large to decode safely ({err})") from None
    except MemoryError:
        raise SystemExit(f"error: not enough memory to decode {path}; shrink the image first") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as err:
        raise SystemExit(f"error: {path} is not an image Pillow can read ({err})") from None


def load_model(args: argparse.Namespace):
    """The checkpoint of --model (default: the shipped PaliGemma-nano) in --dtype on --device; errors in one line."""
    from . import PaliGemmaForConditionalGeneration, PaliGemmaProcessor

    folder, dtype = args.model, args.dtype and DTYPES[args.dtype]
    if folder is None:  # the embedded default: PaliGemma-nano, trained on synthetic scenes, in float32 unless asked
        from .nano import checkpoint_path
        folder, dtype = checkpoint_path(), dtype or torch.float32
    elif not folder.is_dir():
        raise SystemExit(f"error: model folder {folder} does not exist (expected a PaliGemma checkpoint folder "
                         "with config.json, model.safetensors and tokenizer.json)")
    elif not (folder / "tokenizer.json").exists():
        raise SystemExit(f"error: {folder} has no tokenizer.json; copy the checkpoint's tokenizer.json there")
    try:
        model = PaliGemmaForConditionalGeneration.from_pretrained(folder, dtype=dtype, device=torch.device(args.device))
        processor = PaliGemmaProcessor.from_pretrained(folder)
    except torch.OutOfMemoryError:
        raise SystemExit(f"error: not enough memory on {args.device} to load {folder}") from None
    except (OSError, ValueError, TypeError) as err:  # CheckpointError is a ValueError; config errors too
        raise SystemExit(f"error: cannot load {folder}: {err}") from None
    from .cli_text import apply_quantize
    return apply_quantize(model, args), processor


def draw_scene(args: argparse.Namespace):
    """No --image: draw a nano scene (PaliGemma-nano has never seen it), say what is in it, save it if asked."""
    from .nano import make_scene
    from .nano.evaluation import scene_seed_for

    seed, note = scene_seed_for(args.prompt, args.scene_seed)  # a detect prompt gets a scene holding its object
    scene = make_scene(seed)
    saved = "; --save-scene FILE saves it"
    if args.save_scene is not None:
        try:
            scene.image.save(args.save_scene)
        except (OSError, ValueError) as err:
            raise SystemExit(f"error: cannot save the scene to {args.save_scene}: {err}") from None
        saved = f", saved to {args.save_scene}"
    boxes = "; ".join(f"{obj.name} at {list(obj.box)}" for obj in scene.objects)
    print(f"drew scene {seed} (--scene-seed {seed} draws it again{saved})\n"
          f"it holds {scene.caption} (boxes y_min, x_min, y_max, x_max in pixels: {boxes})" + (note and f"\n{note}"))
    return scene.image


def check_outputs(args: argparse.Namespace) -> None:
    """Refuse a --save-scene that cannot be written before the model is loaded (nothing is written here)."""
    if args.save_scene is None:
        return
    if args.image is not None:
        raise SystemExit("error: --save-scene saves the drawn scene, but --image was given: nothing is drawn")
    problem = writable_file_problem(args.save_scene) or image_format_problem(args.save_scene)
    if problem:
        raise SystemExit(f"error: --save-scene {args.save_scene}: {problem}")


def run_generate(args: argparse.Namespace) -> int:
    """Check the flags, read the image, load the checkpoint, then (no --image) draw a scene; stream the answer."""
    from .cli_text import is_text_model, run_text_generation
    from .generation import generate

    if is_text_model(args.model):
        return run_text_generation(args, args.dtype and DTYPES[args.dtype])
    if args.prompt is None:
        args.prompt = "caption en"
    check_outputs(args)
    image = load_image(args.image) if args.image is not None else None
    model, processor = load_model(args)  # a bad --model fails here, before a scene is drawn or saved
    if image is None:
        image = draw_scene(args)
    if args.image is None:
        print(f"prompt: {args.prompt}\nanswer: ", end="", flush=True)
    try:
        generate(model, processor, [image], [args.prompt], **streamed_decoding_options(args))
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    print()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m paligemma", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("demo", help="architecture + a tiny random forward pass (the default)").set_defaults(run=demo)
    gen = commands.add_parser("generate", help="run a PaliGemma checkpoint on an image and a prompt, or a Gemma on text",
                              description="Caption, answer or detect (or continue text with a Gemma): the answer is "
                                          "printed as it is generated.")
    gen.add_argument("--model", type=Path,
                     help="PaliGemma checkpoint folder: config.json, model.safetensors (or shards + index), "
                          "tokenizer.json (default: the shipped PaliGemma-nano, trained on synthetic shapes); or a "
                          "text-only Gemma: a GGUF file, a Gemma folder, or gemma-3-270m (the installed real model)")
    gen.add_argument("--image", type=Path,
                     help="image file (any format Pillow reads); without it, a fresh nano scene is drawn")
    gen.add_argument("--scene-seed", type=non_negative_int_arg,
                     help="without --image: which scene to draw, 0 or more (default: a random held-out one)")
    gen.add_argument("--save-scene", type=Path, metavar="FILE",
                     help="without --image: also save the drawn scene to FILE (.png, .jpg, ...); "
                          "by default nothing is written")
    gen.add_argument("--prompt",
                     help='task prompt, e.g. "caption en" (the default for image models), "detect red circle", '
                          '"answer en how many shapes?"; for a text model, the text to continue')
    gen.add_argument("--max-new-tokens", type=positive_int_arg, default=64,
                     help="most tokens to generate (default: %(default)s)")
    gen.add_argument("--temperature", type=positive_float_arg,
                     help="sample with this temperature (> 0) instead of greedy decoding")
    gen.add_argument("--top-p", type=probability_arg,
                     help="sample from the smallest set of tokens holding this probability, in (0, 1]")
    gen.add_argument("--top-k", type=positive_int_arg, help="sample from the k most likely tokens")
    gen.add_argument("--seed", type=seed_arg, help="random seed from 0 to 2**64 - 1, for reproducible sampling")
    fast = gen.add_mutually_exclusive_group()
    fast.add_argument("--compile", action="store_true",
                      help="compile the decode step (CUDA graphs on a GPU): slower start, faster tokens")
    fast.add_argument("--native", action="store_true",
                      help="run each decode step through our C step (CPU, one prompt, float32 or --quantize "
                           "weights): the fastest CPU decoding, no compilation wait")
    gen.add_argument("--device", type=device_arg, default="cuda" if torch.cuda.is_available() else "cpu",
                     help="cpu, cuda or cuda:N (default: %(default)s)")
    gen.add_argument("--quantize", choices=QUANTIZE_MODES,
                     help="decode with quantized weights on the CPU: int8 (weight-only), int8-dynamic (activations "
                          "rounded to int8 too), int4 (4-bit weights, int8 activations: the fastest, at some quality "
                          "cost)")
    gen.add_argument("--dtype", choices=sorted(DTYPES),
                     help="weights' dtype (default: float32 for the shipped nano model; for --model, "
                          "bfloat16 on cuda and float32 on cpu)")
    gen.set_defaults(run=run_generate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return getattr(args, "run", demo)(args)
    except BrokenPipeError:  # the reader went away (`... | head`): stop quietly, as command-line tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        return 1


if __name__ == "__main__":
    sys.exit(main())
