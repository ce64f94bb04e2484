/* Our ONNX Runtime operators, domain ai.musicgen (CPU):

   Int8BlockGemv: Y = epilogue(prologue(A) x W) for packed blockwise-int8 weights (int8_gemv.h, prologue.h).
     Inputs: A float [..., K]; Qp int8 [N8/8, K/2, 16]; Sp float [N8/8, K/block, 8] (N8 = N rounded
     up to 8); with prologue 2 also skip float [..., K] (A's shape), gamma and beta float [K].
     Attributes: N, block_size; prologue (0 none, 2 skip layer norm; default 0), epsilon (default 1e-5);
     epilogue (0 none, 1 gelu; default 0). Output: Y float [..., N]; with prologue 2 also the sum
     A + skip float [..., K].
   CachedAttention: GroupQueryAttention over an in-place cache, without rotary (attention.h).
     Inputs: qkv float [B, S, (H + 2 Hkv) D]; past_key, past_value int8 [B, Hkv, capacity, D + 4] (D values
     and their scale); seqlens_k int32 [B]; total_sequence_length int32 []. Attributes: num_heads,
     kv_num_heads, scale. Outputs: out float [B, S, H D]; present_key, present_value as the past (bound to
     the past's buffers, they are written in place; otherwise the past is copied into them first).
   CrossAttention: MultiHeadAttention of new tokens to text K/V with a key padding mask (attention.h).
     Inputs: q float [B, S, H D]; key, value float16 [B, H, T, D]; key_padding_mask int32 [B, T] (0: masked).
     Attributes: num_heads, scale. Output: float [B, S, H D].

   Work is shared out on the session's intra-op threads (KernelContext_ParallelFor). Int8BlockGemv's
   weights, when they are initializers, are copied onto huge pages when the kernel is made (hugepage_copy.h);
   its initializer inputs are read once then, not at every call (~0.4 us an input). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "attention.h"
#include "hugepage_copy.h"
#include "int8_gemv.h"
#include "ort_abi.h"
#include "prologue.h"

#define DOMAIN "ai.musicgen"
/* A GEMV is shared out as this many contiguous ranges of outputs per CPU: each thread reads long
   sequential runs of weights (ranges of 16 tiles, taken in turn by the threads, cost a tenth more). */
#define TASKS_PER_CPU 2
static size_t gemv_tasks = TASKS_PER_CPU; /* set at registration */

static OrtApiTable api;

#define CHECK(call)              \
  do {                           \
    OrtStatus* status_ = (call); \
    if (status_) return status_; \
  } while (0)

static OrtStatus* fail(int code, const char* msg) { return ORT_CreateStatus(api)(code, msg); }

typedef struct {
  int type;
  size_t rank;
  int64_t dims[8];
  const void* data;
} Tensor;

/* A tensor's element type, shape and data. */
static OrtStatus* tensor(const OrtValue* v, Tensor* t) {
  OrtTensorTypeAndShapeInfo* info;
  CHECK(ORT_GetTensorTypeAndShape(api)(v, &info));
  OrtStatus* s = ORT_GetTensorElementType(api)(info, &t->type);
  if (!s) s = ORT_GetDimensionsCount(api)(info, &t->rank);
  if (!s && t->rank > 8) s = fail(ORT_INVALID_ARGUMENT, "ai.musicgen: tensors of rank above 8 are not supported");
  if (!s) s = ORT_GetDimensions(api)(info, t->dims, t->rank);
  ORT_ReleaseTensorTypeAndShapeInfo(api)(info);
  return s ? s : ORT_GetTensorData(api)(v, &t->data);
}

static OrtStatus* input(OrtKernelContext* ctx, size_t index, Tensor* t) {
  const OrtValue* v;
  CHECK(ORT_KernelContext_GetInput(api)(ctx, index, &v));
  return tensor(v, t);
}

static size_t tensor_bytes(const Tensor* t, size_t element) {
  size_t n = element;
  for (size_t i = 0; i < t->rank; i++) n *= (size_t)t->dims[i];
  return n;
}

static OrtStatus* output(OrtKernelContext* ctx, size_t index, const int64_t* dims, size_t rank, void** data) {
  OrtValue* v;
  CHECK(ORT_KernelContext_GetOutput(api)(ctx, index, dims, rank, &v));
  return ORT_GetTensorMutableData(api)(v, data);
}

static OrtStatus* bad_input(const char* op, const char* expected) {
  char msg[320];
  snprintf(msg, sizeof msg, "%s: %s", op, expected);
  return fail(ORT_INVALID_ARGUMENT, msg);
}

static OrtStatus* out_of_memory(const char* op) {
  char msg[64];
  snprintf(msg, sizeof msg, "%s: out of memory", op);
  return fail(ORT_FAIL, msg);
}

/* A kernel object whose attributes were read with status `s`: handed to ONNX Runtime, or freed. */
static OrtStatus* created(void* kernel, OrtStatus* s, void** out) {
  if (s) {
    free(kernel);
    return s;
  }
  *out = kernel;
  return NULL;
}

/* ---- Int8BlockGemv ---- */

/* An input that may be an initializer: then its tensor, read when the kernel is made (data on the huge-page
   copy when one was made), else read from the context at each call. */
typedef struct {
  int constant;
  Tensor t;
  HugeCopy copy; /* data NULL: no copy */
} Constant;

typedef struct {
  int64_t n, block, prologue, epilogue;
  float epsilon;
  Constant q, s, gamma, beta;
} Gemv;

/* An attribute the node may leave out: its default then. */
static void optional_int64(const OrtKernelInfo* info, const char* name, int64_t fallback, int64_t* out) {
  OrtStatus* s = ORT_KernelInfoGetAttribute_int64(api)(info, name, out);
  if (s) ORT_ReleaseStatus(api)(s), *out = fallback;
}

static void optional_float(const OrtKernelInfo* info, const char* name, float fallback, float* out) {
  OrtStatus* s = ORT_KernelInfoGetAttribute_float(api)(info, name, out);
  if (s) ORT_ReleaseStatus(api)(s), *out = fallback;
}

/* Input `index` if it is an initializer; with `element` > 0 its data copied onto huge pages (left where ONNX
   Runtime keeps it without memory for the copy). */
static OrtStatus* read_constant(const OrtKernelInfo* info, size_t index, size_t element, Constant* c) {
  const OrtValue* v = NULL;
  CHECK(ORT_KernelInfoGetConstantInput_tensor(api)(info, index, &c->constant, &v));
  if (!c->constant || !v) return c->constant = 0, NULL;
  CHECK(tensor(v, &c->t));
  if (element && !hugepage_copy(c->t.data, tensor_bytes(&c->t, element), &c->copy)) c->t.data = c->copy.data;
  return NULL;
}

static OrtStatus* input_or_constant(OrtKernelContext* ctx, size_t index, const Constant* c, Tensor* t) {
  if (!c->constant) return input(ctx, index, t);
  *t = c->t;
  return NULL;
}

static void gemv_destroy(void* kernel) {
  Gemv* k = kernel;
  if (k->q.copy.data) hugepage_release(&k->q.copy);
  if (k->s.copy.data) hugepage_release(&k->s.copy);
  free(k);
}

static OrtStatus* gemv_create(const OrtCustomOp* op, OrtApiTable a, const OrtKernelInfo* info, void** out) {
  (void)op, (void)a;
  Gemv* k = calloc(1, sizeof *k);
  if (!k) return out_of_memory("Int8BlockGemv");
  OrtStatus* s = ORT_KernelInfoGetAttribute_int64(api)(info, "N", &k->n);
  if (!s) s = ORT_KernelInfoGetAttribute_int64(api)(info, "block_size", &k->block);
  if (!s && (k->n < 1 || k->block < 16 || k->block > MAX_BLOCK || k->block % 16))
    s = bad_input("Int8BlockGemv", "N must be >= 1 and block_size a multiple of 16 up to 512");
  optional_int64(info, "prologue", PROLOGUE_NONE, &k->prologue);
  optional_int64(info, "epilogue", EPILOGUE_NONE, &k->epilogue);
  optional_float(info, "epsilon", 1e-5f, &k->epsilon);
  if (!s && k->prologue != PROLOGUE_NONE && k->prologue != PROLOGUE_SKIP_LAYER_NORM)
    s = bad_input("Int8BlockGemv", "prologue must be 0 (none) or 2 (skip layer norm)");
  if (!s && k->epilogue != EPILOGUE_NONE && k->epilogue != EPILOGUE_GELU)
    s = bad_input("Int8BlockGemv", "epilogue must be 0 (none) or 1 (gelu)");
  if (!s) s = read_constant(info, 1, sizeof(int8_t), &k->q);
  if (!s) s = read_constant(info, 2, sizeof(float), &k->s);
  /* weights packed for this kernel's tiles, told apart from an older export's when the session is made */
  if (!s && ((k->q.constant && (k->q.t.rank != 3 || k->q.t.dims[2] != 2 * TILE_OUTPUTS)) ||
             (k->s.constant && (k->s.t.rank != 3 || k->s.t.dims[2] != TILE_OUTPUTS))))
    s = bad_input("Int8BlockGemv", "the weights are not packed in tiles of 8 outputs (an older export?): re-export");
  size_t inputs = 0;
  if (!s) s = ORT_KernelInfo_GetInputCount(api)(info, &inputs);
  if (!s && k->prologue == PROLOGUE_SKIP_LAYER_NORM && inputs >= 6) {
    s = read_constant(info, 4, 0, &k->gamma);
    if (!s) s = read_constant(info, 5, 0, &k->beta);
  }
  if (s) {
    gemv_destroy(k);
    return s;
  }
  *out = k;
  return NULL;
}

typedef struct {
  const QuantRows* a;
  const int8_t* qp;
  const float* sp;
  float* y;
  int n, tiles, tasks, epilogue;
} GemvJob;

static void gemv_task(void* user, size_t i) {
  const GemvJob* j = user;
  int t0 = (int)((int64_t)j->tiles * (int64_t)i / j->tasks);
  int t1 = (int)((int64_t)j->tiles * (int64_t)(i + 1) / j->tasks);
  int8_gemv_tiles(j->a, j->qp, j->sp, j->y, j->n, t0, t1, j->epilogue);
}

/* The rows the product reads: A itself, or A after the kernel's prologue in `staged` (rows x k floats). */
static OrtStatus* apply_prologue(const Gemv* kn, OrtKernelContext* ctx, const Tensor* a, int64_t rows, int64_t k,
                                 float* staged) {
  if (k % 8) return bad_input("Int8BlockGemv", "a prologue needs K a multiple of 8");
  size_t inputs, outputs;
  CHECK(ORT_KernelContext_GetInputCount(api)(ctx, &inputs));
  CHECK(ORT_KernelContext_GetOutputCount(api)(ctx, &outputs));
  if (inputs < 6 || outputs < 2)
    return bad_input("Int8BlockGemv", "prologue 2 (skip layer norm) takes skip, gamma and beta, and gives the sum");
  Tensor skip, gamma, beta;
  CHECK(input(ctx, 3, &skip));
  CHECK(input_or_constant(ctx, 4, &kn->gamma, &gamma));
  CHECK(input_or_constant(ctx, 5, &kn->beta, &beta));
  if (skip.type != ORT_ELEM_FLOAT || gamma.type != ORT_ELEM_FLOAT || beta.type != ORT_ELEM_FLOAT ||
      skip.rank != a->rank || memcmp(skip.dims, a->dims, sizeof(int64_t) * a->rank) || gamma.rank != 1 ||
      gamma.dims[0] != k || beta.rank != 1 || beta.dims[0] != k)
    return bad_input("Int8BlockGemv", "skip float of A's shape, gamma and beta float [K] expected");
  void* sum;
  CHECK(output(ctx, 1, a->dims, a->rank, &sum));
  for (int64_t r = 0; r < rows; r++)
    prologue_skip_layer_norm((const float*)a->data + r * k, (const float*)skip.data + r * k, gamma.data, beta.data,
                             kn->epsilon, (int)k, (float*)sum + r * k, staged + r * k);
  return NULL;
}

static OrtStatus* gemv_compute(void* kernel, OrtKernelContext* ctx) {
  const Gemv* kn = kernel;
  Tensor a, q, sc;
  CHECK(input(ctx, 0, &a));
  CHECK(input_or_constant(ctx, 1, &kn->q, &q));
  CHECK(input_or_constant(ctx, 2, &kn->s, &sc));
  int64_t k = a.rank ? a.dims[a.rank - 1] : 0, rows = 1, tiles = (kn->n + TILE_OUTPUTS - 1) / TILE_OUTPUTS,
          block = kn->block;
  for (size_t i = 0; i + 1 < a.rank; i++) rows *= a.dims[i];
  if (a.rank < 1 || a.type != ORT_ELEM_FLOAT || q.type != ORT_ELEM_INT8 || sc.type != ORT_ELEM_FLOAT || q.rank != 3 ||
      sc.rank != 3 || k % block || q.dims[0] != tiles || q.dims[1] * 2 != k || q.dims[2] != 2 * TILE_OUTPUTS ||
      sc.dims[0] != tiles || sc.dims[1] * block != k || sc.dims[2] != TILE_OUTPUTS) {
    char msg[256];
    snprintf(msg, sizeof msg,
             "A [..., %lld] float, weights [%lld, K/2, 16] int8 and scales [%lld, K/%lld, 8] float expected "
             "(N %lld, K a multiple of the block)",
             (long long)k, (long long)tiles, (long long)tiles, (long long)block, (long long)kn->n);
    return bad_input("Int8BlockGemv", msg);
  }
  int64_t yd[8];
  memcpy(yd, a.dims, sizeof(int64_t) * a.rank);
  yd[a.rank - 1] = kn->n;
  void* y;
  CHECK(output(ctx, 0, yd, a.rank, &y));

  QuantRows qa = {malloc(sizeof(int16_t) * rows * k + 1), malloc(sizeof(float) * rows * (k / block) + 1), 0, 0, 0};
  float* staged = kn->prologue ? malloc(sizeof(float) * rows * k + 1) : NULL;
  OrtStatus* s = NULL;
  if (!qa.a16 || !qa.scale || (kn->prologue && !staged)) {
    s = out_of_memory("Int8BlockGemv");
  } else {
    if (kn->prologue) s = apply_prologue(kn, ctx, &a, rows, k, staged);
    if (!s && rows > 0) {
      int8_gemv_quantize(staged ? staged : a.data, (int)rows, (int)k, (int)block, &qa);
      size_t tasks = gemv_tasks < (size_t)tiles ? gemv_tasks : (size_t)tiles;
      GemvJob job = {&qa, q.data, sc.data, y, (int)kn->n, (int)tiles, (int)tasks, (int)kn->epilogue};
      s = ORT_KernelContext_ParallelFor(api)(ctx, gemv_task, tasks, 0, &job);
    }
  }
  free(qa.a16);
  free(qa.scale);
  free(staged);
  return s;
}

static int gemv_input_type(const OrtCustomOp* op, size_t i) { return (void)op, i == 1 ? ORT_ELEM_INT8 : ORT_ELEM_FLOAT; }
static size_t gemv_input_count(const OrtCustomOp* op) { return (void)op, 6; }
static size_t gemv_output_count(const OrtCustomOp* op) { return (void)op, 2; }
/* 0 required, 1 optional: the prologue's inputs and output */
static int gemv_input_characteristic(const OrtCustomOp* op, size_t i) { return (void)op, i >= 3; }
static int gemv_output_characteristic(const OrtCustomOp* op, size_t i) { return (void)op, i >= 1; }

/* ---- attention: one task per (row, head), each with its own scores buffer ---- */

typedef struct {
  void (*head)(const void* attention, int row, int head, float* scores);
  const void* attention;
  int heads;
  size_t positions; /* floats of scores a task needs */
  float* scores;
} HeadJob;

static void head_task(void* user, size_t i) {
  const HeadJob* j = user;
  j->head(j->attention, (int)i / j->heads, (int)i % j->heads, j->scores + i * j->positions);
}

static OrtStatus* run_heads(OrtKernelContext* ctx, const char* op, HeadJob job, int rows) {
  size_t tasks = (size_t)rows * job.heads;
  job.scores = malloc(sizeof(float) * tasks * job.positions + 1);
  if (!job.scores) return out_of_memory(op);
  OrtStatus* s = ORT_KernelContext_ParallelFor(api)(ctx, head_task, tasks, 0, &job);
  free(job.scores);
  return s;
}

static void one_cached_head(const void* a, int b, int h, float* scores) { cached_attention_head(a, b, h, scores); }
static void one_cross_head(const void* a, int b, int h, float* scores) { cross_attention_head(a, b, h, scores); }

/* Both attention operators' attributes: num_heads and scale, and CachedAttention's kv_num_heads. */
typedef struct {
  int64_t heads, kv_heads;
  float scale;
} Attention;

static OrtStatus* read_attention(const OrtKernelInfo* info, const char* op, int grouped, void** out) {
  Attention* k = malloc(sizeof *k);
  if (!k) return out_of_memory(op);
  OrtStatus* s = ORT_KernelInfoGetAttribute_int64(api)(info, "num_heads", &k->heads);
  if (!s) s = ORT_KernelInfoGetAttribute_float(api)(info, "scale", &k->scale);
  if (!s && grouped) s = ORT_KernelInfoGetAttribute_int64(api)(info, "kv_num_heads", &k->kv_heads);
  return created(k, s, out);
}

/* ---- CachedAttention ---- */

static OrtStatus* attention_create(const OrtCustomOp* op, OrtApiTable a, const OrtKernelInfo* info, void** out) {
  (void)op, (void)a;
  CHECK(read_attention(info, "CachedAttention", 1, out));
  const Attention* k = *out;
  if (k->kv_heads < 1 || k->heads % k->kv_heads) {
    free(*out);
    return bad_input("CachedAttention", "num_heads must be a multiple of kv_num_heads");
  }
  return NULL;
}

static OrtStatus* attention_compute(void* kernel, OrtKernelContext* ctx) {
  const Attention* kn = kernel;
  Tensor qkv, pk, pv, seqlens, total;
  CHECK(input(ctx, 0, &qkv));
  CHECK(input(ctx, 1, &pk));
  CHECK(input(ctx, 2, &pv));
  CHECK(input(ctx, 3, &seqlens));
  CHECK(input(ctx, 4, &total));
  int64_t b = pk.dims[0], d = pk.dims[3] - (int64_t)sizeof(float), cap = pk.dims[2], s = qkv.dims[1];
  int ok = qkv.type == ORT_ELEM_FLOAT && pk.type == ORT_ELEM_INT8 && pv.type == ORT_ELEM_INT8 &&
           seqlens.type == ORT_ELEM_INT32 && total.type == ORT_ELEM_INT32 && qkv.rank == 3 && pk.rank == 4 &&
           pv.rank == 4 && seqlens.rank == 1 && memcmp(pk.dims, pv.dims, sizeof(int64_t) * 4) == 0 &&
           pk.dims[1] == kn->kv_heads && d > 0 && d % 8 == 0 && d <= 256 && qkv.dims[0] == b &&
           seqlens.dims[0] == b && qkv.dims[2] == (kn->heads + 2 * kn->kv_heads) * d;
  const int32_t* last = seqlens.data;
  for (int64_t r = 0; ok && r < b; r++) ok = last[r] + 1 >= s && last[r] < cap;
  if (!ok)
    return bad_input("CachedAttention",
                     "qkv [B, S, (H + 2 Hkv) D] float, past key/value [B, Hkv, capacity, D + 4] int8 (D a multiple "
                     "of 8 up to 256), seqlens_k [B] int32 with S <= seqlens_k + 1 <= capacity expected");
  int64_t od[3] = {b, s, kn->heads * d};
  void *out, *key, *value;
  CHECK(output(ctx, 0, od, 3, &out));
  CHECK(output(ctx, 1, pk.dims, 4, &key));
  CHECK(output(ctx, 2, pv.dims, 4, &value));
  size_t cache_bytes = cached_position_bytes((int)d) * b * kn->kv_heads * cap;
  if (key != pk.data) memcpy(key, pk.data, cache_bytes); /* present not bound to the past's buffer */
  if (value != pv.data) memcpy(value, pv.data, cache_bytes);
  if (b == 0 || s == 0) return NULL;

  int32_t* totals = malloc(sizeof(int32_t) * b);
  if (!totals) return out_of_memory("CachedAttention");
  for (int64_t r = 0; r < b; r++) totals[r] = last[r] + 1;
  CachedAttention at = {(int)b, (int)s, (int)kn->heads, (int)kn->kv_heads, (int)d, (int)cap, kn->scale,
                        qkv.data, key, value, totals, out};
  cached_attention_store(&at);
  HeadJob job = {one_cached_head, &at, (int)kn->heads, (size_t)cap, NULL};
  OrtStatus* st = run_heads(ctx, "CachedAttention", job, (int)b);
  free(totals);
  return st;
}

static int attention_input_type(const OrtCustomOp* op, size_t i) {
  return (void)op, i >= 3 ? ORT_ELEM_INT32 : i ? ORT_ELEM_INT8 : ORT_ELEM_FLOAT;
}
static int attention_output_type(const OrtCustomOp* op, size_t i) { return (void)op, i ? ORT_ELEM_INT8 : ORT_ELEM_FLOAT; }
static size_t attention_input_count(const OrtCustomOp* op) { return (void)op, 5; }
static size_t attention_output_count(const OrtCustomOp* op) { return (void)op, 3; }

/* ---- CrossAttention ---- */

static OrtStatus* cross_create(const OrtCustomOp* op, OrtApiTable a, const OrtKernelInfo* info, void** out) {
  (void)op, (void)a;
  CHECK(read_attention(info, "CrossAttention", 0, out));
  if (((const Attention*)*out)->heads < 1) {
    free(*out);
    return bad_input("CrossAttention", "num_heads must be >= 1");
  }
  return NULL;
}

static OrtStatus* cross_compute(void* kernel, OrtKernelContext* ctx) {
  const Attention* kn = kernel;
  Tensor q, key, value, mask;
  CHECK(input(ctx, 0, &q));
  CHECK(input(ctx, 1, &key));
  CHECK(input(ctx, 2, &value));
  CHECK(input(ctx, 3, &mask));
  int64_t b = key.dims[0], t = key.dims[2], d = key.dims[3];
  int ok = q.type == ORT_ELEM_FLOAT && key.type == ORT_ELEM_FLOAT16 && value.type == ORT_ELEM_FLOAT16 &&
           mask.type == ORT_ELEM_INT32 && q.rank == 3 && key.rank == 4 && value.rank == 4 && mask.rank == 2 &&
           memcmp(key.dims, value.dims, sizeof(int64_t) * 4) == 0 && key.dims[1] == kn->heads && d % 8 == 0 &&
           d <= 256 && q.dims[0] == b && q.dims[2] == kn->heads * d && mask.dims[0] == b && mask.dims[1] == t;
  if (!ok)
    return bad_input("CrossAttention",
                     "q [B, S, H D] float, key/value [B, H, T, D] float16 (D a multiple of 8 up to 256) and "
                     "key_padding_mask [B, T] int32 expected");
  void* out;
  CHECK(output(ctx, 0, q.dims, 3, &out));
  if (b == 0 || q.dims[1] == 0 || t == 0) {
    if (t == 0) memset(out, 0, sizeof(float) * b * q.dims[1] * q.dims[2]); /* nothing to attend to */
    return NULL;
  }
  float* bias = malloc(sizeof(float) * b * t);
  if (!bias) return out_of_memory("CrossAttention");
  const int32_t* m = mask.data;
  for (int64_t i = 0; i < b * t; i++) bias[i] = m[i] ? 0.f : -10000.f; /* ORT's mask_filter_value */
  CrossAttention at = {(int)b, (int)q.dims[1], (int)kn->heads, (int)d, (int)t, kn->scale,
                       q.data, key.data, value.data, bias, out};
  HeadJob job = {one_cross_head, &at, (int)kn->heads, (size_t)t, NULL};
  OrtStatus* st = run_heads(ctx, "CrossAttention", job, (int)b);
  free(bias);
  return st;
}

static int cross_input_type(const OrtCustomOp* op, size_t i) {
  return (void)op, i == 3 ? ORT_ELEM_INT32 : i ? ORT_ELEM_FLOAT16 : ORT_ELEM_FLOAT;
}
static size_t cross_input_count(const OrtCustomOp* op) { return (void)op, 4; }
static size_t cross_output_count(const OrtCustomOp* op) { return (void)op, 1; }

/* ---- registration ---- */

static void attention_destroy(void* kernel) { free(kernel); }
#define cross_destroy attention_destroy
static const char* gemv_name(const OrtCustomOp* op) { return (void)op, "Int8BlockGemv"; }
static const char* attention_name(const OrtCustomOp* op) { return (void)op, "CachedAttention"; }
static const char* cross_name(const OrtCustomOp* op) { return (void)op, "CrossAttention"; }
static const char* cpu_provider(const OrtCustomOp* op) { return (void)op, NULL; }
static int gemv_output_type(const OrtCustomOp* op, size_t i) { return (void)op, (void)i, ORT_ELEM_FLOAT; }
#define cross_output_type gemv_output_type
static int zero(const OrtCustomOp* op, size_t i) { return (void)op, (void)i, 0; }
#define attention_input_characteristic zero
#define attention_output_characteristic zero
#define cross_input_characteristic zero
#define cross_output_characteristic zero

#define OPERATOR(NAME, PREFIX)                                                                          \
  {                                                                                                     \
    .version = ORT_CUSTOM_OP_VERSION, .GetName = NAME, .GetExecutionProviderType = cpu_provider,        \
    .GetInputType = PREFIX##_input_type, .GetInputTypeCount = PREFIX##_input_count,                     \
    .GetOutputType = PREFIX##_output_type, .GetOutputTypeCount = PREFIX##_output_count,                 \
    .KernelDestroy = PREFIX##_destroy, .GetInputCharacteristic = PREFIX##_input_characteristic,         \
    .GetOutputCharacteristic = PREFIX##_output_characteristic, .GetInputMemoryType = zero,              \
    .CreateKernelV2 = PREFIX##_create, .KernelComputeV2 = PREFIX##_compute,                             \
  }

static const OrtCustomOp operators[] = {
    OPERATOR(gemv_name, gemv),
    OPERATOR(attention_name, attention),
    OPERATOR(cross_name, cross),
};

/* The entry point of SessionOptions.register_custom_ops_library. */
__attribute__((visibility("default"))) OrtStatus* RegisterCustomOps(OrtSessionOptions* options,
                                                                      const OrtApiBase* base) {
  api = base->GetApi(ORT_API_USED);
  if (!api) { /* ONNX Runtime before 1.23: every version can make a status */
    api = base->GetApi(1);
    return fail(ORT_FAIL, "the ai.musicgen operators need ONNX Runtime 1.23 or later");
  }
  if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma") || !__builtin_cpu_supports("f16c"))
    return fail(ORT_FAIL, "the ai.musicgen operators need a CPU with AVX2, FMA and F16C");
  long cpus = sysconf(_SC_NPROCESSORS_ONLN);
  gemv_tasks = TASKS_PER_CPU * (size_t)(cpus > 0 ? cpus : 1);
  OrtCustomOpDomain* domain;
  CHECK(ORT_CreateCustomOpDomain(api)(DOMAIN, &domain));
  for (size_t i = 0; i < sizeof operators / sizeof *operators; i++)
    CHECK(ORT_CustomOpDomain_Add(api)(domain, &operators[i]));
  return ORT_AddCustomOpDomain(api)(options, domain);
}
