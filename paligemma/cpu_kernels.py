"""Our own matrix-vector kernels for CPU decoding (`cpu_kernels.c`), compiled on first use with the system's C compiler.

A decode step multiplies one token's activations by every weight matrix once. torch's kernels for that shape
are built for matrices, not vectors: they read bfloat16 and int8 weights at a fraction of memory speed (notebook
14). The C file holds five short loops (float32, bfloat16, int8 weights; int8 and int4 weights with int8
activations) that stream the rows faster, and greedy decoding's argmax over a long row. The same library holds
`decode_step.c`, the whole decode step in C (`native_decoding`), built on those loops (`cpu_kernels.h`).

The library is built once into a cache folder (`PALIGEMMA_CACHE`, else `~/.cache/paligemma`) and called through
`ctypes`, wrapped as torch operators so `torch.compile` can keep them in its graph. Where it cannot be built (no C
compiler, no AVX2, not Linux/macOS on x86), or `PALIGEMMA_CPU_KERNELS=0` is set, `available()` says why and every
caller uses torch's own kernels instead: the same numbers up to float rounding, only slower.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch
from torch import nn

SOURCE = Path(__file__).with_name("cpu_kernels.c")
SOURCES = [SOURCE, SOURCE.with_name("decode_step.c")]  # (decode_step.c: native_decoding's whole-token step)
HEADER = SOURCE.with_name("cpu_kernels.h")
FLAGS = ["-O3", "-mavx2", "-mfma", "-mf16c", "-fopenmp", "-shared", "-fPIC"]
VNNI_FLAGS = ["-mavx512vnni", "-mavx512vl"]  # added where the CPU has them: byte products in one instruction
BLOCK = 32  # every kernel takes rows whose length is a multiple of this (and int8 activations use blocks of it)
_LOCK = threading.Lock()
_STATE: dict[str, object] = {}  # "library" (a ctypes.CDLL) and its "flags", or "reason" (why none), once tried


def cache_folder() -> Path:
    return Path(os.environ.get("PALIGEMMA_CACHE") or Path.home() / ".cache" / "paligemma")


def has_vnni() -> bool:
    """Whether this CPU has AVX-512 VNNI (with 256-bit forms, AVX512VL), read from /proc/cpuinfo (Linux only)."""
    try:
        flags = next((line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_vnni" in flags and "avx512vl" in flags


def build_flags(vnni: bool | None = None) -> list[str]:
    """The compiler flags: FLAGS, plus VNNI_FLAGS where the CPU has them (vnni=None) or when asked (True)."""
    return FLAGS + VNNI_FLAGS if (has_vnni() if vnni is None else vnni) else list(FLAGS)


def _build(flags: list[str]) -> ctypes.CDLL:
    """Compile cpu_kernels.c with `flags` (unless this very source was compiled so before) and load it."""
    if os.environ.get("PALIGEMMA_CPU_KERNELS", "1") == "0":
        raise RuntimeError("PALIGEMMA_CPU_KERNELS=0 is set")
    if platform.machine().lower() not in ("x86_64", "amd64") or platform.system() not in ("Linux", "Darwin"):
        raise RuntimeError(f"the kernels are written for x86-64 Linux or macOS, not {platform.system()} "
                           f"{platform.machine()}")
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        raise RuntimeError(f"this CPU lacks AVX2 (torch reports {torch.backends.cpu.get_cpu_capability()})")
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise RuntimeError("no C compiler found (set CC, or install gcc)")
    source = b"".join(path.read_bytes() for path in [*SOURCES, HEADER])
    digest = hashlib.sha256(source + " ".join([compiler, *flags]).encode()).hexdigest()[:16]
    library = cache_folder() / f"cpu_kernels-{digest}.so"
    if not library.exists():
        library.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=library.parent) as scratch:  # build beside it, then rename: two
            built = Path(scratch) / library.name                         # processes never see half a file
            result = subprocess.run([compiler, *flags, *map(str, SOURCES), "-lm", "-o", str(built)],
                                    capture_output=True, text=True)
            if result.returncode != 0:
                raise RuntimeError(f"{compiler} could not build {' and '.join(p.name for p in SOURCES)}: "
                                   f"{result.stderr.strip()[:500]}")
            os.replace(built, library)
    loaded = ctypes.CDLL(str(library))  # after `import torch`: its libgomp is the one this library links to
    pointer, size, threads = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    loaded.pg_gemv_f32.argtypes = [pointer, pointer, pointer, size, size, threads]
    loaded.pg_gemv_bf16.argtypes = [pointer, pointer, pointer, size, size, threads]
    loaded.pg_gemv_int8.argtypes = [pointer, pointer, pointer, pointer, size, size, threads]
    loaded.pg_quantize_blocks.argtypes = [pointer, pointer, pointer, size]
    loaded.pg_gemv_w8a8.argtypes = [pointer, pointer, pointer, pointer, size, size, threads]
    loaded.pg_gemv_w4a8.argtypes = [pointer, pointer, pointer, size, size, threads]
    loaded.pg_argmax.argtypes, loaded.pg_argmax.restype = [pointer, size, threads], size
    loaded.pg_decode_step.argtypes = [pointer, pointer, pointer, pointer, pointer, size, pointer, threads]
    return loaded


def _build_for_this_cpu() -> tuple[ctypes.CDLL, list[str]]:
    """_build() with the VNNI flags where the CPU has them, without where the compiler refuses them (an old gcc);
    the library and the flags it was built with."""
    flags = build_flags()
    try:
        return _build(flags), flags
    except RuntimeError as err:
        if flags == FLAGS or "could not build" not in str(err):
            raise
        return _build(FLAGS), list(FLAGS)


def _library() -> ctypes.CDLL | None:
    with _LOCK:
        if not _STATE:
            try:
                _STATE["library"], _STATE["flags"] = _build_for_this_cpu()
            except (RuntimeError, OSError) as err:
                _STATE["reason"] = str(err)
        return _STATE.get("library")


def available() -> bool:
    """True when the kernels are built and loaded (building them on the first call)."""
    return _library() is not None


def kernel_build() -> str | None:
    """Which build of the kernels is in use ("AVX2" or "AVX2 + AVX-512 VNNI"), None when there is none."""
    if _library() is None:
        return None
    return "AVX2 + AVX-512 VNNI" if _STATE["flags"] != FLAGS else "AVX2"


def unavailable_reason() -> str | None:
    """Why the kernels are not in use, or None when they are."""
    _library()
    return _STATE.get("reason")


def serves(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether one decode row x (1, k) times a stored weight (n rows, however packed) can run through a kernel here."""
    if not (x.device.type == "cpu" and weight.device.type == "cpu" and x.dim() == 2 and x.shape[0] == 1
            and x.shape[1] % BLOCK == 0 and weight.is_contiguous()):
        return False
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return False  # the kernels have no backward: training takes torch's differentiable product
    if _STATE:  # tried already: no lock on the decode path
        return "library" in _STATE
    return not torch.compiler.is_compiling() and available()  # (no building while tracing; the prefill built it)


# ---- the kernels as torch operators: (1, k) float32 in, (1, n) float32 out ----

def _run(name: str, x: torch.Tensor, rows: int, *weights: torch.Tensor) -> torch.Tensor:
    """Call the C kernel `name`: (x, the weights' tensors, y, rows, k, threads), x as float32 (1, k); y (1, rows).

    Reached only where `serves` said yes, so the library is loaded: no lock here (this runs ~130 times a token).
    """
    kernel = getattr(_STATE.get("library") or _library(), name)
    x = x.float().contiguous()
    out = torch.empty(1, rows, dtype=torch.float32)
    kernel(x.data_ptr(), *(t.data_ptr() for t in weights), out.data_ptr(), rows, x.shape[1], torch.get_num_threads())
    return out


def _gemv_float(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return _run("pg_gemv_bf16" if weight.dtype == torch.bfloat16 else "pg_gemv_f32", x, weight.shape[0], weight)


def _gemv_int8(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    return _run("pg_gemv_int8", x, qweight.shape[0], qweight, scales)


def _gemv_w8a8(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    return _run("pg_gemv_w8a8", x, qweight.shape[0], qweight, scales)


def _gemv_w4a8(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    return _run("pg_gemv_w4a8", x, rows.shape[0], rows)


# `Library.impl` rather than `torch.library.custom_op`: the latter's Python wrapper costs about as much per call as
# a small layer's product. The fake versions tell torch.compile the output's shape without running anything.
_OPS = torch.library.Library("paligemma_cpu", "DEF")
_OPS.define("gemv(Tensor x, Tensor weight) -> Tensor")
_OPS.define("gemv_int8(Tensor x, Tensor qweight, Tensor scales) -> Tensor")
_OPS.define("gemv_w8a8(Tensor x, Tensor qweight, Tensor scales) -> Tensor")
_OPS.define("gemv_w4a8(Tensor x, Tensor rows) -> Tensor")
for _name, _kernel in [("gemv", _gemv_float), ("gemv_int8", _gemv_int8), ("gemv_w8a8", _gemv_w8a8),
                       ("gemv_w4a8", _gemv_w4a8)]:
    _OPS.impl(_name, _kernel, "CPU")

    @torch.library.register_fake(f"paligemma_cpu::{_name}")
    def _(x: torch.Tensor, weight: torch.Tensor, *scales: torch.Tensor) -> torch.Tensor:
        return x.new_empty(1, weight.shape[0], dtype=torch.float32)


def gemv(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """(1, k) @ (n, k)ᵀ -> (1, n) float32, weight float32 or bfloat16."""
    return torch.ops.paligemma_cpu.gemv(x, weight)


def gemv_int8(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """(1, k) float times int8 rows (n, k) with float32 row scales (n,): (x qᵀ) · s, float32 (1, n)."""
    return torch.ops.paligemma_cpu.gemv_int8(x, qweight, scales)


def gemv_w8a8(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """As gemv_int8, with x first rounded to int8 per block of 32 values (`quantize_blocks`), products in integers."""
    return torch.ops.paligemma_cpu.gemv_w8a8(x, qweight, scales)


def gemv_w4a8(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """(1, k) float times int4 rows stored as `quantization.Int4Linear` stores them: (n, k / 8 + k / 2) bytes, each
    row its k / 32 float16 scales, its k / 32 float16 minimums, then its nibbles; x rounded like gemv_w8a8.
    Float32 (1, n)."""
    return torch.ops.paligemma_cpu.gemv_w4a8(x, rows)


def argmax_rows(logits: torch.Tensor) -> torch.Tensor | None:
    """logits.argmax(-1) of float32 CPU rows (B, V) through pg_argmax (the first largest; the first NaN), or None
    where the kernels cannot take them (torch's argmax is the caller's fallback)."""
    if not (logits.device.type == "cpu" and logits.dtype == torch.float32 and logits.dim() == 2
            and logits.is_contiguous()) or (not _STATE and torch.compiler.is_compiling()) or _library() is None:
        return None
    argmax, threads, (batch, vocab) = _STATE["library"].pg_argmax, torch.get_num_threads(), logits.shape
    start, row_bytes = logits.data_ptr(), vocab * logits.element_size()
    return torch.tensor([argmax(start + i * row_bytes, vocab, threads) for i in range(batch)])


def quantize_blocks(x: torch.Tensor) -> torch.Tensor:
    """x (..., k) rounded as gemv_w8a8 rounds it: blocks of 32 values share a scale max|x| / 127. Float32 back.

    The reference the kernel is tested against, and what callers use where the kernel is not available.
    """
    blocks = x.float().reshape(*x.shape[:-1], -1, BLOCK)  # (..., k / 32, 32)
    largest = blocks.abs().amax(-1, keepdim=True)
    inverse = torch.where(largest > 0, 127 / largest, 0.0)  # as the C code computes it, for the same roundings
    return (torch.round(blocks * inverse) * (largest / 127)).reshape(x.shape)


class KernelLinear(nn.Module):
    """A bias-free float32 / bfloat16 linear layer whose one-row inputs (decode steps) run through `gemv`.

    It keeps the nn.Linear's weight (the same tensor: a tied output projection stays tied); longer inputs (a
    prompt) and other devices use F.linear.
    """

    def __init__(self, linear: nn.Linear):
        super().__init__()
        if linear.bias is not None:
            raise ValueError("KernelLinear: Gemma's linear layers have no bias; this one does")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)  # (B*T, in)
        if serves(flat, self.weight):
            out = gemv(flat, self.weight).to(x.dtype)
        else:
            out = nn.functional.linear(flat, self.weight)
        return out.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, one row through gemv"


def use_cpu_kernels(model):
    """Swap the decoder's linear layers and its output projection for KernelLinear, in place; returns the model.

    For float32 and bfloat16 models (`quantize` gives int8 models their own kernels). Raises ValueError, with the
    reason, when the kernels cannot be built here, rather than silently running torch's.
    """
    if not available():
        raise ValueError(f"the CPU kernels are not available: {unavailable_reason()}")
    language_model = getattr(model, "language_model", model)
    if getattr(language_model, "quantized", None):
        raise ValueError(f"this model is quantized ({language_model.quantized}): it has its own kernels")
    replace_linear_layers(language_model, KernelLinear)
    if isinstance(language_model.lm_head, nn.Linear):
        language_model.lm_head = KernelLinear(language_model.lm_head)
    return model


def replace_linear_layers(language_model, make) -> None:
    """Every nn.Linear of the decoder's attention and MLP blocks becomes make(linear), in place."""
    for layer in language_model.model.layers:
        for parent in (layer.self_attn, layer.mlp):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Linear):
                    setattr(parent, name, make(child))
