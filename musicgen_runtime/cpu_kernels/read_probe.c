/* The benchmark's memory read probe: n bytes read with AVX2 loads, as our GEMV streams its weights
   (bench/measure.raw_read). Returns a checksum so that the loads are not optimized away. */
#include <immintrin.h>
#include <stddef.h>
#include <stdint.h>

__attribute__((visibility("default"))) uint64_t musicgen_read_bytes(const uint8_t* p, size_t n) {
  __m256i acc = _mm256_setzero_si256();
  size_t i = 0;
  for (; i + 128 <= n; i += 128) {
    const __m256i* q = (const __m256i*)(p + i);
    __m256i a = _mm256_add_epi8(_mm256_loadu_si256(q), _mm256_loadu_si256(q + 1));
    __m256i b = _mm256_add_epi8(_mm256_loadu_si256(q + 2), _mm256_loadu_si256(q + 3));
    acc = _mm256_add_epi8(acc, _mm256_add_epi8(a, b));
  }
  uint64_t sum = (uint64_t)_mm256_extract_epi64(acc, 0) ^ (uint64_t)_mm256_extract_epi64(acc, 3);
  for (; i < n; i++) sum += p[i];
  return sum;
}
