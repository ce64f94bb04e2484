/* The input transforms of prologue.h (AVX2 + FMA). */
#include "prologue.h"

#include <immintrin.h>
#include <math.h>

#include "simd_math.h"

/* erf(z) for z >= 0 (Abramowitz and Stegun 7.1.26). */
static inline __m256 erf_nonnegative(__m256 z) {
  __m256 t = _mm256_div_ps(_mm256_set1_ps(1.f), _mm256_fmadd_ps(_mm256_set1_ps(0.3275911f), z, _mm256_set1_ps(1.f)));
  __m256 p = _mm256_set1_ps(1.061405429f);
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-1.453152027f));
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(1.421413741f));
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-0.284496736f));
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(0.254829592f));
  p = _mm256_mul_ps(p, t);
  __m256 e = exp_nonpositive(_mm256_sub_ps(_mm256_setzero_ps(), _mm256_mul_ps(z, z)));
  return _mm256_fnmadd_ps(p, e, _mm256_set1_ps(1.f));
}

void prologue_gelu(const float* x, float* out, long n) {
  const __m256 sign = _mm256_set1_ps(-0.f), half = _mm256_set1_ps(0.5f);
  const __m256 root_half = _mm256_set1_ps(0.70710678118654752f);
  for (long i = 0; i < n; i += 8) {
    __m256 v = _mm256_loadu_ps(x + i);
    __m256 z = _mm256_mul_ps(v, root_half);
    __m256 erf = _mm256_xor_ps(erf_nonnegative(_mm256_andnot_ps(sign, z)), _mm256_and_ps(sign, z)); /* odd */
    _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_mul_ps(half, v), _mm256_add_ps(_mm256_set1_ps(1.f), erf)));
  }
}

void prologue_skip_layer_norm(const float* x, const float* skip, const float* gamma, const float* beta,
                              float epsilon, int k, float* sum, float* out) {
  __m256 acc = _mm256_setzero_ps();
  for (int i = 0; i < k; i += 8) {
    __m256 s = _mm256_add_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(skip + i));
    _mm256_storeu_ps(sum + i, s);
    acc = _mm256_add_ps(acc, s);
  }
  const float mean = hsum(acc) / (float)k;
  __m256 var = _mm256_setzero_ps(), m = _mm256_set1_ps(mean);
  for (int i = 0; i < k; i += 8) { /* two passes: the variance of centered values, not E[s^2] - mean^2 */
    __m256 c = _mm256_sub_ps(_mm256_loadu_ps(sum + i), m);
    var = _mm256_fmadd_ps(c, c, var);
  }
  const __m256 inv = _mm256_set1_ps(1.f / sqrtf(hsum(var) / (float)k + epsilon));
  for (int i = 0; i < k; i += 8) {
    __m256 c = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(sum + i), m), inv);
    _mm256_storeu_ps(out + i, _mm256_fmadd_ps(c, _mm256_loadu_ps(gamma + i), _mm256_loadu_ps(beta + i)));
  }
}
