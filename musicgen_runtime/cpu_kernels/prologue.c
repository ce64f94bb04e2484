/* The input transform of prologue.h (AVX2 + FMA). */
#include "prologue.h"

#include <immintrin.h>
#include <math.h>

#include "simd_math.h"

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
