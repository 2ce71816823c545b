/* What decode_step.c takes from cpu_kernels.c: each product as its rows begin ... end - 1 (one thread's share),
 * and the rounding of the activations that the W8A8 and W4A8 products start from. */
#include <omp.h>
#include <stdint.h>

/* inside a parallel region: where this thread's share of n rows begins and ends */
#define SHARE_BEGIN(n) ((n) * omp_get_thread_num() / omp_get_num_threads())
#define SHARE_END(n) ((n) * (omp_get_thread_num() + 1) / omp_get_num_threads())

void pg_f32_rows(const float *x, const float *w, float *y, int64_t begin, int64_t end, int64_t k);
void pg_int8_rows(const float *x, const int8_t *q, const float *s, float *y, int64_t begin, int64_t end, int64_t k);
void pg_quantize_blocks(const float *x, int8_t *qx, float *sx, int64_t k);
void pg_w8a8_rows(const int8_t *qx, const float *sx, const int8_t *q, const float *s, float *y, int64_t begin,
                  int64_t end, int64_t k);
void pg_w4a8_prepare(const float *x, int64_t k, int8_t *qx, int8_t *arranged, float *sx, float *block_sums);
void pg_w4a8_rows(const int8_t *qx, const int8_t *arranged, const float *sx, const float *block_sums,
                  const uint8_t *rows, float *y, int64_t begin, int64_t end, int64_t k);
