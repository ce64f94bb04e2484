/* The benchmark's memory read probe: n bytes read with AVX2 loads (bench/measure.raw_read), as four
   streams side by side, a cache line of each in turn: the fastest way to read memory found on the 2-core
   Zen 2 VM (47-49 GB/s on 2 threads over 2 MiB pages, against 31-35 for one stream per thread), so that
   a step's floor counts what the memory can give, not what one pattern of reading it gets. Returns a
   checksum so that the loads are not optimized away. */
#include <immintrin.h>
#include <stddef.h>
#include <stdint.h>

#define PROBE_STREAMS 4
#define LINE 64

__attribute__((visibility("default"))) uint64_t musicgen_read_bytes(const uint8_t* p, size_t n) {
  __m256i acc = _mm256_setzero_si256();
  const size_t part = n / PROBE_STREAMS / LINE * LINE;
  for (size_t i = 0; i < part; i += LINE)
    for (int s = 0; s < PROBE_STREAMS; s++) {
      const __m256i* q = (const __m256i*)(p + s * part + i);
      acc = _mm256_add_epi8(acc, _mm256_add_epi8(_mm256_loadu_si256(q), _mm256_loadu_si256(q + 1)));
    }
  uint64_t sum = (uint64_t)_mm256_extract_epi64(acc, 0) ^ (uint64_t)_mm256_extract_epi64(acc, 3);
  for (size_t i = PROBE_STREAMS * part; i < n; i++) sum += p[i];
  return sum;
}
