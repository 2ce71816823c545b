/* One decode step of a Gemma decoder in C: the whole token in one call, for a CPU.
 *
 * The compiled torch step (static_decoding.decode_step) spends about as long between its matrix products as in
 * them: torch.compile's guard checks, its Python wrapper calling 73 kernels and 18 attentions one by one, the
 * attention operator's set-up. Here the same computation runs inside one OpenMP parallel region: the threads
 * share the rows of every matrix (through the kernels the torch step calls, cpu_kernels.c) and meet at a
 * barrier only where the next piece needs the whole vector. The maths is the torch model's (modeling_gemma*.py):
 * RMSNorm with (1 + w), RoPE in the half-split layout, attention over the preallocated cache with its masks, the
 * gated GELU(tanh) MLP; the numbers agree with it up to float rounding (tested in tests/test_native_decoding.py).
 */
#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stddef.h>
#include <stdint.h>

#include "cpu_kernels.h"

/* how a model's matrices are stored: quantization.py's modes, or float32 */
enum { PG_FLOAT32 = 0, PG_INT8 = 1, PG_INT8_DYNAMIC = 2, PG_INT4 = 3 };

typedef struct {
    const void *weights;                     /* float32 rows, int8 rows, or Int4Linear.rows */
    const float *scales;                     /* the int8 formats' row scales, else NULL */
    int64_t rows;                            /* 0: no matrix (q/k/v and gate/up may be one stacked matrix) */
} pg_matrix;

typedef struct {
    pg_matrix qkv[3], o, gate_up[2], down;   /* their outputs follow each other: q k v, gate up */
    const float *input_norm;                 /* before the attention */
    const float *attention_output_norm;      /* after it (Gemma 2 and 3), NULL in Gemma 1 */
    const float *mlp_input_norm;             /* before the MLP */
    const float *mlp_output_norm;            /* after it (Gemma 2 and 3), NULL in Gemma 1 */
    const float *q_norm, *k_norm;            /* every head's query and key normalised (Gemma 3), or NULL */
    const float *inv_freq;                   /* head_dim / 2 RoPE speeds of this layer's kind */
    float *keys, *values;                    /* this layer's cache, (kv_heads, slots, head_dim) */
    int64_t slots;                           /* its length: the whole cache, or a local layer's ring */
} pg_layer;

typedef struct {
    int64_t format, layers, hidden, heads, kv_heads, head_dim, intermediate, vocab;
    float eps, embed_scale, attention_scale, attention_cap, final_cap; /* a cap of 0: none */
    const void *embed_rows;                  /* the embedding table (vocab, hidden): float32, or int8 rows */
    const float *embed_scales;               /* and their scales (vocab,); NULL for a float32 table */
    const float *final_norm;
    pg_matrix head;                          /* the output projection */
    const pg_layer *layer;
} pg_model;

/* y = x / sqrt(mean(x^2) + eps) * (1 + w), n values (y may be x) */
static void rms_norm(const float *x, const float *w, float *y, int64_t n, float eps) {
    float squares = 0.0f;
    for (int64_t i = 0; i < n; i++) squares += x[i] * x[i];
    float inverse = 1.0f / sqrtf(squares / (float)n + eps);
    for (int64_t i = 0; i < n; i++) y[i] = x[i] * inverse * (1.0f + w[i]);
}

/* rotate each pair (i, i + d/2) of one head by position * inv_freq[i] */
static void rope(float *x, const float *inv_freq, int64_t position, int64_t d) {
    for (int64_t i = 0; i < d / 2; i++) {
        float angle = (float)position * inv_freq[i], c = cosf(angle), s = sinf(angle);
        float first = x[i], second = x[i + d / 2];
        x[i] = first * c - second * s;
        x[i + d / 2] = second * c + first * s;
    }
}

/* e^x for 8 floats at once: 2^n e^r with n = round(x / ln 2) and |r| <= ln(2) / 2, e^r from Cephes' expf
 * polynomial (relative error about 1e-7); x clamped to [-87, 88], where float32's e^x is finite and normal */
static inline __m256 exp8(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0f)), _mm256_set1_ps(88.0f));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x); /* ln 2 in two parts: r exact to float */
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 poly = _mm256_set1_ps(1.9875691500e-4f);
    poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(1.3981999507e-3f));
    poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(8.3334519073e-3f));
    poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(4.1665795894e-2f));
    poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(1.6666665459e-1f));
    poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(5.0000001201e-1f));
    __m256 e_r = _mm256_add_ps(_mm256_fmadd_ps(poly, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0f));
    __m256i two_n = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(e_r, _mm256_castsi256_ps(two_n));
}

/* gate[i] = GELU(gate[i]) * up[i], n a multiple of 8. GELU's tanh form 0.5 g (1 + tanh(u)),
 * u = sqrt(2 / pi) (g + 0.044715 g^3), is the same number as g / (1 + e^(-2u)): one exponential, vectorised. */
static void gelu_times(float *gate, const float *up, int64_t n) {
    const __m256 c = _mm256_set1_ps(-2.0f * 0.7978845608028654f), cubic = _mm256_set1_ps(0.044715f);
    for (int64_t i = 0; i < n; i += 8) {
        __m256 g = _mm256_loadu_ps(gate + i);
        __m256 u = _mm256_mul_ps(c, _mm256_fmadd_ps(_mm256_mul_ps(cubic, g), _mm256_mul_ps(g, g), g)); /* -2u */
        __m256 gelu = _mm256_div_ps(g, _mm256_add_ps(_mm256_set1_ps(1.0f), exp8(u)));
        _mm256_storeu_ps(gate + i, _mm256_mul_ps(gelu, _mm256_loadu_ps(up + i)));
    }
}

static float soft_cap(float x, float cap) { return cap > 0 ? cap * tanhf(x / cap) : x; }

/* One input vector as the products read it, shared by the threads: x itself (float32 and int8 weights), or
 * rounded to int8 per block (W8A8: qx, sx; W4A8 also arranged and block_sums). */
typedef struct { const float *x; int8_t *qx, *arranged; float *sx, *block_sums; int64_t k, format; } prepared;

static void prepare(prepared *p, const float *x, int64_t k) { /* by one thread, before the products */
    p->x = x, p->k = k;
    if (p->format == PG_INT8_DYNAMIC) pg_quantize_blocks(x, p->qx, p->sx, k);
    if (p->format == PG_INT4) pg_w4a8_prepare(x, k, p->qx, p->arranged, p->sx, p->block_sums);
}

/* This thread's share of the rows of y = W x, for W in pieces one after another (x prepared); the caller puts a
 * barrier after it. */
static void product(const prepared *p, const pg_matrix *pieces, int64_t n_pieces, float *y) {
    for (int64_t i = 0; i < n_pieces; y += pieces[i].rows, i++) {
        const pg_matrix *w = &pieces[i];
        int64_t begin = SHARE_BEGIN(w->rows), end = SHARE_END(w->rows);
        if (p->format == PG_FLOAT32) pg_f32_rows(p->x, w->weights, y, begin, end, p->k);
        if (p->format == PG_INT8) pg_int8_rows(p->x, w->weights, w->scales, y, begin, end, p->k);
        if (p->format == PG_INT8_DYNAMIC) pg_w8a8_rows(p->qx, p->sx, w->weights, w->scales, y, begin, end, p->k);
        if (p->format == PG_INT4) pg_w4a8_rows(p->qx, p->arranged, p->sx, p->block_sums, w->weights, y, begin, end, p->k);
    }
}

/* One query head over the cache: softmax(q K^T * scale + mask) V. Slot s holds position c - ((c - s) mod S)
 * after position c was written (a ring; in a cache of every position that is s itself, for s <= c): readable
 * when that position was written and is not padding (key_mask). */
static void attend(const pg_model *m, const pg_layer *l, const float *q, float *out, float *scores,
                   int64_t head, int64_t c, const uint8_t *key_mask, int64_t mask_length) {
    int64_t d = m->head_dim, S = l->slots, kv = head / (m->heads / m->kv_heads);
    const float *keys = l->keys + kv * S * d, *values = l->values + kv * S * d;
    float best = -INFINITY;
    for (int64_t s = 0; s < S; s++) {
        int64_t held = c - (((c - s) % S) + S) % S;
        scores[s] = -INFINITY;
        if (held < 0 || held >= mask_length || !key_mask[held]) continue;
        float dot = 0.0f;
        for (int64_t i = 0; i < d; i++) dot += q[i] * keys[s * d + i];
        scores[s] = soft_cap(dot * m->attention_scale, m->attention_cap);
        best = scores[s] > best ? scores[s] : best;
    }
    float total = 0.0f;
    for (int64_t i = 0; i < d; i++) out[i] = 0.0f;
    for (int64_t s = 0; s < S; s++) {
        if (scores[s] == -INFINITY) continue;
        float weight = expf(scores[s] - best);
        total += weight;
        for (int64_t i = 0; i < d; i++) out[i] += weight * values[s * d + i];
    }
    for (int64_t i = 0; i < d; i++) out[i] /= total;
}

/* logits (vocab,) for token *token at RoPE position *position, its keys and values written at cache slot
 * *cache_position (mod each layer's slots); key_mask (mask_length,) is 0 at padding. */
void pg_decode_step(const pg_model *m, const int64_t *token, const int64_t *position, const int64_t *cache_position,
                    const uint8_t *key_mask, int64_t mask_length, float *logits, int threads) {
    int64_t D = m->hidden, d = m->head_dim, H = m->heads, KV = m->kv_heads, F = m->intermediate;
    int64_t widest = D > H * d ? D : H * d, slots = 1;
    widest = widest > F ? widest : F;
    for (int64_t i = 0; i < m->layers; i++) slots = m->layer[i].slots > slots ? m->layer[i].slots : slots;
    float x[D];                      /* the residual stream */
    float normed[D], out[D];         /* a block's normalised input; its output (attention's o, the MLP's down) */
    float qkv[(H + 2 * KV) * d];     /* H query heads, then KV key heads, then KV value heads, d values each */
    float attended[H * d];           /* each query head's weighted sum of values */
    float gate_up[2 * F];            /* gate, then up; GELU(gate) * up is written over the gate half */
    float scores[H * slots];         /* per query head, one score per cache slot */
    int8_t qx[widest], arranged[2 * widest];        /* an input rounded to int8, as the kernels read it */
    float sx[widest / 32], block_sums[widest / 32]; /* its per-block scales and scaled sums */
    prepared p = {NULL, qx, arranged, sx, block_sums, 0, m->format};
    int64_t c = *cache_position;

#pragma omp parallel num_threads(threads)
    {
#pragma omp single
        {
            for (int64_t i = 0; i < D; i++) /* the row, dequantized as QuantizedEmbedding does, times sqrt(D) */
                x[i] = (m->embed_scales ? (float)((const int8_t *)m->embed_rows)[*token * D + i] * m->embed_scales[*token]
                                        : ((const float *)m->embed_rows)[*token * D + i]) * m->embed_scale;
        }
        for (int64_t li = 0; li < m->layers; li++) {
            const pg_layer *l = &m->layer[li];
#pragma omp single
            {
                rms_norm(x, l->input_norm, normed, D, m->eps);
                prepare(&p, normed, D);
            }
            product(&p, l->qkv, 3, qkv);
#pragma omp barrier
#pragma omp single
            {
                float *q = qkv, *k = qkv + H * d, *v = k + KV * d;
                int64_t slot = c % l->slots;
                for (int64_t h = 0; h < H; h++) {
                    if (l->q_norm) rms_norm(q + h * d, l->q_norm, q + h * d, d, m->eps);
                    rope(q + h * d, l->inv_freq, *position, d);
                }
                for (int64_t h = 0; h < KV; h++) {
                    if (l->k_norm) rms_norm(k + h * d, l->k_norm, k + h * d, d, m->eps);
                    rope(k + h * d, l->inv_freq, *position, d);
                    for (int64_t i = 0; i < d; i++) {
                        l->keys[(h * l->slots + slot) * d + i] = k[h * d + i];
                        l->values[(h * l->slots + slot) * d + i] = v[h * d + i];
                    }
                }
            }
#pragma omp for schedule(static)
            for (int64_t h = 0; h < H; h++)
                attend(m, l, qkv + h * d, attended + h * d, scores + h * slots, h, c, key_mask, mask_length);
#pragma omp single
            prepare(&p, attended, H * d);
            product(&p, &l->o, 1, out);
#pragma omp barrier
#pragma omp single
            {
                if (l->attention_output_norm) rms_norm(out, l->attention_output_norm, out, D, m->eps);
                for (int64_t i = 0; i < D; i++) x[i] += out[i];
                rms_norm(x, l->mlp_input_norm, normed, D, m->eps);
                prepare(&p, normed, D);
            }
            product(&p, l->gate_up, 2, gate_up);
#pragma omp barrier
#pragma omp single
            {
                gelu_times(gate_up, gate_up + F, F);
                prepare(&p, gate_up, F);
            }
            product(&p, &l->down, 1, out);
#pragma omp barrier
#pragma omp single
            {
                if (l->mlp_output_norm) rms_norm(out, l->mlp_output_norm, out, D, m->eps);
                for (int64_t i = 0; i < D; i++) x[i] += out[i];
            }
        }
#pragma omp single
        {
            rms_norm(x, m->final_norm, normed, D, m->eps);
            prepare(&p, normed, D);
        }
        product(&p, &m->head, 1, logits);
        if (m->final_cap > 0) {
#pragma omp barrier
#pragma omp for schedule(static)
            for (int64_t i = 0; i < m->vocab; i++) logits[i] = soft_cap(logits[i], m->final_cap);
        }
    }
}
