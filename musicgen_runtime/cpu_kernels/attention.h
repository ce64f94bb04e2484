/* Attention for decode steps (AVX2 + FMA + F16C) over float16 keys and values, fp32 arithmetic.

   CachedAttention: self-attention over an in-place KV cache, GroupQueryAttention's semantics without
   rotary embeddings or windows:

   qkv [B, S, (H + 2 Hkv) D] packs each new token's query, key and value; the caches are float16
   [B, Hkv, capacity, D] (half the bytes a step reads of them; the arithmetic is fp32); row b holds total_b = seqlens_k[b] + 1 positions after this step, of which
   its S new tokens are the last (positions total_b - S .. total_b - 1), each attending causally.

   At position 751 of one request (2 rows, musicgen-small's shapes) a step reads 295 MB of cache, as
   much as 80 % of the int8 weights. ONNX Runtime's CPU GroupQueryAttention read it at about 21 GB/s on
   a 2-core AMD EPYC (Zen 2); this kernel reads each head's keys, then its values, once and in order,
   with software prefetch, at the memory's rate (27 GB/s with both cores). */
#ifndef MUSICGEN_ATTENTION_H
#define MUSICGEN_ATTENTION_H

#include <stdint.h>

typedef struct {
  int rows, tokens, heads, kv_heads, head_dim, capacity;
  float scale;
  const float* qkv;      /* [rows, tokens, (heads + 2 kv_heads) head_dim] */
  uint16_t* key;         /* [rows, kv_heads, capacity, head_dim] IEEE halves, written in place */
  uint16_t* value;       /* same */
  const int32_t* total;  /* positions of each row after this step (seqlens_k + 1) */
  float* out;            /* [rows, tokens, heads head_dim] */
} CachedAttention;

/* Writes every row's new keys and values into the caches (before any head attends). */
void cached_attention_store(const CachedAttention* a);

/* The output of query head `h` of row `b` for its new tokens; `scores`: room for `capacity` floats. */
void cached_attention_head(const CachedAttention* a, int b, int h, float* scores);

/* CrossAttention: every new token attends to all text positions (ORT MultiHeadAttention's semantics with
   a key padding mask: a masked position's score gets -10000 added, so a fully masked row averages its
   values). In ONNX Runtime's kernel each of a step's 24 cross-attentions cost ~50 us, mostly overhead. */
typedef struct {
  int rows, tokens, heads, head_dim, text_len;
  float scale;
  const float* q;        /* [rows, tokens, heads head_dim] */
  const uint16_t* key;   /* [rows, heads, text_len, head_dim] IEEE halves */
  const uint16_t* value; /* same */
  const float* bias;     /* [rows, text_len]: 0 where the mask is set, else -10000 */
  float* out;            /* [rows, tokens, heads head_dim] */
} CrossAttention;

/* The output of query head `h` of row `b` for its new tokens; `scores`: room for `text_len` floats. */
void cross_attention_head(const CrossAttention* a, int b, int h, float* scores);

#endif
