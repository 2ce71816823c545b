/* Matrix-vector products for one decode step on an x86 CPU with AVX2 and FMA: y = W x for one token.
 *
 * A decode step reads every weight once and does two flops per weight, so what counts is reading the weights
 * at memory speed: each kernel streams the rows of W, converts a 32-byte load to float32 (or multiplies bytes
 * directly), with independent sums per row so the additions do not wait on each other. OpenMP splits the rows
 * between threads; loaded after torch, this library shares torch's OpenMP runtime (the same libgomp) and so its
 * threads.
 * Every kernel needs k (the row length) to be a multiple of 32; paligemma/cpu_kernels.py checks that.
 * Where the CPU has AVX-512 VNNI, cpu_kernels.py compiles with it and the integer kernels multiply-and-add bytes
 * in one instruction (_mm256_dpbusd_epi32) instead of two: the same integer sums, so the same results.
 */
#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>

#include "cpu_kernels.h"

/* bytes: each row's loop asks for the memory this far ahead (measured over one token's matrices, 512 ... 8192:
 * 2048 best, or within 3 %, for every kernel) */
#define AHEAD 2048
#define PREFETCH(p) _mm_prefetch((const char *)(p) + AHEAD, _MM_HINT_T0)


static inline float sum_lanes(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_hadd_ps(s, s);
    return _mm_cvtss_f32(_mm_hadd_ps(s, s));
}

/* ---- weight-only int8: y[r] = s[r] * sum_j q[r, j] x[j], x in float32 ---- */

static inline __m256 int8_times_x(__m256 acc, __m128i eight_weights, const float *x) {
    return _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(eight_weights)), _mm256_loadu_ps(x), acc);
}

/* rows begin ... end - 1 (one thread's share); pg_gemv_int8 splits all n rows between the threads */
void pg_int8_rows(const float *x, const int8_t *q, const float *s, float *y, int64_t begin, int64_t end, int64_t k) {
    for (int64_t r = begin; r < end; r++) {
        const int8_t *row = q + r * k;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int64_t j = 0; j < k; j += 32) {
            PREFETCH(row + j);
            __m256i bytes = _mm256_loadu_si256((const __m256i *)(row + j)); /* 32 weights */
            __m128i lo = _mm256_castsi256_si128(bytes), hi = _mm256_extracti128_si256(bytes, 1);
            a0 = int8_times_x(a0, lo, x + j);
            a1 = int8_times_x(a1, _mm_srli_si128(lo, 8), x + j + 8);
            a2 = int8_times_x(a2, hi, x + j + 16);
            a3 = int8_times_x(a3, _mm_srli_si128(hi, 8), x + j + 24);
        }
        y[r] = sum_lanes(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3))) * s[r];
    }
}

void pg_gemv_int8(const float *x, const int8_t *q, const float *s, float *y, int64_t n, int64_t k, int threads) {
#pragma omp parallel num_threads(threads)
    pg_int8_rows(x, q, s, y, SHARE_BEGIN(n), SHARE_END(n), k);
}

/* ---- int8 weights and int8 activations (W8A8): x quantized per block of 32 values, each with its own scale ---- */

void pg_quantize_blocks(const float *x, int8_t *qx, float *sx, int64_t k) {
    for (int64_t b = 0; b < k / 32; b++) {
        float largest = 0.0f;
        for (int j = 0; j < 32; j++) {
            float a = x[b * 32 + j] < 0 ? -x[b * 32 + j] : x[b * 32 + j];
            largest = a > largest ? a : largest;
        }
        float inverse = largest > 0 ? 127.0f / largest : 0.0f;
        sx[b] = largest / 127.0f;
        for (int j = 0; j < 32; j++) qx[b * 32 + j] = (int8_t)__builtin_rintf(x[b * 32 + j] * inverse);
    }
}

/* 32 products of int8 pairs summed into 8 int32 lanes. maddubs multiplies unsigned by signed bytes, so the
 * signs move from the activations onto the weights first (|a| * sign(a) w); pairs of products fit in int16
 * (2 * 127 * 127 < 32767). */
static inline __m256i int8_dot(__m256i w, __m256i a) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__) /* one instruction for both steps, the same integers */
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_sign_epi8(a, a), _mm256_sign_epi8(w, a));
#else
    __m256i pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(a, a), _mm256_sign_epi8(w, a));
    return _mm256_madd_epi16(pairs, _mm256_set1_epi16(1));
#endif
}

/* rows begin ... end - 1 of W8A8 with x already rounded (qx, sx: pg_quantize_blocks) */
void pg_w8a8_rows(const int8_t *qx, const float *sx, const int8_t *q, const float *s, float *y, int64_t begin,
                  int64_t end, int64_t k) {
    for (int64_t r = begin; r < end; r++) {
        const int8_t *row = q + r * k;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0;
        int64_t j = 0;
        for (; j + 64 <= k; j += 64) { /* two blocks per step, two independent sums */
            PREFETCH(row + j);
            __m256i w0 = _mm256_loadu_si256((const __m256i *)(row + j));
            __m256i w1 = _mm256_loadu_si256((const __m256i *)(row + j + 32));
            __m256i x0 = _mm256_loadu_si256((const __m256i *)(qx + j));
            __m256i x1 = _mm256_loadu_si256((const __m256i *)(qx + j + 32));
            a0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(int8_dot(w0, x0)), _mm256_set1_ps(sx[j / 32]), a0);
            a1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(int8_dot(w1, x1)), _mm256_set1_ps(sx[j / 32 + 1]), a1);
        }
        for (; j < k; j += 32) {
            __m256i w0 = _mm256_loadu_si256((const __m256i *)(row + j));
            __m256i x0 = _mm256_loadu_si256((const __m256i *)(qx + j));
            a0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(int8_dot(w0, x0)), _mm256_set1_ps(sx[j / 32]), a0);
        }
        y[r] = sum_lanes(_mm256_add_ps(a0, a1)) * s[r];
    }
}

void pg_gemv_w8a8(const float *x, const int8_t *q, const float *s, float *y, int64_t n, int64_t k, int threads) {
    int8_t qx[k];       /* the row of activations rounded to int8, */
    float sx[k / 32];   /* one scale per block of 32 (k is at most a few thousand: the stack holds them) */
    pg_quantize_blocks(x, qx, sx, k);
#pragma omp parallel num_threads(threads)
    pg_w8a8_rows(qx, sx, q, s, y, SHARE_BEGIN(n), SHARE_END(n), k);
}

/* ---- bfloat16 weights: a bfloat16 is the top half of a float32, so widening is a 16-bit shift ---- */

static inline __m256 bf16_times_x(__m256 acc, __m128i eight_weights, const float *x) {
    __m256 w = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(eight_weights), 16));
    return _mm256_fmadd_ps(w, _mm256_loadu_ps(x), acc);
}

static void bf16_rows(const float *x, const uint16_t *w, float *y, int64_t begin, int64_t end, int64_t k) {
    for (int64_t r = begin; r < end; r++) {
        const uint16_t *row = w + r * k;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int64_t j = 0; j < k; j += 32) {
            PREFETCH(row + j);
            __m256i h0 = _mm256_loadu_si256((const __m256i *)(row + j)); /* 16 weights */
            __m256i h1 = _mm256_loadu_si256((const __m256i *)(row + j + 16));
            a0 = bf16_times_x(a0, _mm256_castsi256_si128(h0), x + j);
            a1 = bf16_times_x(a1, _mm256_extracti128_si256(h0, 1), x + j + 8);
            a2 = bf16_times_x(a2, _mm256_castsi256_si128(h1), x + j + 16);
            a3 = bf16_times_x(a3, _mm256_extracti128_si256(h1, 1), x + j + 24);
        }
        y[r] = sum_lanes(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    }
}

void pg_gemv_bf16(const float *x, const uint16_t *w, float *y, int64_t n, int64_t k, int threads) {
#pragma omp parallel num_threads(threads)
    bf16_rows(x, w, y, SHARE_BEGIN(n), SHARE_END(n), k);
}

/* ---- float32 weights ---- */

void pg_f32_rows(const float *x, const float *w, float *y, int64_t begin, int64_t end, int64_t k) {
    for (int64_t r = begin; r < end; r++) {
        const float *row = w + r * k;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int64_t j = 0; j < k; j += 32) {
            PREFETCH(row + j);
            PREFETCH(row + j + 16);
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(row + j), _mm256_loadu_ps(x + j), a0);
            a1 = _mm256_fmadd_ps(_mm256_loadu_ps(row + j + 8), _mm256_loadu_ps(x + j + 8), a1);
            a2 = _mm256_fmadd_ps(_mm256_loadu_ps(row + j + 16), _mm256_loadu_ps(x + j + 16), a2);
            a3 = _mm256_fmadd_ps(_mm256_loadu_ps(row + j + 24), _mm256_loadu_ps(x + j + 24), a3);
        }
        y[r] = sum_lanes(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    }
}

void pg_gemv_f32(const float *x, const float *w, float *y, int64_t n, int64_t k, int threads) {
#pragma omp parallel num_threads(threads)
    pg_f32_rows(x, w, y, SHARE_BEGIN(n), SHARE_END(n), k);
}

/* ---- int4 weights (groups of 32: w = min + scale * q, q in 0 ... 15) and int8 activations (W4A8) ----
 * A row is stored as its float16 scales (one per group), its float16 minimums, then its nibbles, 16 bytes a
 * group: byte b of group g holds weight 32g + b in its low nibble and 32g + 16 + b in its high one. Per group,
 *     sum_j w_j x_j = scale * sx * (sum_j q_j qx_j) + min * sx * (sum_j qx_j),
 * and the second sum depends on the activations only, so it is computed once per call (block_sums).
 * The bytes of eight groups (a "chunk", 128 bytes) are stored transposed in 4-byte words: 32-byte load v holds
 * bytes 4v ... 4v+3 of groups 0 ... 7, one group per 32-bit lane. Multiply-adding the four loads' low and high
 * nibbles into the same lanes then leaves each lane with its whole group's integer sum: no horizontal adds.
 * The activations are laid out once per call to match (arranged). A row's last four groups, when its length is
 * not a multiple of 256 (640 in Gemma 3 270M), are a "quad" stored the same way with 16-byte loads, and two rows'
 * quads fill one 32-byte vector; groups past a multiple of four (rare) keep the plain order. The layout is
 * quantization.int4_byte_order's; tests/test_cpu_kernels.py builds it by hand. */

/* how far ahead the int4 loop asks for its rows (measured in the whole C decode step, A/B in one process:
 * 4096 bytes a few per cent faster than 2048 in three runs out of three; 1024 and 8192 slower; the L2 hint no
 * better) */
#define W4A8_AHEAD 4096

#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
/* sums += per 32-bit lane, the four products of unsigned 4-bit weights and signed int8 activations */
#define DOT_ADD(sums, nibbles, acts) _mm256_dpbusd_epi32((sums), (nibbles), (acts))
#define DOT_START(nibbles, acts) _mm256_dpbusd_epi32(_mm256_setzero_si256(), (nibbles), (acts))
#define DOT_JOIN(low, high) _mm256_add_epi32((low), (high))
#else
/* without VNNI the sums stay int16 until the end: at most 16 products of 15 * 127 per lane, 30480 < 32767 */
#define DOT_ADD(sums, nibbles, acts) _mm256_add_epi16((sums), _mm256_maddubs_epi16((nibbles), (acts)))
#define DOT_START(nibbles, acts) _mm256_maddubs_epi16((nibbles), (acts))
#define DOT_JOIN(low, high) _mm256_madd_epi16(_mm256_add_epi16((low), (high)), _mm256_set1_epi16(1))
#endif

/* Eight int32 lanes, one whole group each, from four 32-byte loads of nibbles and their arranged activations. */
static inline __m256i lanes_dot(__m256i b0, __m256i b1, __m256i b2, __m256i b3, const int8_t *acts) {
    const __m256i nibble = _mm256_set1_epi8(0x0F);
#define ACTS(i) _mm256_loadu_si256((const __m256i *)(acts + 32 * (i)))
    __m256i low = DOT_START(_mm256_and_si256(b0, nibble), ACTS(0));
    __m256i high = DOT_START(_mm256_and_si256(_mm256_srli_epi16(b0, 4), nibble), ACTS(1));
    low = DOT_ADD(low, _mm256_and_si256(b1, nibble), ACTS(2));
    high = DOT_ADD(high, _mm256_and_si256(_mm256_srli_epi16(b1, 4), nibble), ACTS(3));
    low = DOT_ADD(low, _mm256_and_si256(b2, nibble), ACTS(4));
    high = DOT_ADD(high, _mm256_and_si256(_mm256_srli_epi16(b2, 4), nibble), ACTS(5));
    low = DOT_ADD(low, _mm256_and_si256(b3, nibble), ACTS(6));
    high = DOT_ADD(high, _mm256_and_si256(_mm256_srli_epi16(b3, 4), nibble), ACTS(7));
#undef ACTS
    return DOT_JOIN(low, high);
}

static inline __m256i load32(const uint8_t *p) { return _mm256_loadu_si256((const __m256i *)p); }
static inline __m256i two16(const uint8_t *a, const uint8_t *b) { /* 16 bytes of a, then 16 of b */
    return _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)a)),
                                   _mm_loadu_si128((const __m128i *)b), 1);
}
static inline __m256 halves_ph(const uint16_t *a, const uint16_t *b) { /* 4 float16 of a, 4 of b, as floats */
    return _mm256_cvtph_ps(_mm_unpacklo_epi64(_mm_loadl_epi64((const __m128i *)a), _mm_loadl_epi64((const __m128i *)b)));
}

/* acc + this chunk's eight groups, scaled: dots * sx * scale + min * block_sum */
static inline __m256 chunk(__m256 acc, const uint8_t *w, const int8_t *acts, const uint16_t *scales,
                           const uint16_t *mins, const float *sx, const float *block_sums) {
    __m256 dots = _mm256_cvtepi32_ps(lanes_dot(load32(w), load32(w + 32), load32(w + 64), load32(w + 96), acts));
    __m256 scale = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)scales));
    acc = _mm256_fmadd_ps(_mm256_mul_ps(dots, _mm256_loadu_ps(sx)), scale, acc);
    return _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)mins)), _mm256_loadu_ps(block_sums), acc);
}

/* Two rows' quads (the same groups g ... g+3 of rows a and b): lanes 0-3 row a's groups, 4-7 row b's, scaled. */
static inline __m256 quads(const uint8_t *wa, const uint8_t *wb, const int8_t *acts, const uint16_t *scales_a,
                           const uint16_t *scales_b, const uint16_t *mins_a, const uint16_t *mins_b, const float *sx,
                           const float *block_sums) {
    __m256 dots = _mm256_cvtepi32_ps(lanes_dot(two16(wa, wb), two16(wa + 16, wb + 16), two16(wa + 32, wb + 32),
                                               two16(wa + 48, wb + 48), acts));
    __m256 scaled = _mm256_mul_ps(_mm256_mul_ps(dots, _mm256_broadcast_ps((const __m128 *)sx)),
                                  halves_ph(scales_a, scales_b));
    return _mm256_fmadd_ps(halves_ph(mins_a, mins_b), _mm256_broadcast_ps((const __m128 *)block_sums), scaled);
}

/* One group in the plain order (past the quads), from qx. */
static inline float plain_group(const uint8_t *w, const int8_t *qx, float sx, float block_sum, uint16_t scale,
                                uint16_t min) {
    __m128i bytes = _mm_loadu_si128((const __m128i *)w), nibble = _mm_set1_epi8(0x0F);
    __m256i q = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(bytes, 4), nibble), _mm_and_si128(bytes, nibble));
    __m256i d = _mm256_madd_epi16(_mm256_maddubs_epi16(q, _mm256_loadu_si256((const __m256i *)qx)), _mm256_set1_epi16(1));
    __m128i d4 = _mm_add_epi32(_mm256_castsi256_si128(d), _mm256_extracti128_si256(d, 1));
    d4 = _mm_hadd_epi32(d4, d4);
    return _mm_cvtsi128_si32(_mm_hadd_epi32(d4, d4)) * sx * _cvtsh_ss(scale) + _cvtsh_ss(min) * block_sum;
}

static inline float sum_half(__m256 v, int upper) { /* the sum of lanes 0-3 (upper = 0) or 4-7 */
    __m128 h = upper ? _mm256_extractf128_ps(v, 1) : _mm256_castps256_ps128(v);
    h = _mm_hadd_ps(h, h);
    return _mm_cvtss_f32(_mm_hadd_ps(h, h));
}

/* The activations' side of a W4A8 product, computed once per input vector: x rounded to int8 per block (qx, sx),
 * qx arranged as the chunks and quads read it (arranged: 2k bytes), and each block's sum times its scale. */
void pg_w4a8_prepare(const float *x, int64_t k, int8_t *qx, int8_t *arranged, float *sx, float *block_sums) {
    int64_t groups = k / 32, chunked = groups / 8 * 8, quad = groups % 8 >= 4;
    pg_quantize_blocks(x, qx, sx, k);
    for (int64_t g = 0; g < groups; g++) {
        int total = 0;
        for (int j = 0; j < 32; j++) total += qx[g * 32 + j];
        block_sums[g] = total * sx[g];
    }
    for (int64_t c = 0; c < chunked / 8; c++) /* load v's lane j: group j's bytes 4v ... 4v+3, low then high */
        for (int v = 0; v < 4; v++)
            for (int j = 0; j < 8; j++)
                for (int t = 0; t < 4; t++) {
                    const int8_t *group = qx + (c * 8 + j) * 32;
                    arranged[c * 256 + v * 64 + j * 4 + t] = group[4 * v + t];           /* low nibbles */
                    arranged[c * 256 + v * 64 + 32 + j * 4 + t] = group[16 + 4 * v + t]; /* high nibbles */
                }
    if (quad) /* the same for four groups, each 16 bytes written twice (both rows of a pair read them) */
        for (int v = 0; v < 4; v++)
            for (int j = 0; j < 4; j++)
                for (int t = 0; t < 4; t++)
                    for (int half = 0; half < 2; half++) {
                        const int8_t *group = qx + (chunked + j) * 32;
                        int8_t *to = arranged + chunked * 32 + v * 64 + half * 16 + j * 4 + t;
                        to[0] = group[4 * v + t], to[32] = group[16 + 4 * v + t];
                    }
}

/* Rows begin ... end - 1 of the product, from prepared activations (one thread's share), two rows at a time. */
void pg_w4a8_rows(const int8_t *qx, const int8_t *arranged, const float *sx, const float *block_sums,
                  const uint8_t *rows, float *y, int64_t begin, int64_t end, int64_t k) {
    int64_t groups = k / 32, chunked = groups / 8 * 8, quad = groups % 8 >= 4, row_bytes = 4 * groups + k / 2;
    int64_t plain = chunked + 4 * quad; /* the first group in the plain order */
    /* the next line to ask for: each line of the rows once, W4A8_AHEAD bytes before it is read (two rows' loads
     * jump between them; asking for each row's own lines ahead left a third of the lines to the hardware, and the
     * step's products were about 10 % slower that way) */
    const uint8_t *ahead = rows + begin * row_bytes + W4A8_AHEAD;
    for (int64_t r = begin; r < end; r += 2) {
        int64_t b = r + 1 < end ? r + 1 : r; /* the pair's second row (the first again for an odd last row) */
        const uint16_t *scales_a = (const uint16_t *)(rows + r * row_bytes), *mins_a = scales_a + groups;
        const uint16_t *scales_b = (const uint16_t *)(rows + b * row_bytes), *mins_b = scales_b + groups;
        const uint8_t *wa = (const uint8_t *)(mins_a + groups), *wb = (const uint8_t *)(mins_b + groups);
        __m256 acc_a = _mm256_setzero_ps(), acc_b = _mm256_setzero_ps(), ends = _mm256_setzero_ps();
        for (int64_t g = 0; g < chunked; g += 8) {
            for (int i = 0; i < 4; i++, ahead += 64) _mm_prefetch((const char *)ahead, _MM_HINT_T0);
            acc_a = chunk(acc_a, wa + g * 16, arranged + g * 32, scales_a + g, mins_a + g, sx + g, block_sums + g);
            if (b != r)
                acc_b = chunk(acc_b, wb + g * 16, arranged + g * 32, scales_b + g, mins_b + g, sx + g, block_sums + g);
        }
        if (quad)
            ends = quads(wa + chunked * 16, wb + chunked * 16, arranged + chunked * 32, scales_a + chunked,
                         scales_b + chunked, mins_a + chunked, mins_b + chunked, sx + chunked, block_sums + chunked);
        float total_a = sum_lanes(acc_a) + sum_half(ends, 0), total_b = sum_lanes(acc_b) + sum_half(ends, 1);
        for (int64_t g = plain; g < groups; g++) {
            total_a += plain_group(wa + g * 16, qx + g * 32, sx[g], block_sums[g], scales_a[g], mins_a[g]);
            total_b += plain_group(wb + g * 16, qx + g * 32, sx[g], block_sums[g], scales_b[g], mins_b[g]);
        }
        y[r] = total_a;
        if (b != r) y[b] = total_b;
        for (; ahead < rows + (b + 1) * row_bytes + W4A8_AHEAD; ahead += 64) _mm_prefetch((const char *)ahead, _MM_HINT_T0);
    }
}

void pg_gemv_w4a8(const float *x, const uint8_t *rows, float *y, int64_t n, int64_t k, int threads) {
    int64_t groups = k / 32;
    int8_t qx[k], arranged[2 * k];
    float sx[groups], block_sums[groups];
    pg_w4a8_prepare(x, k, qx, arranged, sx, block_sums);
#pragma omp parallel num_threads(threads)
    pg_w4a8_rows(qx, arranged, sx, block_sums, rows, y, SHARE_BEGIN(n), SHARE_END(n), k);
}

/* ---- greedy decoding's argmax: the index of the first largest value, a NaN counting as larger than any (as in
 * torch.argmax). torch walks a long row one value at a time; here each thread takes a share of the row, eight
 * values at a time. ---- */

/* The first NaN of x[begin ... end - 1] if there is one, else its first largest value; -1 for an empty share. */
static int64_t first_largest(const float *x, int64_t begin, int64_t end) {
    __m256 best = _mm256_set1_ps(-INFINITY);
    int unordered = 0;
    int64_t i = begin;
    for (; i + 8 <= end; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        unordered |= _mm256_movemask_ps(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
        best = _mm256_max_ps(best, v);
    }
    float largest = -INFINITY;
    for (int j = 0; j < 8; j++) largest = best[j] > largest ? best[j] : largest;
    for (; i < end; i++) {
        unordered |= x[i] != x[i];
        largest = x[i] > largest ? x[i] : largest;
    }
    __m256 wanted = _mm256_set1_ps(largest);
    for (i = begin; i + 8 <= end; i += 8) { /* the first lane that is the largest (or a NaN), eight at a time */
        __m256 v = _mm256_loadu_ps(x + i);
        int hits = _mm256_movemask_ps(unordered ? _mm256_cmp_ps(v, v, _CMP_UNORD_Q) : _mm256_cmp_ps(v, wanted, _CMP_EQ_OQ));
        if (hits) return i + __builtin_ctz(hits);
    }
    for (; i < end; i++)
        if (unordered ? x[i] != x[i] : x[i] == largest) return i;
    return -1;
}

int64_t pg_argmax(const float *x, int64_t n, int threads) {
    int64_t found[threads];
    for (int t = 0; t < threads; t++) found[t] = -1;
#pragma omp parallel num_threads(threads)
    found[omp_get_thread_num()] = first_largest(x, SHARE_BEGIN(n), SHARE_END(n));
    int64_t best = -1; /* the shares in order: a later one wins with a strictly larger value, or the first NaN */
    for (int t = 0; t < threads; t++) {
        int64_t f = found[t];
        if (f < 0 || (best >= 0 && x[best] != x[best])) continue;
        if (best < 0 || x[f] != x[f] || x[f] > x[best]) best = f;
    }
    return best;
}
