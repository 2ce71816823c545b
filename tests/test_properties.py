"""Mathematical properties of the building blocks, checked on many random inputs with hypothesis."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import TOL, make_gemma, tiny_gemma_config
from paligemma import GemmaAttention, GemmaRMSNorm, GemmaRotaryEmbedding, apply_rotary_pos_emb, repeat_kv
from paligemma.attention import eager_attention

seeds = st.integers(0, 2**31 - 1)
FAST = settings(max_examples=25, deadline=None, derandomize=True)  # same examples on every run


@FAST
@given(seed=seeds, scale=st.floats(1e-3, 1e3))
def test_rmsnorm_is_invariant_to_input_scale(seed, scale):
    torch.manual_seed(seed)
    norm = GemmaRMSNorm(16, eps=0.0)
    with torch.no_grad():
        norm.weight.normal_()
    x = torch.randn(3, 16)  # RMSNorm always computes in float32, so float32 tolerances apply
    torch.testing.assert_close(norm(x * scale), norm(x), **TOL)


def test_rmsnorm_starts_as_plain_normalisation():
    x = torch.randn(4, 32)
    out = GemmaRMSNorm(32, eps=0.0)(x)
    torch.testing.assert_close(out.pow(2).mean(-1), torch.ones(4))


@FAST
@given(seed=seeds, position=st.integers(0, 5000))
def test_rope_preserves_norms(seed, position):
    torch.manual_seed(seed)
    rope = GemmaRotaryEmbedding(32)
    q, k = torch.randn(1, 2, 1, 32), torch.randn(1, 2, 1, 32)
    cos, sin = rope(q, torch.tensor([[position]]))
    q_rot, k_rot = apply_rotary_pos_emb(q, k, cos, sin)
    torch.testing.assert_close(q_rot.norm(dim=-1), q.norm(dim=-1), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(k_rot.norm(dim=-1), k.norm(dim=-1), atol=1e-4, rtol=1e-5)


@FAST
@given(seed=seeds, m=st.integers(0, 200), n=st.integers(0, 200), shift=st.integers(1, 300))
def test_rope_dot_product_depends_only_on_distance(seed, m, n, shift):
    torch.manual_seed(seed)
    rope = GemmaRotaryEmbedding(16)
    q, k = torch.randn(1, 1, 1, 16, dtype=torch.float64), torch.randn(1, 1, 1, 16, dtype=torch.float64)

    def score(pos_q, pos_k):
        cos_q, sin_q = rope(q, torch.tensor([[pos_q]]))
        cos_k, sin_k = rope(k, torch.tensor([[pos_k]]))
        q_rot, _ = apply_rotary_pos_emb(q, q, cos_q, sin_q)
        _, k_rot = apply_rotary_pos_emb(k, k, cos_k, sin_k)
        return (q_rot * k_rot).sum()

    # angles are computed in float32 (as in transformers), so large positions round slightly differently
    torch.testing.assert_close(score(m, n), score(m + shift, n + shift), atol=1e-4, rtol=1e-4)


@FAST
@given(seed=seeds, kv_heads=st.sampled_from([1, 2, 4]), length=st.integers(1, 6))
def test_gqa_equals_mha_with_repeated_kv(seed, kv_heads, length):
    """Sharing one K/V head among a group of query heads is MHA whose K/V heads are copies."""
    torch.manual_seed(seed)
    q = torch.randn(2, 4, length, 8)
    k, v = torch.randn(2, kv_heads, length, 8), torch.randn(2, kv_heads, length, 8)
    n_rep = 4 // kv_heads
    gqa_out, _ = eager_attention(q, repeat_kv(k, n_rep), repeat_kv(v, n_rep), None, 8**-0.5)
    for head in range(4):  # query head h reads K/V head h // n_rep
        group = head // n_rep
        mha_out, _ = eager_attention(q[:, head:head + 1], k[:, group:group + 1], v[:, group:group + 1], None, 8**-0.5)
        torch.testing.assert_close(gqa_out[:, head:head + 1], mha_out)
    assert torch.equal(repeat_kv(k, n_rep), k.repeat_interleave(n_rep, dim=1))


@FAST
@given(seed=seeds, kv_heads=st.sampled_from([1, 2, 4]), length=st.integers(1, 9), padded=st.integers(0, 3))
def test_sdpa_and_eager_attention_agree(seed, kv_heads, length, padded):
    torch.manual_seed(seed)
    config = tiny_gemma_config(num_key_value_heads=kv_heads)
    eager = GemmaAttention(config, 0)
    config.attn_implementation = "sdpa"
    sdpa = GemmaAttention(config, 0)
    sdpa.load_state_dict(eager.state_dict())
    model = make_gemma(seed=seed % 1000, num_key_value_heads=kv_heads)
    ids = torch.randint(0, config.vocab_size, (2, length))
    mask = torch.ones(2, length, dtype=torch.long)
    mask[1, :min(padded, length - 1)] = 0
    for implementation in ("eager", "sdpa"):
        for layer in model.model.layers:
            layer.self_attn.attn_implementation = implementation
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=mask)["logits"]
        if implementation == "eager":
            reference = out
    real = mask.bool()
    torch.testing.assert_close(out[real], reference[real], **TOL)
    hidden = torch.randn(2, length, config.hidden_size)
    cos, sin = GemmaRotaryEmbedding(config.head_dim)(hidden, torch.arange(length)[None])
    with torch.no_grad():
        torch.testing.assert_close(sdpa(hidden, (cos, sin)), eager(hidden, (cos, sin)), **TOL)
