/* The kernel of int8_gemv.h. Built with -mavx2 -mfma; the library checks the CPU before it
   registers the operator (ort_op.c). */
#include "int8_gemv.h"

#include <immintrin.h>
#include <string.h>

#include "simd_math.h"

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

/* MT (1 or 2) rows of A against S (1 to STREAMS) tiles of 8 outputs read side by side, tile s from qp[s]: each
   pair of inputs is broadcast to all lanes and multiplied (vpmaddwd) with the pair's 16 int8 weights of a
   tile widened to int16, lane j summing output j. Within a block, int32 sums of int16 x int8 products
   cannot overflow: |a| <= 32767, |q| <= 127, block <= 512 (checked when the op is made). The float sums
   across blocks stay in memory (tot, in L1): in registers they would double the integer sums' share of
   the 16. */
static inline __attribute__((always_inline)) void tiles(const int S, const int MT, const QuantRows* a, int m0,
                                                         const int8_t* const* qp, const float* const* sp, float* y,
                                                         int n, const int* n0) {
  const int k = a->k, block = a->block, nblk = k / block;
  float tot[STREAMS][2][TILE_OUTPUTS] __attribute__((aligned(32))) = {0};
  for (int b = 0; b < nblk; b++) {
    __m256i acc[STREAMS][2];
    for (int s = 0; s < S; s++)
      for (int m = 0; m < MT; m++) acc[s][m] = _mm256_setzero_si256();
    for (int c = b * block; c < (b + 1) * block; c += 2) {
      __m256i pair[2];
      for (int m = 0; m < MT; m++) {
        int32_t both;
        memcpy(&both, a->a16 + (size_t)(m0 + m) * k + c, sizeof both);
        pair[m] = _mm256_set1_epi32(both);
      }
      for (int s = 0; s < S; s++) {
        __m256i w = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)(qp[s] + (size_t)c * TILE_OUTPUTS)));
        for (int m = 0; m < MT; m++) acc[s][m] = _mm256_add_epi32(acc[s][m], _mm256_madd_epi16(pair[m], w));
      }
    }
    for (int s = 0; s < S; s++) {
      const __m256 scale = _mm256_loadu_ps(sp[s] + (size_t)b * TILE_OUTPUTS);
      for (int m = 0; m < MT; m++) {
        __m256 both = _mm256_mul_ps(scale, _mm256_set1_ps(a->scale[(m0 + m) * nblk + b]));
        _mm256_store_ps(tot[s][m], _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[s][m]), both, _mm256_load_ps(tot[s][m])));
      }
    }
  }
  for (int s = 0; s < S; s++)
    for (int m = 0; m < MT; m++)
      for (int j = 0; j < TILE_OUTPUTS && n0[s] + j < n; j++) y[(size_t)(m0 + m) * n + n0[s] + j] = tot[s][m][j];
}

/* Every row of A against the S tiles (row pairs, then a last odd row). */
static inline __attribute__((always_inline)) void all_rows(const int S, const QuantRows* a, const int8_t* const* qp,
                                                            const float* const* sp, float* y, int n, const int* n0) {
  int m = 0;
  for (; m + 2 <= a->rows; m += 2) tiles(S, 2, a, m, qp, sp, y, n, n0);
  if (m < a->rows) tiles(S, 1, a, m, qp, sp, y, n, n0);
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

/* Tiles [t0, t1) as STREAMS runs of consecutive tiles, one tile of each run at a time: each thread reads
   its weights as STREAMS sequential streams, which the hardware prefetchers follow side by side. On the
   2-core Zen 2 VM a plain read of 2 MiB pages ran at 31-35 GB/s with one stream per thread and 47-49 GB/s
   with four interleaved line by line. A one-request step (10 s clip, in-process, two alternations) took
   20.0-20.3 ms with 1 stream, 15.2-15.3 with 2, 14.2-14.5 with 3 and 16.0 with 4, against 17.4-17.9 ms with
   the previous kernel (one stream of 4-output tiles, software prefetch 1 KB ahead). */
void int8_gemv_tiles(const QuantRows* a, const int8_t* qp, const float* sp, float* y, int n, int t0, int t1,
                     int epilogue) {
  const int k = a->k, nblk = k / a->block, per = (t1 - t0 + STREAMS - 1) / STREAMS;
  for (int i = 0; i < per; i++) {
    const int8_t* q[STREAMS] = {0};
    const float* s[STREAMS] = {0};
    int n0[STREAMS] = {0}, S = 0; /* at least run 0 has tile t0 + i */
    for (int r = 0; r < STREAMS; r++) {
      int t = t0 + r * per + i;
      if (t >= t1) break;
      q[S] = qp + (size_t)t * TILE_OUTPUTS * k;
      s[S] = sp + (size_t)t * TILE_OUTPUTS * nblk;
      n0[S++] = TILE_OUTPUTS * t;
    }
    switch (S) { /* the last runs may be shorter */
#if STREAMS > 3
      case 4: all_rows(4, a, q, s, y, n, n0); break;
#endif
#if STREAMS > 2
      case 3: all_rows(3, a, q, s, y, n, n0); break;
#endif
      case 2: all_rows(2, a, q, s, y, n, n0); break;
      default: all_rows(1, a, q, s, y, n, n0);
    }
  }
  if (epilogue == EPILOGUE_GELU) {
    int to = TILE_OUTPUTS * t1 < n ? TILE_OUTPUTS * t1 : n;
    gelu_range(y, a->rows, n, TILE_OUTPUTS * t0, to);
  }
}
