"""Command line of the benchmark: speed side by side (default) or the load-memory check."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..cli_checks import OneLineParser, device_arg, positive_int_arg, writable_file_problem
from . import __doc__ as DESCRIPTION
from .load_memory import load_peak_memory
from ..quantization import MODES as QUANTIZE_MODES
from .report import format_real_table, format_table
from .speed import DTYPES, run


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="python -m paligemma.benchmark", description=DESCRIPTION)
    parser.add_argument("--config", default="small", choices=["tiny", "small", "gemma-2b", "paligemma-3b"])
    parser.add_argument("--device", type=device_arg, default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu, cuda or cuda:N (default: %(default)s)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="default: bfloat16 on cuda, float32 on cpu")
    parser.add_argument("--new-tokens", type=positive_int_arg,
                        help="tokens generated per run, at least 2 (default: 32; 64 with --model)")
    parser.add_argument("--repeats", type=positive_int_arg, default=3,
                        help="timed runs per measurement; the median is kept (default: 3)")
    parser.add_argument("--no-transformers", action="store_true", help="skip the transformers rows")
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled rows (compiling takes a while)")
    parser.add_argument("--model", help="instead: a real model, gemma-3-270m (the installed one), a Gemma GGUF file or "
                                        "folder: ours in float32, bfloat16 and the quantized modes, transformers on the "
                                        "same file, llama.cpp when llama-cpp-python is installed")
    parser.add_argument("--threads", type=positive_int_arg, help="torch (and llama.cpp) threads (default: torch's)")
    parser.add_argument("--modes", nargs="+", choices=["float32", "bfloat16", *QUANTIZE_MODES],
                        help="with --model: which of ours to run (default: all)")
    parser.add_argument("--no-llama-cpp", action="store_true", help="with --model: skip the llama.cpp row")
    parser.add_argument("--no-quality", action="store_true",
                        help="with --model: skip the perplexity and greedy-agreement measurements")
    parser.add_argument("--load-check", action="store_true",
                        help="instead: peak memory of loading a checkpoint of this config, relative to its size")
    parser.add_argument("--json", type=Path, help="also write the report to this JSON file")
    args = parser.parse_args(argv)
    if args.new_tokens is None:
        args.new_tokens = 64 if args.model is not None else 32
    if args.new_tokens < 2:
        parser.error("--new-tokens must be at least 2 (the first token measures prefill)")
    problem = args.json and writable_file_problem(args.json)  # checked now, not after minutes of timing
    if problem:
        parser.error(f"--json {args.json}: {problem}")
    if not (args.load_check or args.no_transformers or transformers_installed()):
        parser.error("the transformers rows need the transformers package: install the dev extra "
                     "(pip install -e \".[dev]\") or pass --no-transformers")
    if args.model is not None:
        from .real_model import run_real_model
        try:
            report = run_real_model(args.model, new_tokens=args.new_tokens, repeats=args.repeats, threads=args.threads,
                                    modes=args.modes, with_transformers=not args.no_transformers,
                                    with_llama_cpp=not args.no_llama_cpp, with_compile=not args.no_compile,
                                    with_quality=not args.no_quality)
        except (OSError, ValueError) as err:  # a missing file, a broken GGUF, a model that is not a Gemma
            parser.error(f"--model {args.model}: {err}")
        print(format_real_table(report))
    elif args.load_check:
        report = load_peak_memory(args.config, args.device, args.dtype or "bfloat16")
        print(f"loading a {report['checkpoint_gb']:.2f} GB {args.config} checkpoint: host peak "
              f"{report['host_peak_gb']:.2f} GB ({report['host_peak_ratio']:.2f}x its size)"
              + (f", device peak {report['device_peak_gb']:.2f} GB ({report['device_peak_ratio']:.2f}x)"
                 if "device_peak_gb" in report else ""))
    else:
        report = run(args.config, args.device, args.dtype, args.new_tokens, args.repeats,
                     with_transformers=not args.no_transformers, with_compile=not args.no_compile)
        print(format_table(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
    return 0


def transformers_installed() -> bool:
    try:
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True
