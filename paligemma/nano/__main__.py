"""python -m paligemma.nano train --out DIR [--steps N] | evaluate [--model DIR] [--n 200]"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import torch

from ..cli_checks import OneLineParser, non_negative_int_arg, positive_int_arg, seed_arg


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="python -m paligemma.nano", description="Train or evaluate PaliGemma-nano.")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train on fresh synthetic scenes and save a checkpoint folder")
    train.add_argument("--out", type=Path, required=True, help="folder for config.json, model.safetensors, "
                       "tokenizer.json and training_runs.json")
    train.add_argument("--steps", type=positive_int_arg, default=8000, help="optimiser steps (default: %(default)s)")
    train.add_argument("--batch-size", type=positive_int_arg, default=32, help="scenes per step (default: %(default)s)")
    train.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (default: %(default)s)")
    train.add_argument("--warmup", type=non_negative_int_arg, default=200, help="warm-up steps (default: %(default)s)")
    train.add_argument("--seed", type=seed_arg, default=0, help="random seed (default: %(default)s)")
    train.add_argument("--init", type=Path, help="continue from this checkpoint folder instead of from scratch")
    train.add_argument("--save-every", type=positive_int_arg, help="also save OUT/step-N every N steps")
    train.add_argument("--threads", type=positive_int_arg, help="torch CPU threads (default: torch's choice)")
    train.add_argument("--force", action="store_true",
                       help="write into --out even if it already holds files (they are replaced)")
    evaluate = commands.add_parser("evaluate", help="caption, detection (single-target and multi-match) and "
                                   "counting scores on held-out scenes")
    evaluate.add_argument("--model", type=Path, help="checkpoint folder (default: the shipped nano checkpoint)")
    evaluate.add_argument("--n", type=positive_int_arg, default=200, help="held-out scenes (default: %(default)s)")
    evaluate.add_argument("--seed", type=seed_arg, default=0,
                          help="which held-out set, 0 or more (default: %(default)s)")
    args = parser.parse_args(argv)

    if args.command == "train" and not (math.isfinite(args.lr) and args.lr > 0):
        parser.error(f"--lr must be a positive, finite number, got {args.lr}")
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    from . import evaluate as run_evaluation, load
    from .training import TrainingDiverged, train as run_training

    if args.command == "train":
        if args.init is not None:
            checked_load(parser, "--init", args.init, load)  # a broken --init fails now, not after --out is prepared
        try:
            prepare_output_folder(args.out, args.force)
        except (FileExistsError, OSError) as error:
            parser.error(str(error))
        try:
            run_training(args.out, steps=args.steps, batch_size=args.batch_size, peak_lr=args.lr, warmup=args.warmup,
                         seed=args.seed, init=args.init, save_every=args.save_every)
        except TrainingDiverged as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        print(f"saved to {args.out}")
    else:
        model, processor = checked_load(parser, "--model", args.model, load) if args.model is not None else load()
        print(json.dumps(run_evaluation(model, processor, n=args.n, seed=args.seed), indent=2))
    return 0


def checked_load(parser, flag: str, folder: Path, load):
    """(model, processor) of a checkpoint folder, or one error line naming the flag and what is wrong."""
    if not (folder / "config.json").exists():
        parser.error(f"{flag} {folder} is not a checkpoint folder (no config.json)")
    try:
        return load(folder)
    except (OSError, ValueError, TypeError) as error:  # CheckpointError is a ValueError
        parser.error(f"{flag} {folder} cannot be loaded: {error}")


def prepare_output_folder(out: Path, force: bool) -> None:
    """Refuse a folder that already holds files (unless --force), and prove it is writable before training."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise FileExistsError(f"--out {out} already holds files (a checkpoint?); training would replace them. "
                              "Choose a new folder, or pass --force to replace its checkpoint")
    probe = out / f".write-test-{os.getpid()}"
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
    except OSError as error:
        raise OSError(f"--out {out} is not writable: {error.strerror or error}") from None
    probe.unlink()


if __name__ == "__main__":
    sys.exit(main())
