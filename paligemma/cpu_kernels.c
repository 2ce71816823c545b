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
#include <stdint.h>

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
#if defined(__AVX512VNNI__) && defined(__AVX512VL__) /* one instruction for both steps, the same integers */
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_sign_epi8(a, a), _mm256_sign_epi8(w, a));
#else
    __m256i pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(a, a), _mm256_sign_epi8(w, a));
    return _mm256_madd_epi16(pairs, _mm256_set1_epi16(1));
#endif
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
 * A row is stored as its float16 scales (one per group), its float16 minimums, then its nibbles: group g is 16
 * bytes, weights 32g ... 32g+15 in the low nibbles, 32g+16 ... 32g+31 in the high ones. Per group,
 *     sum_j w_j x_j = scale * sx * (sum_j q_j qx_j) + min * sx * (sum_j qx_j),
 * and the second sum depends on the activations only, so it is computed once per call (block_sums).
 * The loop takes 32 bytes (two groups) at a time: masking gives the low nibbles of both groups, shifting the high
 * ones, and the activations are laid out once per call in that same order (paired), so no weight is moved. The
 * integer sums of eight groups are then gathered into one vector (three horizontal adds) and scaled together. */

#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
/* 64 products of unsigned 4-bit weights and signed int8 activations, summed in eights into 8 int32 lanes */
static inline __m256i nibbles_dot(__m256i lows, __m256i highs, const int8_t *paired) {
    __m256i sums = _mm256_dpbusd_epi32(_mm256_setzero_si256(), lows, _mm256_loadu_si256((const __m256i *)paired));
    return _mm256_dpbusd_epi32(sums, highs, _mm256_loadu_si256((const __m256i *)(paired + 32)));
}
#else
static inline __m256i nibbles_dot(__m256i lows, __m256i highs, const int8_t *paired) {
    __m256i pairs = _mm256_add_epi16( /* int16 sums of pairs: at most 4 * 15 * 128, no overflow */
        _mm256_maddubs_epi16(lows, _mm256_loadu_si256((const __m256i *)paired)),
        _mm256_maddubs_epi16(highs, _mm256_loadu_si256((const __m256i *)(paired + 32))));
    return _mm256_madd_epi16(pairs, _mm256_set1_epi16(1));
}
#endif

/* Two groups' dot products: lanes 0-3 hold partial sums of the first group, lanes 4-7 of the second. */
static inline __m256i two_groups_dot(const uint8_t *bytes32, const int8_t *paired) {
    const __m256i nibble = _mm256_set1_epi8(0x0F);
    __m256i bytes = _mm256_loadu_si256((const __m256i *)bytes32);
    return nibbles_dot(_mm256_and_si256(bytes, nibble), _mm256_and_si256(_mm256_srli_epi16(bytes, 4), nibble), paired);
}

/* qx reordered for two_groups_dot: per pair of groups, the activations of both groups' low nibbles, then of their
 * high nibbles (an odd last group is left out: the loop takes it alone, from qx). */
static void pair_activations(const int8_t *qx, int8_t *paired, int64_t groups) {
    for (int64_t g = 0; g + 2 <= groups; g += 2) {
        const int8_t *from = qx + g * 32;
        int8_t *to = paired + g * 32;
        for (int j = 0; j < 16; j++) {
            to[j] = from[j], to[16 + j] = from[32 + j];       /* low nibbles: group g, then group g + 1 */
            to[32 + j] = from[16 + j], to[48 + j] = from[48 + j]; /* high nibbles */
        }
    }
}

void pg_gemv_w4a8(const float *x, const uint8_t *rows, float *y, int64_t n, int64_t k, int threads) {
    int64_t groups = k / 32, row_bytes = 4 * groups + k / 2;
    int8_t qx[k], paired[k];
    float sx[groups], block_sums[groups];
    pg_quantize_blocks(x, qx, sx, k);
    pair_activations(qx, paired, groups);
    for (int64_t g = 0; g < groups; g++) {
        int total = 0;
        for (int j = 0; j < 32; j++) total += qx[g * 32 + j];
        block_sums[g] = total * sx[g];
    }
    const __m256i in_order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t r = 0; r < n; r++) {
        const uint16_t *row_scales = (const uint16_t *)(rows + r * row_bytes), *row_mins = row_scales + groups;
        const uint8_t *row = (const uint8_t *)(row_mins + groups); /* the nibbles */
        __m256 acc = _mm256_setzero_ps();
        int64_t g = 0;
        for (; g + 8 <= groups; g += 8) { /* eight groups: 128 bytes of weights */
            PREFETCH(row + g * 16);
            PREFETCH(row + g * 16 + 64);
            __m256i d01 = two_groups_dot(row + g * 16, paired + g * 32);
            __m256i d23 = two_groups_dot(row + g * 16 + 32, paired + g * 32 + 64);
            __m256i d45 = two_groups_dot(row + g * 16 + 64, paired + g * 32 + 128);
            __m256i d67 = two_groups_dot(row + g * 16 + 96, paired + g * 32 + 192);
            /* one sum per group, in the order 0 2 4 6 | 1 3 5 7 (hadd works within each 128-bit half) */
            __m256i sums = _mm256_hadd_epi32(_mm256_hadd_epi32(d01, d23), _mm256_hadd_epi32(d45, d67));
            __m256 dots = _mm256_cvtepi32_ps(_mm256_permutevar8x32_epi32(sums, in_order)); /* groups 0 ... 7 */
            __m256 scale = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(row_scales + g)));
            __m256 low = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(row_mins + g)));
            acc = _mm256_fmadd_ps(_mm256_mul_ps(dots, _mm256_loadu_ps(sx + g)), scale, acc);
            acc = _mm256_fmadd_ps(low, _mm256_loadu_ps(block_sums + g), acc);
        }
        __m128 acc4 = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
        for (; g + 4 <= groups; g += 4) { /* four groups: the same with half vectors */
            __m256i d01 = two_groups_dot(row + g * 16, paired + g * 32);
            __m256i d23 = two_groups_dot(row + g * 16 + 32, paired + g * 32 + 64);
            __m256i sums = _mm256_hadd_epi32(d01, d23);  /* pairs of partial sums of groups 0 2 | 1 3 */
            sums = _mm256_hadd_epi32(sums, sums);         /* groups 0 2 0 2 | 1 3 1 3 */
            __m128 dots = _mm_cvtepi32_ps(_mm_unpacklo_epi32(_mm256_castsi256_si128(sums),
                                                             _mm256_extracti128_si256(sums, 1))); /* 0 1 2 3 */
            __m128 scale = _mm_cvtph_ps(_mm_loadl_epi64((const __m128i *)(row_scales + g)));
            __m128 low = _mm_cvtph_ps(_mm_loadl_epi64((const __m128i *)(row_mins + g)));
            acc4 = _mm_fmadd_ps(_mm_mul_ps(dots, _mm_loadu_ps(sx + g)), scale, acc4);
            acc4 = _mm_fmadd_ps(low, _mm_loadu_ps(block_sums + g), acc4);
        }
        acc4 = _mm_hadd_ps(acc4, acc4);
        float total = _mm_cvtss_f32(_mm_hadd_ps(acc4, acc4));
        for (; g < groups; g++) { /* the last one to three groups, one by one */
            __m128i bytes = _mm_loadu_si128((const __m128i *)(row + g * 16)), nibble = _mm_set1_epi8(0x0F);
            __m256i q = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(bytes, 4), nibble), _mm_and_si128(bytes, nibble));
            __m256i d = _mm256_madd_epi16(_mm256_maddubs_epi16(q, _mm256_loadu_si256((const __m256i *)(qx + g * 32))),
                                          _mm256_set1_epi16(1));
            __m128i d4 = _mm_add_epi32(_mm256_castsi256_si128(d), _mm256_extracti128_si256(d, 1));
            d4 = _mm_hadd_epi32(d4, d4);
            total += _mm_cvtsi128_si32(_mm_hadd_epi32(d4, d4)) * sx[g] * _cvtsh_ss(row_scales[g])
                     + _cvtsh_ss(row_mins[g]) * block_sums[g];
        }
        y[r] = total;
    }
}
