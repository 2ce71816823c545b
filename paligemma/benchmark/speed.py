"""Prefill and decode timing of ours and transformers on the same random weights, in one process."""

from __future__ import annotations

import contextlib
import datetime
import platform
import statistics
import tempfile
import time
from collections.abc import Callable

import torch

from ..configuration import GemmaConfig, PaliGemmaConfig, SiglipVisionConfig
from ..modeling_gemma import GemmaForCausalLM
from ..modeling_paligemma import PaliGemmaForConditionalGeneration
from .report import device_description

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
PROMPT_TEXT_TOKENS = 12  # <bos> + 11 prompt tokens after the image tokens, as in the reference figures


def benchmark_config(name: str):
    """The named model shape: a PaliGemmaConfig, or a GemmaConfig for the text-only 'gemma-2b'."""
    if name == "tiny":
        text = GemmaConfig(vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=1, head_dim=16)
        vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                    image_size=32, patch_size=8)
        return PaliGemmaConfig(text_config=text, vision_config=vision, image_token_index=1023, projection_dim=64)
    if name == "small":  # a scaled-down PaliGemma that a laptop CPU decodes at tens of tokens per second
        text = GemmaConfig(vocab_size=16384, hidden_size=512, intermediate_size=2048, num_hidden_layers=6,
                           num_attention_heads=8, num_key_value_heads=1, head_dim=64)
        vision = SiglipVisionConfig(hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                                    num_attention_heads=4, image_size=224, patch_size=14)
        return PaliGemmaConfig(text_config=text, vision_config=vision, image_token_index=16383, projection_dim=512)
    if name == "gemma-2b":  # google/gemma-2b: PaliGemma's decoder shape with Gemma's own vocabulary
        return GemmaConfig(vocab_size=256000)
    if name == "paligemma-3b":
        return PaliGemmaConfig()
    raise ValueError(f"unknown config {name!r}: choose tiny, small, gemma-2b or paligemma-3b")


def make_inputs(config, batch: int = 1, seed: int = 0) -> dict:
    """256 image tokens (for paligemma-3b) + 12 prompt tokens, random ids and pixels."""
    generator = torch.Generator().manual_seed(seed)
    text = config.text_config if isinstance(config, PaliGemmaConfig) else config
    words = torch.randint(3, min(text.vocab_size, 256000) - 2, (batch, PROMPT_TEXT_TOKENS - 1), generator=generator)
    bos = torch.full((batch, 1), text.bos_token_id)
    if not isinstance(config, PaliGemmaConfig):
        n_image = 256  # same length as the multimodal prompt
        ids = torch.cat([torch.randint(3, 1000, (batch, n_image), generator=generator), bos, words], -1)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    image = torch.full((batch, config.num_image_tokens), config.image_token_index)
    ids = torch.cat([image, bos, words], -1)
    size = config.vision_config.image_size
    pixels = torch.rand(batch, 3, size, size, generator=generator) * 2 - 1
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": pixels}


def wall_time(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds one call of `fn` takes, synchronising the GPU before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def measure_all(candidates: dict[str, tuple[Callable[[int], object], int]], device: torch.device,
                repeats: int, each_round: Callable[[], object] | None = None) -> dict[str, dict]:
    """Prefill = time to the first token; decode rate = the other n-1 tokens over the time they add.

    Runs are interleaved (every candidate once per round, medians kept) so that a slow spell of a
    shared machine slows all candidates alike instead of whichever happened to run then.
    `each_round()`, if given, runs before every round (the real-model benchmark measures bandwidth there).
    """
    for generate_n, n in candidates.values():  # warm-up: allocations, compilation, CUDA graph capture
        generate_n(1), generate_n(n)
    times = {name: ([], []) for name in candidates}
    for _ in range(repeats):
        if each_round is not None:
            each_round()
        for name, (generate_n, n) in candidates.items():
            times[name][0].append(wall_time(lambda: generate_n(1), device))
            times[name][1].append(wall_time(lambda: generate_n(n), device))
    results = {}
    for name, (generate_n, n) in candidates.items():
        first, full = statistics.median(times[name][0]), statistics.median(times[name][1])
        results[name] = {"prefill_ms": 1000 * first, "decode_tokens_per_s": decode_rate(times[name][0], full, n)}
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            generate_n(n)
            results[name]["peak_memory_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
    return results


def decode_rate(first_times: list[float], full: float, n: int) -> float | None:
    """(n-1) tokens over the time they add to the first; None when that time is lost in the noise.

    The noise is half the spread of the time-to-first-token runs (zero with one run): with few tokens
    or repeats the difference can be tiny or negative, and dividing by it would give absurd rates.
    """
    first = statistics.median(first_times)
    added = full - first
    if added <= 0 or added <= (max(first_times) - min(first_times)) / 2:
        return None
    return (n - 1) / added


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median wall time of `fn` in seconds, after one warm-up call."""
    fn()
    return statistics.median(wall_time(fn, device) for _ in range(repeats))


def no_cache_generate(model, inputs: dict, n: int) -> torch.Tensor:
    """The baseline: recompute the whole sequence for every new token (O(n^2) work)."""
    ids = inputs["input_ids"]
    with torch.no_grad():
        for _ in range(n):
            extra = {"pixel_values": inputs["pixel_values"]} if "pixel_values" in inputs else {}
            logits = model(input_ids=ids, **extra, logits_to_keep=1)["logits"][:, -1]
            ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], -1)
    return ids


def memory_bandwidth_gbps(device: torch.device, n_bytes: int = 2 * 1024**3) -> float:
    """Device-to-device copy speed (bytes read + written per second), the roofline for decoding."""
    src = torch.empty(n_bytes // 2, dtype=torch.float16, device=device)
    dst = torch.empty_like(src)
    seconds = timed(lambda: dst.copy_(src), device, repeats=10)
    return 2 * n_bytes / seconds / 1e9


def run(config_name: str, device_name: str, dtype_name: str | None, new_tokens: int, repeats: int,
        with_transformers: bool = True, with_compile: bool = True) -> dict:
    device = torch.device(device_name)
    dtype = DTYPES[dtype_name] if dtype_name else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    config = benchmark_config(config_name)
    model_class = PaliGemmaForConditionalGeneration if isinstance(config, PaliGemmaConfig) else GemmaForCausalLM
    torch.manual_seed(0)
    with torch.device(device):
        ours = model_class(config).to(dtype).eval()
    inputs = {k: v.to(device) for k, v in make_inputs(config).items()}
    decoder = ours.language_model if isinstance(ours, PaliGemmaForConditionalGeneration) else ours
    decoder_params = sum(p.numel() for p in decoder.parameters())  # the tied lm_head counts once
    def ours_n(n, **kw):
        return ours.generate(inputs["input_ids"], pixel_values=inputs.get("pixel_values"),
                             attention_mask=inputs["attention_mask"], max_new_tokens=n, eos_token_id=None, **kw)

    candidates = {"ours (eager)": (ours_n, new_tokens),
                  "ours (static cache)": (lambda n: ours_n(n, static=True), new_tokens)}
    if with_compile:
        candidates["ours (compiled)"] = (lambda n: ours_n(n, compile=True), new_tokens)
    candidates["no cache (ours, recompute)"] = (lambda n: no_cache_generate(ours, inputs, n), min(new_tokens, 16))
    if with_transformers:
        candidates.update(transformers_candidates(ours, inputs, new_tokens, device, dtype))
    results = measure_all(candidates, device, repeats)

    report = {
        "config": config_name, "device": device_description(device), "dtype": str(dtype).removeprefix("torch."),
        "new_tokens": new_tokens, "prompt_tokens": inputs["input_ids"].shape[1], "torch": torch.__version__,
        "python": platform.python_version(), "date": datetime.date.today().isoformat(),
        "decoder_parameters": decoder_params, "results": results,
    }
    try:
        import transformers
        report["transformers"] = transformers.__version__
    except ImportError:
        pass
    if device.type == "cuda":
        bandwidth = memory_bandwidth_gbps(device)
        bytes_per_token = decoder_params * torch.finfo(dtype).bits // 8
        report["bandwidth_gb_per_s"] = bandwidth
        report["bandwidth_bound_tokens_per_s"] = bandwidth * 1e9 / bytes_per_token
    return report


@contextlib.contextmanager
def quiet_transformers():
    """No "Loading weights" progress bar and no info/warning logs from transformers inside the block."""
    from transformers.utils import logging

    bars, verbosity = logging.is_progress_bar_enabled(), logging.get_verbosity()
    logging.disable_progress_bar()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


def transformers_candidates(ours, inputs, new_tokens, device, dtype) -> dict:
    """The same weights in transformers (saved by us, loaded by it), default and static-cache generate."""
    import transformers

    hf_class = (transformers.PaliGemmaForConditionalGeneration if isinstance(ours, PaliGemmaForConditionalGeneration)
                else transformers.GemmaForCausalLM)
    with tempfile.TemporaryDirectory() as folder, quiet_transformers():
        ours.save_pretrained(folder)
        theirs = hf_class.from_pretrained(folder, dtype=dtype, attn_implementation="sdpa").to(device).eval()
    hf_inputs = dict(inputs)
    if "pixel_values" in hf_inputs:
        hf_inputs["token_type_ids"] = torch.zeros_like(hf_inputs["input_ids"])

    def theirs_n(n, **kw):
        with torch.no_grad():
            return theirs.generate(**hf_inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False, **kw)

    candidates = {"transformers (default)": (theirs_n, new_tokens)}
    if device.type == "cuda":  # transformers compiles the forward itself when the cache is static
        candidates["transformers (static + compile)"] = (lambda n: theirs_n(n, cache_implementation="static"),
                                                        new_tokens)
    return candidates
