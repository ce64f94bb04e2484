/* The kernel of int8_gemv.h. Built with -mavx2 -mfma; the library checks the CPU before it
   registers the operator (ort_op.c). */
#include "int8_gemv.h"

#include <immintrin.h>

#include "simd_math.h"

/* Bytes ahead of the current chunk to prefetch: 16 chunks (1 KB). Without it the step's weights
   read at 20 GB/s, with it at 25 GB/s (of 30 GB/s for a plain read) on the 2-core Zen 2 VM; 512 and
   2048 made a one-request step 0.3-1.5 ms slower. */
#define PREFETCH_AHEAD 1024

/* Vectorized: scalar lrintf made it a fifth of a one-request step's GEMV time, on one thread. Rounds to
   nearest even (the MXCSR default), as np.rint does. */
void int8_gemv_quantize(const float* a, int rows, int k, int block, QuantRows* q) {
  int nblk = k / block;
  const __m256 sign = _mm256_set1_ps(-0.f);
  q->rows = rows, q->k = k, q->block = block;
  for (int m = 0; m < rows; m++)
    for (int b = 0; b < nblk; b++) {
      const float* x = a + (size_t)m * k + (size_t)b * block;
      __m256 mx = _mm256_setzero_ps();
      for (int i = 0; i < block; i += 8) mx = _mm256_max_ps(mx, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + i)));
      float top = hmax(mx), scale = top > 0.f ? top / 32767.f : 1.f;
      __m256 inv = _mm256_set1_ps(1.f / scale);
      int16_t* out = q->a16 + (size_t)m * k + (size_t)b * block;
      for (int i = 0; i < block; i += 16) {
        __m256i lo = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + i), inv));
        __m256i hi = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + i + 8), inv));
        /* packs interleaves the 128-bit halves: lo 0-3, hi 0-3, lo 4-7, hi 4-7 */
        _mm256_storeu_si256((__m256i*)(out + i), _mm256_permute4x64_epi64(_mm256_packs_epi32(lo, hi), 0xD8));
      }
      q->scale[m * nblk + b] = scale;
    }
}

/* MT (1 or 2) rows of A against one tile of 4 outputs. Within a block, int32 sums of int16 x int8
   products cannot overflow: |a| <= 32767, |q| <= 127, block <= 1024 (checked when the op is made). */
static inline __attribute__((always_inline)) void tile(int MT, const QuantRows* a, int m0, const int8_t* qp,
                                                        const float* sp, float* y, int n, int n0) {
  const int k = a->k, block = a->block, nblk = k / block;
  __m256 tot[2][4];
  for (int m = 0; m < MT; m++)
    for (int j = 0; j < 4; j++) tot[m][j] = _mm256_setzero_ps();
  for (int b = 0; b < nblk; b++) {
    __m256i acc[2][4];
    for (int m = 0; m < MT; m++)
      for (int j = 0; j < 4; j++) acc[m][j] = _mm256_setzero_si256();
    for (int c = b * block; c < (b + 1) * block; c += 16) {
      const int8_t* p = qp + (size_t)c * 4;
      _mm_prefetch((const char*)p + PREFETCH_AHEAD, _MM_HINT_T0);
      __m256i av[2];
      for (int m = 0; m < MT; m++) av[m] = _mm256_loadu_si256((const __m256i*)(a->a16 + (size_t)(m0 + m) * k + c));
      for (int j = 0; j < 4; j++) {
        __m256i w = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)(p + 16 * j)));
        for (int m = 0; m < MT; m++) acc[m][j] = _mm256_add_epi32(acc[m][j], _mm256_madd_epi16(av[m], w));
      }
    }
    for (int m = 0; m < MT; m++) {
      float sa = a->scale[(m0 + m) * nblk + b];
      for (int j = 0; j < 4; j++)
        tot[m][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[m][j]), _mm256_set1_ps(sa * sp[b * 4 + j]), tot[m][j]);
    }
  }
  for (int m = 0; m < MT; m++)
    for (int j = 0; j < 4 && n0 + j < n; j++) y[(size_t)(m0 + m) * n + n0 + j] = hsum(tot[m][j]);
}

/* gelu over y[m][from .. to) of every row, 8 at a time; a last group of fewer than 8 through a
   zero-padded copy */
static void gelu_range(float* y, int rows, int n, int from, int to) {
  for (int m = 0; m < rows; m++) {
    float* r = y + (size_t)m * n;
    int i = from;
    for (; i + 8 <= to; i += 8) _mm256_storeu_ps(r + i, gelu(_mm256_loadu_ps(r + i)));
    if (i < to) {
      float tail[8] = {0};
      for (int j = i; j < to; j++) tail[j - i] = r[j];
      _mm256_storeu_ps(tail, gelu(_mm256_loadu_ps(tail)));
      for (int j = i; j < to; j++) r[j] = tail[j - i];
    }
  }
}

void int8_gemv_tiles(const QuantRows* a, const int8_t* qp, const float* sp, float* y, int n, int t0, int t1,
                     int epilogue) {
  const int k = a->k, nblk = k / a->block;
  for (int t = t0; t < t1; t++) {
    const int8_t* q = qp + (size_t)t * 4 * k;
    const float* s = sp + (size_t)t * 4 * nblk;
    int m = 0;
    for (; m + 2 <= a->rows; m += 2) tile(2, a, m, q, s, y, n, 4 * t);
    if (m < a->rows) tile(1, a, m, q, s, y, n, 4 * t);
  }
  if (epilogue == EPILOGUE_GELU) gelu_range(y, a->rows, n, 4 * t0, 4 * t1 < n ? 4 * t1 : n);
}
