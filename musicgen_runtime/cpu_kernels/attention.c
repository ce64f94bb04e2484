/* The kernels of attention.h. head_dim: a multiple of 8 up to 256 (checked by the operators). */
#include "attention.h"

#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "simd_math.h"

/* 8 cached halves as floats */
static inline __m256 load8(const uint16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)p)); }

/* 8 cached int8 values as floats (unscaled) */
static inline __m256 load8_i8(const int8_t* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)p)));
}

/* Values c .. c + 7 of a position: float16 (q8 0: the text's K/V) or int8 (q8 1, unscaled: the cache). */
static inline __attribute__((always_inline)) __m256 cached8(const char* at, int c, const int q8) {
  return q8 ? load8_i8((const int8_t*)at + c) : load8((const uint16_t*)at + c);
}

/* An int8 position's scale: the float after its head_dim values. */
static inline float position_scale(const char* at, int d) {
  float s;
  memcpy(&s, at + d, sizeof s);
  return s;
}

static inline __m128 four_scales(const char* k, size_t stride, int d) {
  return _mm_setr_ps(position_scale(k, d), position_scale(k + stride, d), position_scale(k + 2 * stride, d),
                     position_scale(k + 3 * stride, d));
}

/* Positions ahead to prefetch (1 KB of the int8 cache at head_dim 64, 2 KB of the float16 text K/V). On one
   core of the Zen 2 VM, 24 layers of the int8 cache at position 750 read at 11.2-11.3 GB/s with 16, 10.8-11.9
   with 32 and 11.0-11.2 with 64 (best of 7, two runs each); a float16 cache had read at 15.1 GB/s with 16
   against 13.6 without. */
#define PREFETCH_POSITIONS 16

/* A head's keys, then its values, are read as this many streams side by side (positions split in equal
   segments), which the hardware prefetchers follow at once. Zen 2 VM, int8 cache at position 750, 24 layers
   on one core: 7.2-7.3 ms with 1, 5.8-6.0 with 2, 5.6-5.7 with 3, 6.0-6.1 with 4; a one-request step over
   a 30 s clip (in-process, alternating) 15.9-16.3 ms with 1, 15.5-16.0 with 3, and no change over 10 s. */
#define SEGMENTS 3

static size_t qkv_stride(const CachedAttention* a) { return (size_t)(a->heads + 2 * a->kv_heads) * a->head_dim; }

size_t cached_position_bytes(int head_dim) { return (size_t)head_dim + sizeof(float); }

/* x (d floats) as d int8 values and their scale (absmax / 127, symmetric, round to nearest even) at `at`. */
static void store_int8(char* at, const float* x, int d) {
  __m256 top = _mm256_setzero_ps();
  const __m256 magnitude = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  for (int c = 0; c < d; c += 8) top = _mm256_max_ps(top, _mm256_and_ps(_mm256_loadu_ps(x + c), magnitude));
  float scale = hmax(top) / 127.f;
  __m256 inv = _mm256_set1_ps(scale > 0 ? 1.f / scale : 0.f);
  for (int c = 0; c < d; c += 8) {
    __m256i q = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + c), inv));
    __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
    _mm_storel_epi64((__m128i*)(at + c), _mm_packs_epi16(w, w));
  }
  memcpy(at + d, &scale, sizeof scale);
}

/* Row b's new keys and values of kv head g, at their positions. */
static void store_kv_head(const CachedAttention* a, int b, int g) {
  const int d = a->head_dim;
  const size_t bytes = cached_position_bytes(d);
  for (int i = 0; i < a->tokens; i++) {
    const float* t = a->qkv + ((size_t)b * a->tokens + i) * qkv_stride(a);
    size_t at = (((size_t)b * a->kv_heads + g) * a->capacity + a->total[b] - a->tokens + i) * bytes;
    store_int8((char*)a->key + at, t + (size_t)(a->heads + g) * d, d);
    store_int8((char*)a->value + at, t + (size_t)(a->heads + a->kv_heads + g) * d, d);
  }
}

/* Whether each query head has a K/V head of its own: then its task writes them (cached_attention_head). */
static int heads_store_their_own(const CachedAttention* a) { return a->heads == a->kv_heads; }

void cached_attention_store(const CachedAttention* a) {
  if (heads_store_their_own(a)) return;
  for (int b = 0; b < a->rows; b++)
    for (int g = 0; g < a->kv_heads; g++) store_kv_head(a, b, g);
}

/* Four scores at once: the dot products of q with the positions at k, k + stride, k + 2 stride, k + 3 stride
   (each times its scale for an int8 cache). */
static inline __attribute__((always_inline)) __m128 four_scores(const __m256* qv, const char* k, size_t stride,
                                                                const int d8, const int q8) {
  __m256 s[4];
  for (int p = 0; p < 4; p++) {
    const char* kp = k + p * stride;
    __m256 acc = _mm256_mul_ps(qv[0], cached8(kp, 0, q8));
    for (int c = 1; c < d8; c++) acc = _mm256_fmadd_ps(qv[c], cached8(kp, 8 * c, q8), acc);
    s[p] = acc;
  }
  __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(s[0], s[1]), _mm256_hadd_ps(s[2], s[3]));
  __m128 four = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
  return q8 ? _mm_mul_ps(four, four_scales(k, stride, 8 * d8)) : four;
}

/* The same for int8 positions, in integers: q as int16 (q16, 16 per vector; q = q16 * q_scale), each key's
   16 int8 values widened to int16 and multiplied in pairs (vpmaddwd), then scaled by q_scale and the
   position's own scale. Half the instructions of widening to floats; head_dim a multiple of 16. */
static inline __attribute__((always_inline)) __m128 four_scores_int8(const __m256i* q16, float q_scale,
                                                                     const char* k, size_t stride, const int d8) {
  __m256i s[4];
  for (int p = 0; p < 4; p++) {
    const char* kp = k + p * stride;
    __m256i acc = _mm256_madd_epi16(q16[0], _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)kp)));
    for (int c = 1; c < d8 / 2; c++) {
      __m256i k16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)(kp + 16 * c)));
      acc = _mm256_add_epi32(acc, _mm256_madd_epi16(q16[c], k16));
    }
    s[p] = acc;
  }
  __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(s[0], s[1]), _mm256_hadd_epi32(s[2], s[3]));
  __m128 four = _mm_cvtepi32_ps(_mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1)));
  return _mm_mul_ps(_mm_mul_ps(four, _mm_set1_ps(q_scale)), four_scales(k, stride, 8 * d8));
}

/* q (8 d8 floats) as int16 values times a scale, for four_scores_int8. */
static inline __attribute__((always_inline)) float query_int16(__m256i* q16, const __m256* qv, const int d8) {
  __m256 top = _mm256_setzero_ps();
  const __m256 magnitude = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  for (int c = 0; c < d8; c++) top = _mm256_max_ps(top, _mm256_and_ps(qv[c], magnitude));
  float scale = hmax(top) / 32767.f;
  __m256 inv = _mm256_set1_ps(scale > 0 ? 1.f / scale : 0.f);
  for (int c = 0; c < d8 / 2; c++) {
    __m256i lo = _mm256_cvtps_epi32(_mm256_mul_ps(qv[2 * c], inv));
    __m256i hi = _mm256_cvtps_epi32(_mm256_mul_ps(qv[2 * c + 1], inv));
    q16[c] = _mm256_permute4x64_epi64(_mm256_packs_epi32(lo, hi), 0xd8); /* packs works per 128-bit lane */
  }
  return scale;
}

/* Scores of positions j .. j + 3 (stored, and returned for the running maximum). */
static inline __attribute__((always_inline)) __m128 score_four(const __m256i* q16, float q_scale, const __m256* qv,
                                                               const char* keys, size_t stride, int j,
                                                               const float* bias, float* scores, const int d8,
                                                               const int q8, const int integer) {
  const char* ahead = keys + (j + PREFETCH_POSITIONS) * stride;
  for (size_t p = 0; p < 4 * stride; p += 64) _mm_prefetch(ahead + p, _MM_HINT_T0);
  __m128 s4 = integer ? four_scores_int8(q16, q_scale, keys + j * stride, stride, d8)
                      : four_scores(qv, keys + j * stride, stride, d8, q8);
  if (bias) s4 = _mm_add_ps(s4, _mm_loadu_ps(bias + j));
  _mm_storeu_ps(scores + j, s4);
  return s4;
}

/* acc += weight j (its softmax numerator, times the position's scale) x value j */
static inline __attribute__((always_inline)) void add_value(__m256* acc, const char* values, size_t stride, int j,
                                                            const float* scores, const int d8, const int q8) {
  const char* v = values + j * stride;
  __m256 w = _mm256_set1_ps(scores[j] * (q8 ? position_scale(v, 8 * d8) : 1.f));
  const char* ahead = v + PREFETCH_POSITIONS * stride;
  _mm_prefetch(ahead, _MM_HINT_T0);
  if (stride > 64) _mm_prefetch(ahead + 64, _MM_HINT_T0);
  for (int c = 0; c < d8; c++) acc[c] = _mm256_fmadd_ps(w, cached8(v, 8 * c, q8), acc[c]);
}

/* One query against n positions: out = softmax(q . keys + bias) values, q already scaled; bias: NULL, or n
   additive terms (a mask). Positions are `stride` bytes apart, float16 or (q8) int8 with a scale.
   d8 = head_dim / 8 (a constant 8 for MusicGen's 64, so the query and the output accumulators stay in
   registers). */
static inline __attribute__((always_inline)) void attend(const __m256* qv, const char* keys, const char* values,
                                                         size_t stride, int n, const float* bias, float* scores,
                                                         float* o, const int d8, const int q8) {
  const int d = 8 * d8;
  __m256i q16[16];
  const int integer = q8 && d8 % 2 == 0; /* int8 keys times an int16 query */
  const float q_scale = integer ? query_int16(q16, qv, d8) : 0.f;
  __m128 top4 = _mm_set1_ps(-INFINITY);
  /* the keys as SEGMENTS streams side by side: segment s holds positions [s seg, (s + 1) seg) */
  const int seg = (n / 4 / SEGMENTS) * 4;
  int j = 0;
  for (; j < seg; j += 4)
    for (int s = 0; s < SEGMENTS; s++)
      top4 = _mm_max_ps(top4, score_four(q16, q_scale, qv, keys, stride, j + s * seg, bias, scores, d8, q8, integer));
  for (j = SEGMENTS * seg; j + 4 <= n; j += 4)
    top4 = _mm_max_ps(top4, score_four(q16, q_scale, qv, keys, stride, j, bias, scores, d8, q8, integer));
  top4 = _mm_max_ps(top4, _mm_movehl_ps(top4, top4));
  float top = fmaxf(_mm_cvtss_f32(top4), _mm_cvtss_f32(_mm_movehdup_ps(top4)));
  for (; j < n; j++) { /* the last n % 4 positions, in floats (the query unrounded) */
    const char* k = keys + j * stride;
    __m256 acc = _mm256_mul_ps(qv[0], cached8(k, 0, q8));
    for (int c = 1; c < d8; c++) acc = _mm256_fmadd_ps(qv[c], cached8(k, 8 * c, q8), acc);
    scores[j] = hsum(acc) * (q8 ? position_scale(k, d) : 1.f) + (bias ? bias[j] : 0.f);
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
  const int vseg = n / SEGMENTS; /* the values as SEGMENTS streams side by side too */
  for (j = 0; j < vseg; j++)
    for (int s = 0; s < SEGMENTS; s++) add_value(acc, values, stride, j + s * vseg, scores, d8, q8);
  for (j = SEGMENTS * vseg; j < n; j++) add_value(acc, values, stride, j, scores, d8, q8);
  __m256 inv = _mm256_set1_ps(1.0f / sum);
  for (int c = 0; c < d8; c++) _mm256_storeu_ps(o + 8 * c, _mm256_mul_ps(acc[c], inv));
}

static inline __attribute__((always_inline)) void load_query(__m256* qv, const float* q, float scale, int d8) {
  for (int c = 0; c < d8; c++) qv[c] = _mm256_mul_ps(_mm256_loadu_ps(q + 8 * c), _mm256_set1_ps(scale));
}

static inline __attribute__((always_inline)) void cached_head(const CachedAttention* a, int b, int h, float* scores,
                                                              const int d8) {
  const int d = 8 * d8, g = h / (a->heads / a->kv_heads);
  const size_t stride = cached_position_bytes(d), at = ((size_t)b * a->kv_heads + g) * a->capacity * stride;
  const char *keys = (const char*)a->key + at, *values = (const char*)a->value + at;
  for (int i = 0; i < a->tokens; i++) {
    __m256 qv[32];
    load_query(qv, a->qkv + ((size_t)b * a->tokens + i) * qkv_stride(a) + (size_t)h * d, a->scale, d8);
    float* o = a->out + ((size_t)b * a->tokens + i) * a->heads * d + (size_t)h * d;
    attend(qv, keys, values, stride, a->total[b] - a->tokens + i + 1, NULL, scores, o, d8, 1); /* causal */
  }
}

void cached_attention_head(const CachedAttention* a, int b, int h, float* scores) {
  if (heads_store_their_own(a)) store_kv_head(a, b, h);
  if (a->head_dim == 64)
    cached_head(a, b, h, scores, 8);
  else
    cached_head(a, b, h, scores, a->head_dim / 8);
}

static inline __attribute__((always_inline)) void cross_head(const CrossAttention* a, int b, int h, float* scores,
                                                             const int d8) {
  const int d = 8 * d8;
  const size_t kv = ((size_t)b * a->heads + h) * a->text_len * d;
  const char *keys = (const char*)(a->key + kv), *values = (const char*)(a->value + kv);
  for (int i = 0; i < a->tokens; i++) {
    __m256 qv[32];
    size_t at = ((size_t)b * a->tokens + i) * a->heads * d + (size_t)h * d;
    load_query(qv, a->q + at, a->scale, d8);
    attend(qv, keys, values, 2 * (size_t)d, a->text_len, a->bias + (size_t)b * a->text_len, scores, a->out + at, d8,
           0);
  }
}

void cross_attention_head(const CrossAttention* a, int b, int h, float* scores) {
  if (a->head_dim == 64)
    cross_head(a, b, h, scores, 8);
  else
    cross_head(a, b, h, scores, a->head_dim / 8);
}
