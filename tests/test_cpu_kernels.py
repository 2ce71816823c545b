"""Our C matrix-vector kernels: each equals a float64 product of the same numbers; models decode the same with them."""

import copy
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from conftest import make_causal_lm
from paligemma import cpu_kernels
from paligemma.cpu_kernels import KernelLinear, use_cpu_kernels

if not cpu_kernels.available() and not os.environ.get("CI"):  # in CI (.ci/run sets CI) a missing kernel fails below
    pytest.skip(f"the CPU kernels are not available: {cpu_kernels.unavailable_reason()}", allow_module_level=True)
SHAPES = [(1, 32), (7, 64), (100, 640), (1027, 2048), (4099, 96)]  # rows not a multiple of anything, k % 32 == 0


def test_the_kernels_are_built_here():
    assert cpu_kernels.available(), cpu_kernels.unavailable_reason()


def random_int8(n, k, seed):
    generator = torch.Generator().manual_seed(seed)
    q = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=generator)
    return q, torch.rand(n, generator=generator) + 0.01


def blocks_rounded_by_hand(x: torch.Tensor) -> torch.Tensor:
    """The rounding gemv_w8a8 promises, one block of 32 at a time: scale max|x| / 127, nearest level."""
    out = torch.empty_like(x, dtype=torch.float64)
    for start in range(0, x.shape[-1], 32):
        block = x[..., start:start + 32].double()
        largest = block.abs().amax(-1, keepdim=True)
        step = largest / 127
        levels = torch.round(block / torch.where(step > 0, step, 1))  # an all-zero block stays zero
        out[..., start:start + 32] = torch.where(largest > 0, levels * step, 0.0)
    return out


@pytest.mark.parametrize("n, k", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_float_kernels_equal_a_float64_product(n, k, dtype):
    torch.manual_seed(n + k)
    x, weight = torch.randn(1, k), torch.randn(n, k).to(dtype)
    got = cpu_kernels.gemv(x, weight)
    reference = x.double() @ weight.double().T
    assert got.shape == (1, n) and got.dtype == torch.float32
    # float32 sums of k products: a few units in the last place of the sum of |terms|
    bound = (x.double().abs() @ weight.double().abs().T) * k * 2 ** -24
    assert bool(((got.double() - reference).abs() <= bound).all())


@pytest.mark.parametrize("n, k", SHAPES)
def test_int8_kernel_equals_a_float64_product(n, k):
    torch.manual_seed(k)
    x, (q, scale) = torch.randn(1, k), random_int8(n, k, seed=n)
    got = cpu_kernels.gemv_int8(x, q, scale)
    reference = (x.double() @ q.double().T) * scale.double()
    bound = (x.double().abs() @ q.double().abs().T) * scale.double() * k * 2 ** -24
    assert bool(((got.double() - reference).abs() <= bound + 1e-30).all())


@pytest.mark.parametrize("n, k", SHAPES)
def test_w8a8_kernel_rounds_the_activations_per_block_then_multiplies_exactly(n, k):
    torch.manual_seed(k + 1)
    x = torch.randn(1, k) * torch.rand(1, k) * 5
    x[0, k // 2] = 300.0  # an outlier: only its own block of 32 gets a coarse scale
    x[0, :32] = 0.0 if k > 32 else x[0, :32]  # an all-zero block
    q, scale = random_int8(n, k, seed=n + 1)
    rounded = blocks_rounded_by_hand(x)
    torch.testing.assert_close(cpu_kernels.quantize_blocks(x).double(), rounded, rtol=1e-6, atol=0)
    got = cpu_kernels.gemv_w8a8(x, q, scale)
    reference = (rounded @ q.double().T) * scale.double()  # integer products, float32 only in the block sums
    bound = (rounded.abs() @ q.double().abs().T) * scale.double() * (k // 32 + 2) * 2 ** -23
    assert bool(((got.double() - reference).abs() <= bound + 1e-30).all())


def kernel_order_by_hand(plain: torch.Tensor) -> torch.Tensor:
    """Nibble bytes (n, groups * 16) in plain order -> the order cpu_kernels.c documents: per run of eight groups,
    for each 4-byte word v, that word of groups 0 ... 7; a last run of four groups the same; then plain groups."""
    n, groups = plain.shape[0], plain.shape[1] // 16
    by_group = plain.view(n, groups, 4, 4)  # (n, group, word, byte)
    pieces, g = [], 0
    while groups - g >= 4:
        run = 8 if groups - g >= 8 else 4
        for word in range(4):
            for j in range(run):
                pieces.append(by_group[:, g + j, word])  # (n, 4)
        g += run
    pieces += [by_group[:, j].reshape(n, 16) for j in range(g, groups)]
    return torch.cat(pieces, 1)


def random_int4(n, k, seed, q=None):
    """Random 4-bit levels (n, k), float16 scales and minimums per group, and the rows gemv_w4a8 reads."""
    generator = torch.Generator().manual_seed(seed)
    if q is None:
        q = torch.randint(0, 16, (n, k), dtype=torch.uint8, generator=generator)
    by_group = q.view(n, k // 32, 32)  # in each group of 32: weights 0-15 in the low nibbles, 16-31 in the high
    packed = kernel_order_by_hand((by_group[..., :16] | (by_group[..., 16:] << 4)).reshape(n, k // 2))
    scales = (torch.rand(n, k // 32, generator=generator) * 0.1 + 1e-3).half()
    mins = (torch.randn(n, k // 32, generator=generator) * 0.5).half()
    rows = torch.cat([scales.view(torch.uint8), mins.view(torch.uint8), packed], 1)  # each row: scales, mins, nibbles
    return q, scales, mins, rows


INT4_SHAPES = [(1, 32), (3, 64), (5, 96), (7, 128), (9, 160), (11, 256), (13, 288), (100, 416), (257, 640),
               (1027, 2048), (64, 1056)]  # every mix of the kernel's 8-, 4- and 1-group steps, odd and even rows


@pytest.mark.parametrize("n, k", INT4_SHAPES)
def test_w4a8_kernel_rounds_the_activations_per_block_then_multiplies_exactly(n, k):
    torch.manual_seed(k + 2)
    x = torch.randn(1, k) * torch.rand(1, k) * 5
    x[0, k // 3] = -200.0  # an outlier in one block
    q, scales, mins, rows = random_int4(n, k, seed=n + 2)
    weights = (q.view(n, -1, 32).double() * scales.double()[..., None] + mins.double()[..., None]).view(n, k)
    rounded = blocks_rounded_by_hand(x)
    got = cpu_kernels.gemv_w4a8(x, rows)
    assert got.shape == (1, n) and got.dtype == torch.float32
    reference = rounded @ weights.T  # integer products, float32 only in the per-group scaling and the sums
    magnitude = rounded.abs() @ (q.double() * scales.double().repeat_interleave(32, -1)
                                 + mins.double().abs().repeat_interleave(32, -1)).T
    assert bool(((got.double() - reference).abs() <= magnitude * (k // 32 + 4) * 2 ** -23 + 1e-30).all())


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_w4a8_kernel_holds_the_largest_integer_sums(sign):
    """Every weight 15, every activation rounded to +-127: the largest sums a lane collects (the AVX2 build keeps
    them in int16 until the end: 16 products of 15 * 127 = 30480, just under 32767)."""
    n, k = 9, 1056
    q, scales, mins, rows = random_int4(n, k, seed=1, q=torch.full((n, k), 15, dtype=torch.uint8))
    x = torch.full((1, k), 3.0 * sign)
    weights = (q.view(n, -1, 32).double() * scales.double()[..., None] + mins.double()[..., None]).view(n, k)
    reference = blocks_rounded_by_hand(x) @ weights.T
    torch.testing.assert_close(cpu_kernels.gemv_w4a8(x, rows).double(), reference, rtol=1e-5, atol=1e-3)


@pytest.mark.skipif(not cpu_kernels.has_vnni(), reason="this CPU has no AVX-512 VNNI: only one build to test")
def test_the_vnni_build_gives_the_same_numbers_as_the_avx2_build(tmp_path, monkeypatch):
    monkeypatch.setenv("PALIGEMMA_CACHE", str(tmp_path))
    builds = [cpu_kernels._build(cpu_kernels.build_flags(vnni=True)), cpu_kernels._build(cpu_kernels.FLAGS)]
    for n, k, largest in [(257, 640, False), (64, 1056, False), (1027, 2048, False), (9, 1056, True)]:
        x = torch.full((1, k), -3.0) if largest else torch.randn(1, k)
        *_, rows = random_int4(n, k, seed=k, q=torch.full((n, k), 15, dtype=torch.uint8) if largest else None)
        qweight, row_scales = random_int8(n, k, seed=k)
        outputs = []
        for library in builds:
            w4, w8 = torch.empty(1, n), torch.empty(1, n)
            library.pg_gemv_w4a8(x.data_ptr(), rows.data_ptr(), w4.data_ptr(), n, k, 2)
            library.pg_gemv_w8a8(x.data_ptr(), qweight.data_ptr(), row_scales.data_ptr(), w8.data_ptr(), n, k, 2)
            outputs.append((w4, w8))
        assert torch.equal(outputs[0][0], outputs[1][0]) and torch.equal(outputs[0][1], outputs[1][1])
    assert len(list(tmp_path.iterdir())) == 2  # two libraries: one per set of flags


def test_the_c_rounding_is_bit_equal_to_quantize_blocks():
    torch.manual_seed(0)
    library = cpu_kernels._library()
    for k in (32, 640, 2048):
        x = torch.randn(k) * torch.rand(k) * 10
        x[3] = 1e4
        qx, block_scales = torch.empty(k, dtype=torch.int8), torch.empty(k // 32)
        library.pg_quantize_blocks(x.data_ptr(), qx.data_ptr(), block_scales.data_ptr(), k)
        from_c = (qx.float().view(-1, 32) * block_scales[:, None]).view(-1)
        assert torch.equal(from_c, cpu_kernels.quantize_blocks(x))


def test_kernel_linear_equals_f_linear_for_every_input_length():
    torch.manual_seed(1)
    linear = nn.Linear(64, 96, bias=False)
    layer = KernelLinear(linear)
    assert layer.weight is linear.weight
    for shape in [(1, 1, 64), (1, 5, 64), (3, 1, 64)]:
        x = torch.randn(shape)
        torch.testing.assert_close(layer(x), linear(x), atol=1e-5, rtol=1e-5)
    x = torch.randn(1, 64, requires_grad=True)
    layer(x).sum().backward()  # with gradients wanted, torch's product runs (the kernels have no backward)
    torch.testing.assert_close(x.grad, linear.weight.sum(0, keepdim=True))
    assert linear.weight.grad is not None
    with pytest.raises(ValueError, match="no bias"):
        KernelLinear(nn.Linear(64, 96))


def test_a_bfloat16_model_decodes_the_same_tokens_with_the_kernels():
    original = make_causal_lm("gemma3", seed=3, hidden_size=64, head_dim=16, intermediate_size=128).to(torch.bfloat16)
    with_kernels = use_cpu_kernels(copy.deepcopy(original))
    assert isinstance(with_kernels.lm_head, KernelLinear)
    assert with_kernels.lm_head.weight is with_kernels.model.embed_tokens.weight  # still tied
    ids = torch.randint(3, 97, (1, 9), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        steps, cache = [], with_kernels.new_kv_cache()
        for t in range(ids.shape[1]):  # one row per call: every linear layer runs through the kernel
            steps.append(with_kernels(input_ids=ids[:, t:t + 1], kv_cache=cache)["logits"][:, -1].float())
        reference = original(input_ids=ids)["logits"].float()
    # bfloat16 activations round the kernel's float32 results: a few bfloat16 steps at most
    torch.testing.assert_close(torch.stack(steps, 1), reference, atol=0.05, rtol=0.02)
    tokens = with_kernels.generate(ids, max_new_tokens=6, eos_token_id=None)
    assert torch.equal(with_kernels.generate(ids, max_new_tokens=6, eos_token_id=None, compile=True), tokens)


def test_use_cpu_kernels_refuses_a_quantized_model():
    from paligemma.quantization import quantize
    with pytest.raises(ValueError, match="quantized"):
        use_cpu_kernels(quantize(make_causal_lm("gemma", seed=5), "int8"))


def test_the_library_is_built_once_per_source_into_the_cache(tmp_path):
    code = ("from paligemma import cpu_kernels; print(cpu_kernels.available(), cpu_kernels.unavailable_reason()); "
            "print(*sorted(p.name for p in cpu_kernels.cache_folder().iterdir()))")
    env = {**os.environ, "PALIGEMMA_CACHE": str(tmp_path)}
    first = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    second = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert first.stdout.splitlines()[0] == "True None"
    names = first.stdout.splitlines()[1].split()
    assert len(names) == 1 and names[0].startswith("cpu_kernels-") and names[0].endswith(".so")
    assert second.stdout == first.stdout


def test_without_the_kernels_every_path_says_why_and_still_computes(tmp_path):
    code = """
import torch
from paligemma import cpu_kernels
from paligemma.quantization import Int4Linear, Int8DynamicLinear, Int8Linear
assert not cpu_kernels.available()
print(cpu_kernels.unavailable_reason())
try:
    cpu_kernels.use_cpu_kernels(None)
except ValueError as err:
    print(err)
linear = torch.nn.Linear(64, 32, bias=False)
x = torch.randn(1, 64)
for kind in (Int8Linear, Int8DynamicLinear):
    layer = kind.from_linear(linear)
    rounded = cpu_kernels.quantize_blocks(x) if kind is Int8DynamicLinear else x
    torch.testing.assert_close(layer(x), rounded @ layer.dequantized().T, atol=1e-5, rtol=1e-5)
layer = Int4Linear(linear)
torch.testing.assert_close(layer(x), cpu_kernels.quantize_blocks(x) @ layer.dequantized().T, atol=1e-5, rtol=1e-5)
print("ok")
"""
    env = {**os.environ, "PALIGEMMA_CPU_KERNELS": "0", "PALIGEMMA_CACHE": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["PALIGEMMA_CPU_KERNELS=0 is set",
                                          "the CPU kernels are not available: PALIGEMMA_CPU_KERNELS=0 is set", "ok"]
    assert not list(tmp_path.iterdir())  # nothing built
