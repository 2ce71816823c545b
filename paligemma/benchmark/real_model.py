"""A real model's decode speed, side by side in one process: ours in float32, bfloat16 and quantized, transformers
loading the same file, and llama.cpp (through `llama-cpp-python`, when installed) on the same GGUF file.

Each row also gets its memory-bandwidth bound: decoding reads every weight once per token, so no implementation
can beat (measured bandwidth) / (bytes of weights read per token). The bandwidth is read before, between and after
the timed rounds, and the bound takes the fastest reading.
"""

from __future__ import annotations

import copy
import datetime
import math
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from .. import cpu_kernels, native_decoding
from ..cli_text import text_tokenizer
from ..configuration import GemmaConfig
from ..gguf_loading import is_gguf, resolve_model_file
from ..modeling_gemma import GemmaForCausalLM
from ..quantization import MODES, quantize
from .report import device_description
from .speed import measure_all, quiet_transformers

PROMPT = "The capital of France is"
QUALITY_PROMPTS = ["The capital of France is", "def fibonacci(n):\n", "Once upon a time, in a small village by the sea,"]
AGREEMENT_TOKENS = 64
PARAGRAPH = ("The library opens at nine in the morning and closes at six in the evening. On weekends it keeps "
             "shorter hours, and on public holidays it is closed. Members may borrow up to ten books at a time, "
             "and most loans last three weeks. If you need a book for longer, you can renew it online or at the "
             "front desk, as long as nobody else has reserved it.")
OURS_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def say(line: str) -> None:
    """Progress on stderr (the run takes minutes), so stdout keeps only the report."""
    print(line, file=sys.stderr, flush=True)


def peak_resident_gb() -> float:
    """The process's peak resident memory so far (Linux reports kilobytes)."""
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def resident_gb() -> float | None:
    """The process's resident memory now (Linux's /proc/self/statm), or None where the system does not say."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    import resource
    return pages * resource.getpagesize() / 1e9


def _memory_added(before: float | None) -> float | None:
    """Resident memory added since `before`: what a candidate's weights (and packed copies) hold."""
    now = resident_gb()
    return None if before is None or now is None else max(0.0, now - before)


def memory_bandwidth_gb_per_s(n_bytes: int = 1 << 30, repeats: int = 5) -> float:
    """Reading speed of a large float32 tensor (its sum), the speed decoding's weights are read at."""
    data = torch.ones(n_bytes // 4)
    data.sum()
    best = min(_seconds(data.sum) for _ in range(repeats))
    return n_bytes / best / 1e9


def _seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bytes_per_token(model) -> int:
    """Bytes of weights a decode step reads: every weight once, the output projection whole, the embedding table
    not at all beyond it (a lookup reads one row: tied, the table is the output projection's; int4 keeps its own
    int8 copy for the lookups). Quantized layers say their own size (`weight_bytes`)."""
    seen, total = set(), 0

    def count(module) -> None:
        nonlocal total
        tensors = [(name, t) for name, t in [*module.named_parameters(recurse=False),
                                             *module.named_buffers(recurse=False)] if t.data_ptr() not in seen]
        if hasattr(module, "weight_bytes"):
            total += module.weight_bytes() if tensors else 0
        else:  # not RoPE's frequencies, not scalars
            total += sum(t.numel() * t.element_size() for name, t in tensors
                         if "inv_freq" not in name and t.numel() > 1)
        seen.update(t.data_ptr() for _, t in tensors)

    modules = dict(model.named_modules())
    for name, module in modules.items():  # the output projection first: a tied table counts as it
        if name.split(".")[-1] == "lm_head":
            count(module)
    for name, module in modules.items():
        if "embed_tokens" not in name:
            count(module)
    return total


COMPILED_MODES = ("bfloat16", "int8", "int8-dynamic", "int4")  # also timed compiled (about a minute each)
NATIVE_MODES = ("int8", "int8-dynamic", "int4")  # also timed through our C decode step (compile="native")
TORCH_KERNELS = "bfloat16, torch's kernels"  # the bfloat16 model without our kernels, for comparison


def ours_candidates(path: Path, prompt_ids: torch.Tensor, modes: list[str], with_compile: bool
                    ) -> tuple[dict, dict, dict]:
    """name -> generate_n for ours in each mode, name -> facts (bytes read per token), and mode -> model.

    "bfloat16" decodes through our CPU kernels (`cpu_kernels.use_cpu_kernels`) where they can be built, and the
    same model on torch's kernels is timed beside it; "float32" is the plain reference model.
    """
    candidates, facts = {}, {}
    say("  ours: float32 (dequantizing the file) ...")
    before = resident_gb()
    base = GemmaForCausalLM.from_pretrained(path, dtype=torch.float32)
    models, memory = {"float32": base}, {"float32": _memory_added(before)}
    for mode in modes:
        if mode == "bfloat16":
            say("  ours: bfloat16 ...")
            before = resident_gb()
            models[mode] = copy.deepcopy(base).to(torch.bfloat16)
            memory[mode] = _memory_added(before)
            if cpu_kernels.available():
                models[TORCH_KERNELS], memory[TORCH_KERNELS] = models[mode], memory[mode]
                models[mode] = cpu_kernels.use_cpu_kernels(copy.deepcopy(models[mode]))
            else:
                say(f"  (our CPU kernels are not available: {cpu_kernels.unavailable_reason()})")
        elif mode != "float32":
            say(f"  ours: {mode} ...")
            before = resident_gb()
            models[mode] = quantize(copy.deepcopy(base), mode)
            memory[mode] = _memory_added(before)
    for mode, model in models.items():
        facts[f"ours {mode}"] = {"bytes_per_token": bytes_per_token(model), "memory_gb": memory[mode]}
    timed = {mode: model for mode, model in models.items() if mode in modes or mode == TORCH_KERNELS}
    for mode, model in timed.items():
        def generate_n(n, model=model, **kw):
            return model.generate(prompt_ids, max_new_tokens=n, eos_token_id=None, **kw)
        candidates[f"ours {mode}"] = generate_n
        if with_compile and mode in COMPILED_MODES:
            candidates[f"ours {mode}, compiled"] = lambda n, g=generate_n: g(n, compile=True)
            facts[f"ours {mode}, compiled"] = facts[f"ours {mode}"]
        if mode in NATIVE_MODES and native_decoding.unsupported_reason(model) is None:
            candidates[f"ours {mode}, native step"] = lambda n, g=generate_n: g(n, compile="native")
            facts[f"ours {mode}, native step"] = facts[f"ours {mode}"]
    models.pop(TORCH_KERNELS, None)  # the quality report: one bfloat16 row (the kernels change only rounding)
    return candidates, facts, models


def transformers_candidates_for(path: Path, prompt_ids: torch.Tensor, dtypes: list[str]) -> tuple[dict, dict]:
    """transformers loading the very same file (GGUF, dequantized by its own loader; or a checkpoint folder)."""
    import transformers

    candidates, facts = {}, {}
    gguf = is_gguf(path)
    folder, extra = (path.parent, {"gguf_file": path.name}) if gguf else (path, {})
    for name in dtypes:
        say(f"  transformers: {name}" + (" (its GGUF loader takes a minute or two)" if gguf else "") + " ...")
        before = resident_gb()
        with quiet_transformers():
            model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=OURS_DTYPES[name],
                                                                      **extra).eval()
        facts[f"transformers {name}"] = {"bytes_per_token": bytes_per_token(model),
                                         "memory_gb": _memory_added(before)}

        def generate_n(n, model=model):
            with torch.no_grad():
                return model.generate(input_ids=prompt_ids, attention_mask=torch.ones_like(prompt_ids),
                                      max_new_tokens=n, min_new_tokens=n, do_sample=False)
        candidates[f"transformers {name}"] = generate_n
    return candidates, facts


def llama_cpp_candidate(path: Path, prompt_ids: torch.Tensor, threads: int) -> tuple[dict, dict]:
    """llama.cpp on the same GGUF file, greedy, fed the same prompt ids; nothing when it is not installed."""
    try:
        from llama_cpp import Llama
    except ImportError:
        say("  llama.cpp: not installed (pip install llama-cpp-python, which compiles for a while): skipped")
        return {}, {}
    say("  llama.cpp ...")
    before = resident_gb()
    llm = Llama(model_path=str(path), n_threads=threads, n_ctx=512, verbose=False)
    memory = _memory_added(before)
    ids = prompt_ids[0].tolist()

    def generate_n(n):
        llm.reset()
        tokens = []
        for token in llm.generate(ids, top_k=1, temp=0.0, repeat_penalty=1.0):
            tokens.append(token)
            if len(tokens) == n:
                return tokens
        return tokens
    from ..gguf_file import read_gguf
    gguf = read_gguf(path)
    tensor_bytes = sum(info.nbytes for info in gguf.tensors.values())
    return {"llama.cpp": generate_n}, {"llama.cpp": {"bytes_per_token": tensor_bytes, "memory_gb": memory}}


def run_real_model(model: str, new_tokens: int = 64, repeats: int = 3, threads: int | None = None,
                   modes: list[str] | None = None, with_transformers: bool = True, with_llama_cpp: bool = True,
                   with_compile: bool = True, with_quality: bool = True) -> dict:
    """Load every candidate, time them round-robin (medians), and report rates, ratios and bandwidth bounds."""
    if threads is not None:
        torch.set_num_threads(threads)
    threads = torch.get_num_threads()
    path = resolve_model_file(model)
    modes = modes or ["float32", "bfloat16", *MODES]
    say(f"benchmark of {path.name}: loading every candidate, then {repeats} timed rounds of {new_tokens} tokens")
    if not is_gguf(path):  # a missing folder or config.json is said before a missing tokenizer.json
        GemmaConfig.from_pretrained(path)
    tokenizer = text_tokenizer(path)
    prompt_ids = torch.tensor([tokenizer.encode(PROMPT).ids])  # with <bos>: (1, T)
    candidates, facts, models = ours_candidates(path, prompt_ids, modes, with_compile)
    quality = quality_of(models, tokenizer) if with_quality else {}
    if with_transformers:
        more, more_facts = transformers_candidates_for(path, prompt_ids, ["float32", "bfloat16"])
        candidates.update(more), facts.update(more_facts)
    if with_llama_cpp and is_gguf(path):
        more, more_facts = llama_cpp_candidate(path, prompt_ids, threads)
        candidates.update(more), facts.update(more_facts)
    elif with_llama_cpp:
        say("  llama.cpp: reads GGUF files only, and this is a checkpoint folder: skipped")
    say("  measuring memory bandwidth ...")
    bandwidths = [memory_bandwidth_gb_per_s()]
    say(f"  timing {len(candidates)} candidates (compiled ones compile during the warm-up) ...")
    results = measure_all({name: (fn, new_tokens) for name, fn in candidates.items()}, torch.device("cpu"), repeats,
                          each_round=lambda: bandwidths.append(memory_bandwidth_gb_per_s()))
    bandwidths.append(memory_bandwidth_gb_per_s())
    # a shared machine's bandwidth moves by tens of percent within minutes: the bound takes the fastest reading
    # (before, between and after the rounds), so that no row is flattered by a slow moment of the measurement
    bandwidth = max(bandwidths)
    for name, row in results.items():
        row.update(facts[name])
        row["bound_tokens_per_s"] = bandwidth * 1e9 / row["bytes_per_token"]
        rate = row["decode_tokens_per_s"]
        row["fraction_of_bound"] = rate / row["bound_tokens_per_s"] if rate else None
    return {"model": path.name, "device": device_description(torch.device("cpu")), "threads": threads,
            "prompt_tokens": prompt_ids.shape[1], "new_tokens": new_tokens, "repeats": repeats,
            "bandwidth_gb_per_s": bandwidth, "bandwidth_readings_gb_per_s": bandwidths, "cpu": cpu_description(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "date": datetime.date.today().isoformat(), "peak_resident_gb": peak_resident_gb(), "results": results,
            "ratios": ratios(results), "quality": quality}


def cpu_description() -> str:
    """The CPU's vector extensions as torch sees them, and which build of our kernels ran (timings depend on both)."""
    return f"torch {torch.backends.cpu.get_cpu_capability()}, our kernels {cpu_kernels.kernel_build() or 'none'}"


def quality_of(models: dict, tokenizer) -> dict:
    """Per mode: perplexity on PARAGRAPH (in one call, and token by token), and how many greedy tokens of each QUALITY_PROMPTS equal float32's."""
    say("  quality: perplexity and greedy agreement with float32 ...")
    text = torch.tensor([tokenizer.encode(PARAGRAPH).ids])
    prompts = [torch.tensor([tokenizer.encode(p).ids]) for p in QUALITY_PROMPTS]
    reference = [models["float32"].generate(p, max_new_tokens=AGREEMENT_TOKENS, eos_token_id=None)[0]
                 for p in prompts]
    report = {}
    for mode, model in models.items():
        with torch.no_grad():
            perplexity = math.exp(model(input_ids=text, labels=text)["loss"].item())
        stepwise = token_by_token_perplexity(model, text)
        agree = [_agreement(model.generate(prompt, max_new_tokens=AGREEMENT_TOKENS, eos_token_id=None)[0], expected)
                 for prompt, expected in zip(prompts, reference)]
        report[mode] = {"perplexity": perplexity, "perplexity_token_by_token": stepwise,
                        "greedy_tokens_equal_to_float32": agree}
        if mode in NATIVE_MODES and native_decoding.unsupported_reason(model) is None:  # the same mode through
            native = [model.generate(prompt, max_new_tokens=AGREEMENT_TOKENS, eos_token_id=None,  # our C step:
                                     compile="native")[0] for prompt in prompts]  # other roundings
            report[mode]["greedy_tokens_equal_to_float32_native_step"] = [
                _agreement(got, expected) for got, expected in zip(native, reference)]
    return report


def _agreement(got: torch.Tensor, expected: torch.Tensor) -> int:
    """How many tokens come before the first difference."""
    differ = (got != expected).nonzero()
    return int(differ[0]) if len(differ) else len(expected)


def token_by_token_perplexity(model, ids: torch.Tensor) -> float:
    """Perplexity of (1, T) ids scored one token per call through the KV cache: the path decoding takes, which
    differs from one long call for "int8-dynamic" (its decode steps quantize their activations)."""
    cache, nll = model.new_kv_cache(), 0.0
    with torch.no_grad():
        for t in range(ids.shape[1] - 1):
            logits = model(input_ids=ids[:, t:t + 1], kv_cache=cache)["logits"][0, -1].float()
            nll -= torch.log_softmax(logits, -1)[ids[0, t + 1]].item()
    return math.exp(nll / (ids.shape[1] - 1))


def ratios(results: dict) -> dict:
    """The comparisons the targets are stated in, from this one run."""
    def rate(name):
        return (results.get(name) or {}).get("decode_tokens_per_s")
    out = {}
    bfloat16_rows = [name for name in results if name.startswith("ours bfloat16") and TORCH_KERNELS not in name
                     and rate(name)]
    if bfloat16_rows and rate("transformers bfloat16"):
        fastest = max(bfloat16_rows, key=rate)
        out["ours bfloat16 (fastest row)"] = fastest
        out["ours bfloat16 / transformers bfloat16"] = rate(fastest) / rate("transformers bfloat16")
    if rate("ours float32") and rate("transformers float32"):
        out["ours float32 / transformers float32"] = rate("ours float32") / rate("transformers float32")
    ours = {name: r["decode_tokens_per_s"] for name, r in results.items()
            if name.startswith("ours") and r["decode_tokens_per_s"]}
    if ours:
        best = max(ours, key=ours.get)
        out["best ours"] = best
        if rate("llama.cpp"):
            out["best ours / llama.cpp"] = ours[best] / rate("llama.cpp")
        out["best ours, fraction of its bandwidth bound"] = results[best]["fraction_of_bound"]
    return out
