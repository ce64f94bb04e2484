/* The kernels of attention.h. head_dim: a multiple of 8 up to 256 (checked by the operators). */
#include "attention.h"

#include <immintrin.h>
#include <math.h>

#include "simd_math.h"

/* 8 cached halves as floats */
static inline __m256 load8(const uint16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)p)); }

/* Positions ahead to prefetch: 16 (4 KB of a float cache at head_dim 64) read the cache at 15.1 GB/s
   on one core of the Zen 2 VM, against 13.6 without; 8 and 32 gave 14.0 and 14.6. */
#define PREFETCH_POSITIONS 16

static size_t qkv_stride(const CachedAttention* a) { return (size_t)(a->heads + 2 * a->kv_heads) * a->head_dim; }

void cached_attention_store(const CachedAttention* a) {
  const int d = a->head_dim;
  for (int b = 0; b < a->rows; b++)
    for (int i = 0; i < a->tokens; i++) {
      const float* t = a->qkv + ((size_t)b * a->tokens + i) * qkv_stride(a);
      int pos = a->total[b] - a->tokens + i;
      for (int g = 0; g < a->kv_heads; g++) {
        size_t at = (((size_t)b * a->kv_heads + g) * a->capacity + pos) * d;
        const float *k = t + (size_t)(a->heads + g) * d, *v = t + (size_t)(a->heads + a->kv_heads + g) * d;
        for (int c = 0; c < d; c += 8) {
          _mm_storeu_si128((__m128i*)(a->key + at + c), _mm256_cvtps_ph(_mm256_loadu_ps(k + c), _MM_FROUND_TO_NEAREST_INT));
          _mm_storeu_si128((__m128i*)(a->value + at + c), _mm256_cvtps_ph(_mm256_loadu_ps(v + c), _MM_FROUND_TO_NEAREST_INT));
        }
      }
    }
}

/* Four scores at once: the dot products of q with keys k, k + d, k + 2d, k + 3d. */
static inline __attribute__((always_inline)) __m128 four_scores(const __m256* qv, const uint16_t* k, int d8) {
  __m256 s[4];
  for (int p = 0; p < 4; p++) {
    const uint16_t* kp = k + (size_t)p * d8 * 8;
    __m256 acc = _mm256_mul_ps(qv[0], load8(kp));
    for (int c = 1; c < d8; c++) acc = _mm256_fmadd_ps(qv[c], load8(kp + 8 * c), acc);
    s[p] = acc;
  }
  __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(s[0], s[1]), _mm256_hadd_ps(s[2], s[3]));
  return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

/* One query against n positions: out = softmax(q . keys + bias) values, q already scaled; bias: NULL, or n
   additive terms (a mask). d8 = head_dim / 8 (a constant 8 for MusicGen's 64, so the query and the output
   accumulators stay in registers). */
static inline __attribute__((always_inline)) void attend(const __m256* qv, const uint16_t* keys,
                                                         const uint16_t* values, int n, const float* bias,
                                                         float* scores, float* o, const int d8) {
  const int d = 8 * d8;
  __m128 top4 = _mm_set1_ps(-INFINITY);
  int j = 0;
  for (; j + 4 <= n; j += 4) {
    const char* ahead = (const char*)(keys + (size_t)(j + PREFETCH_POSITIONS) * d);
    for (int p = 0; p < d8; p++) _mm_prefetch(ahead + 64 * p, _MM_HINT_T0);
    __m128 s4 = four_scores(qv, keys + (size_t)j * d, d8);
    if (bias) s4 = _mm_add_ps(s4, _mm_loadu_ps(bias + j));
    _mm_storeu_ps(scores + j, s4);
    top4 = _mm_max_ps(top4, s4);
  }
  top4 = _mm_max_ps(top4, _mm_movehl_ps(top4, top4));
  float top = fmaxf(_mm_cvtss_f32(top4), _mm_cvtss_f32(_mm_movehdup_ps(top4)));
  for (; j < n; j++) {
    const uint16_t* k = keys + (size_t)j * d;
    __m256 acc = _mm256_mul_ps(qv[0], load8(k));
    for (int c = 1; c < d8; c++) acc = _mm256_fmadd_ps(qv[c], load8(k + 8 * c), acc);
    scores[j] = hsum(acc) + (bias ? bias[j] : 0.f);
    top = fmaxf(top, scores[j]);
  }
  __m256 total = _mm256_setzero_ps();
  for (j = 0; j + 8 <= n; j += 8) {
    __m256 e = exp_nonpositive(_mm256_sub_ps(_mm256_loadu_ps(scores + j), _mm256_set1_ps(top)));
    _mm256_storeu_ps(scores + j, e);
    total = _mm256_add_ps(total, e);
  }
  float sum = hsum(total);
  for (; j < n; j++) sum += scores[j] = expf(scores[j] - top);
  __m256 acc[32];
  for (int c = 0; c < d8; c++) acc[c] = _mm256_setzero_ps();
  for (j = 0; j < n; j++) {
    __m256 w = _mm256_broadcast_ss(scores + j);
    const uint16_t* v = values + (size_t)j * d;
    const char* ahead = (const char*)(v + (size_t)PREFETCH_POSITIONS * d);
    for (int p = 0; p < d8 / 4; p++) _mm_prefetch(ahead + 64 * p, _MM_HINT_T0);
    for (int c = 0; c < d8; c++) acc[c] = _mm256_fmadd_ps(w, load8(v + 8 * c), acc[c]);
  }
  __m256 inv = _mm256_set1_ps(1.0f / sum);
  for (int c = 0; c < d8; c++) _mm256_storeu_ps(o + 8 * c, _mm256_mul_ps(acc[c], inv));
}

static inline __attribute__((always_inline)) void load_query(__m256* qv, const float* q, float scale, int d8) {
  for (int c = 0; c < d8; c++) qv[c] = _mm256_mul_ps(_mm256_loadu_ps(q + 8 * c), _mm256_set1_ps(scale));
}

static inline __attribute__((always_inline)) void cached_head(const CachedAttention* a, int b, int h, float* scores,
                                                              const int d8) {
  const int d = 8 * d8, g = h / (a->heads / a->kv_heads);
  const uint16_t* keys = a->key + ((size_t)b * a->kv_heads + g) * a->capacity * d;
  const uint16_t* values = a->value + ((size_t)b * a->kv_heads + g) * a->capacity * d;
  for (int i = 0; i < a->tokens; i++) {
    __m256 qv[32];
    load_query(qv, a->qkv + ((size_t)b * a->tokens + i) * qkv_stride(a) + (size_t)h * d, a->scale, d8);
    float* o = a->out + ((size_t)b * a->tokens + i) * a->heads * d + (size_t)h * d;
    attend(qv, keys, values, a->total[b] - a->tokens + i + 1, NULL, scores, o, d8); /* causal */
  }
}

void cached_attention_head(const CachedAttention* a, int b, int h, float* scores) {
  if (a->head_dim == 64)
    cached_head(a, b, h, scores, 8);
  else
    cached_head(a, b, h, scores, a->head_dim / 8);
}

static inline __attribute__((always_inline)) void cross_head(const CrossAttention* a, int b, int h, float* scores,
                                                             const int d8) {
  const int d = 8 * d8;
  const uint16_t* keys = a->key + ((size_t)b * a->heads + h) * a->text_len * d;
  const uint16_t* values = a->value + ((size_t)b * a->heads + h) * a->text_len * d;
  for (int i = 0; i < a->tokens; i++) {
    __m256 qv[32];
    size_t at = ((size_t)b * a->tokens + i) * a->heads * d + (size_t)h * d;
    load_query(qv, a->q + at, a->scale, d8);
    attend(qv, keys, values, a->text_len, a->bias + (size_t)b * a->text_len, scores, a->out + at, d8);
  }
}

void cross_attention_head(const CrossAttention* a, int b, int h, float* scores) {
  if (a->head_dim == 64)
    cross_head(a, b, h, scores, 8);
  else
    cross_head(a, b, h, scores, a->head_dim / 8);
}
