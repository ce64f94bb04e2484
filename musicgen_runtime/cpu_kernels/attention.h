/* Attention for decode steps (AVX2 + FMA + F16C), fp32 arithmetic over cached keys and values.

   CachedAttention: self-attention over an in-place KV cache, GroupQueryAttention's semantics without
   rotary embeddings or windows:

   qkv [B, S, (H + 2 Hkv) D] packs each new token's query, key and value; the caches are [B, Hkv,
   capacity, position], a position being D int8 values and their float32 scale (absmax / 127: 68 bytes at
   D 64, against 128 in float16). Row b holds total_b = seqlens_k[b] + 1
   positions after this step, of which its S new tokens are the last (positions total_b - S .. total_b - 1),
   each attending causally.

   A step reads every cached position of every layer: at position 750 of one request (2 rows, musicgen-small's
   shapes) 147 MB in float16, 78 MB in int8, against ~400 MB of int8 weights. Each head's keys, then its
   values, are read once, as three streams side by side, with software prefetch; int8 keys are multiplied in
   integers (vpmaddwd) with the query rounded to int16. On one core of a Zen 2 EPYC (cache in 4 KiB pages,
   cold) the 24 layers at that position took 12.0 ms in float16 and 6.6 ms in int8 (one stream), 5.6 ms in
   int8 with three. */
#ifndef MUSICGEN_ATTENTION_H
#define MUSICGEN_ATTENTION_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
  int rows, tokens, heads, kv_heads, head_dim, capacity;
  float scale;
  const float* qkv;      /* [rows, tokens, (heads + 2 kv_heads) head_dim] */
  void* key;             /* [rows, kv_heads, capacity, position bytes], written in place */
  void* value;           /* same */
  const int32_t* total;  /* positions of each row after this step (seqlens_k + 1) */
  float* out;            /* [rows, tokens, heads head_dim] */
} CachedAttention;

/* Bytes of one cached position of one head: head_dim int8 values (rounded to nearest even after dividing by the
   scale), then their float32 scale. */
size_t cached_position_bytes(int head_dim);

/* Writes every row's new keys and values into the caches, before any head attends, where query heads share
   K/V heads (kv_heads < heads); otherwise nothing (each head's cached_attention_head writes its own). */
void cached_attention_store(const CachedAttention* a);

/* The output of query head `h` of row `b` for its new tokens; `scores`: room for `capacity` floats. Where each
   query head has a K/V head of its own, it first writes that head's new keys and values itself, so the heads'
   tasks share the stores out (one request on the Zen 2 VM: 0.2 ms a step on the calling thread before,
   mostly waiting for the cold cache lines they write; the step 0.2-0.3 ms faster). */
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
