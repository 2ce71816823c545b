/* Matrix-vector products for one decode step on an x86 CPU with AVX2 and FMA: y = W x for one token.
 *
 * A decode step reads every weight once and does two flops per weight, so what counts is reading the weights
 * at memory speed: each kernel streams the rows of W, converts a 32-byte load to float32 (or multiplies bytes
 * directly), with four independent sums per row so the additions do not wait on each other. OpenMP splits the rows between threads; loaded
 * after torch, this library shares torch's OpenMP runtime (the same libgomp) and so its threads.
 * Every kernel needs k (the row length) to be a multiple of 32; paligemma/cpu_kernels.py checks that.
 */
#include <immintrin.h>
#include <stdint.h>

#define AHEAD 1024 /* bytes: each row's loop asks for the memory this far ahead (measured: best of 0 ... 4096) */
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

void pg_gemv_int8(const float *x, const int8_t *q, const float *s, float *y, int64_t n, int64_t k, int threads) {
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t r = 0; r < n; r++) {
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
    __m256i pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(a, a), _mm256_sign_epi8(w, a));
    return _mm256_madd_epi16(pairs, _mm256_set1_epi16(1));
}

void pg_gemv_w8a8(const float *x, const int8_t *q, const float *s, float *y, int64_t n, int64_t k, int threads) {
    int8_t qx[k];       /* the row of activations rounded to int8, */
    float sx[k / 32];   /* one scale per block of 32 (k is at most a few thousand: the stack holds them) */
    pg_quantize_blocks(x, qx, sx, k);
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t r = 0; r < n; r++) {
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

/* ---- bfloat16 weights: a bfloat16 is the top half of a float32, so widening is a 16-bit shift ---- */

static inline __m256 bf16_times_x(__m256 acc, __m128i eight_weights, const float *x) {
    __m256 w = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(eight_weights), 16));
    return _mm256_fmadd_ps(w, _mm256_loadu_ps(x), acc);
}

void pg_gemv_bf16(const float *x, const uint16_t *w, float *y, int64_t n, int64_t k, int threads) {
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t r = 0; r < n; r++) {
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

/* ---- float32 weights ---- */

void pg_gemv_f32(const float *x, const float *w, float *y, int64_t n, int64_t k, int threads) {
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t r = 0; r < n; r++) {
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

/* ---- int4 weights (groups of 32: w = min + scale * q, q in 0 ... 15) and int8 activations (W4A8) ----
 * A row's group g is 16 bytes: weights 32g ... 32g+15 in the low nibbles, 32g+16 ... 32g+31 in the high ones,
 * so one load and two masks give the 32 weights in order. The scales and minimums are float16, one per group.
 * sum_j w_j x_j = scale * (sum_j q_j qx_j) * sx + min * (sum_j qx_j) * sx per group: the second sum depends on
 * the activations only, so it is computed once per call (block_sums). */
void pg_gemv_w4a8(const float *x, const uint8_t *packed, const uint16_t *scales, const uint16_t *mins, float *y,
                  int64_t n, int64_t k, int threads) {
    int64_t groups = k / 32;
    int8_t qx[k];
    float sx[groups], block_sums[groups];
    pg_quantize_blocks(x, qx, sx, k);
    for (int64_t g = 0; g < groups; g++) {
        int total = 0;
        for (int j = 0; j < 32; j++) total += qx[g * 32 + j];
        block_sums[g] = total * sx[g];
    }
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t r = 0; r < n; r++) {
        const uint8_t *row = packed + r * (k / 2);
        const uint16_t *row_scales = scales + r * groups, *row_mins = mins + r * groups;
        float combined[groups]; /* the row's scale times the activations' scale, per group */
        __m256 mins_acc = _mm256_setzero_ps();
        int64_t g = 0;
        for (; g + 8 <= groups; g += 8) { /* eight groups' float16 scales and minimums at once */
            __m256 scale = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(row_scales + g)));
            _mm256_storeu_ps(combined + g, _mm256_mul_ps(scale, _mm256_loadu_ps(sx + g)));
            __m256 low = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(row_mins + g)));
            mins_acc = _mm256_fmadd_ps(low, _mm256_loadu_ps(block_sums + g), mins_acc);
        }
        float from_mins = sum_lanes(mins_acc);
        for (; g < groups; g++) {
            combined[g] = _cvtsh_ss(row_scales[g]) * sx[g];
            from_mins += _cvtsh_ss(row_mins[g]) * block_sums[g];
        }
        const __m256i nibble = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
        __m256 a0 = _mm256_setzero_ps(), a1 = a0;
        for (g = 0; g + 2 <= groups; g += 2) { /* two groups (32 bytes) per step */
            PREFETCH(row + g * 16);
            __m256i bytes = _mm256_loadu_si256((const __m256i *)(row + g * 16));
            __m256i lows = _mm256_and_si256(bytes, nibble), highs = _mm256_and_si256(_mm256_srli_epi16(bytes, 4), nibble);
            __m256i q0 = _mm256_permute2x128_si256(lows, highs, 0x20); /* group g: its low nibbles, then high */
            __m256i q1 = _mm256_permute2x128_si256(lows, highs, 0x31); /* group g + 1 */
            __m256i d0 = _mm256_madd_epi16(_mm256_maddubs_epi16(q0, _mm256_loadu_si256((const __m256i *)(qx + g * 32))), ones);
            __m256i d1 = _mm256_madd_epi16(_mm256_maddubs_epi16(q1, _mm256_loadu_si256((const __m256i *)(qx + g * 32 + 32))), ones);
            a0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d0), _mm256_broadcast_ss(combined + g), a0);
            a1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d1), _mm256_broadcast_ss(combined + g + 1), a1);
        }
        if (g < groups) { /* an odd last group */
            __m128i bytes = _mm_loadu_si128((const __m128i *)(row + g * 16));
            __m128i low_nibbles = _mm_set1_epi8(0x0F);
            __m256i q0 = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(bytes, 4), low_nibbles),
                                          _mm_and_si128(bytes, low_nibbles));
            __m256i d0 = _mm256_madd_epi16(_mm256_maddubs_epi16(q0, _mm256_loadu_si256((const __m256i *)(qx + g * 32))), ones);
            a0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d0), _mm256_broadcast_ss(combined + g), a0);
        }
        y[r] = sum_lanes(_mm256_add_ps(a0, a1)) + from_mins;
    }
}
