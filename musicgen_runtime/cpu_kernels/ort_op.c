/* ONNX Runtime operator ai.musicgen.Int8BlockGemv: Y = A x W for packed blockwise-int8 weights.

   Inputs:  A float [..., K]; Qp int8 [N4/4, K/16, 64] and Sp float [N4/4, K/block, 4] (int8_gemv.h,
            N4 = N rounded up to 4). Attributes: N, block_size. Output: Y float [..., N].
   The output tiles are shared out on the session's intra-op threads (KernelContext_ParallelFor). */
#include <stdio.h>
#include <stdlib.h>

#include "int8_gemv.h"
#include "ort_abi.h"

#define DOMAIN "ai.musicgen"
/* 64 outputs (64 KB of weights at K = 1024) per task; 1, 4 or 64 tiles, or one batch per thread,
   gave the same step time (one request, small-random, 2-core EPYC) */
#define TILES_PER_TASK 16

static OrtApiTable api;

typedef struct {
  int64_t n, block;
} Kernel;

#define CHECK(call)                    \
  do {                                 \
    OrtStatus* status_ = (call);       \
    if (status_) return status_;       \
  } while (0)

static OrtStatus* fail(int code, const char* msg) { return ORT_CreateStatus(api)(code, msg); }

/* The element type and shape of a tensor; returns its rank (at most 8) in *rank. */
static OrtStatus* shape_of(const OrtValue* v, int* type, int64_t* dims, size_t* rank) {
  OrtTensorTypeAndShapeInfo* info;
  CHECK(ORT_GetTensorTypeAndShape(api)(v, &info));
  OrtStatus* s = ORT_GetTensorElementType(api)(info, type);
  if (!s) s = ORT_GetDimensionsCount(api)(info, rank);
  if (!s && *rank > 8) s = fail(ORT_INVALID_ARGUMENT, "Int8BlockGemv: tensors of rank above 8 are not supported");
  if (!s) s = ORT_GetDimensions(api)(info, dims, *rank);
  ORT_ReleaseTensorTypeAndShapeInfo(api)(info);
  return s;
}

static OrtStatus* create_kernel(const OrtCustomOp* op, OrtApiTable a, const OrtKernelInfo* info, void** out) {
  (void)op, (void)a;
  Kernel* k = malloc(sizeof *k);
  if (!k) return fail(ORT_FAIL, "Int8BlockGemv: out of memory");
  OrtStatus* s = ORT_KernelInfoGetAttribute_int64(api)(info, "N", &k->n);
  if (!s) s = ORT_KernelInfoGetAttribute_int64(api)(info, "block_size", &k->block);
  /* int32 sums of a block's int16 x int8 products stay below 2^31 up to 1024 inputs */
  if (!s && (k->n < 1 || k->block < 16 || k->block > 1024 || k->block % 16))
    s = fail(ORT_INVALID_ARGUMENT, "Int8BlockGemv: N must be >= 1 and block_size a multiple of 16 up to 1024");
  if (s) {
    free(k);
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
  int n, tiles;
} Job;

static void run_task(void* user, size_t i) {
  const Job* j = user;
  int t0 = (int)i * TILES_PER_TASK, t1 = t0 + TILES_PER_TASK < j->tiles ? t0 + TILES_PER_TASK : j->tiles;
  int8_gemv_tiles(j->a, j->qp, j->sp, j->y, j->n, t0, t1);
}

static OrtStatus* compute(void* kernel, OrtKernelContext* ctx) {
  const Kernel* kn = kernel;
  const OrtValue *av, *qv, *sv;
  CHECK(ORT_KernelContext_GetInput(api)(ctx, 0, &av));
  CHECK(ORT_KernelContext_GetInput(api)(ctx, 1, &qv));
  CHECK(ORT_KernelContext_GetInput(api)(ctx, 2, &sv));
  int at, qt, st;
  int64_t ad[8], qd[8], sd[8];
  size_t ar, qr, sr;
  CHECK(shape_of(av, &at, ad, &ar));
  CHECK(shape_of(qv, &qt, qd, &qr));
  CHECK(shape_of(sv, &st, sd, &sr));
  if (ar < 1) return fail(ORT_INVALID_ARGUMENT, "Int8BlockGemv: A must have at least one dimension");
  int64_t k = ad[ar - 1], rows = 1, tiles = (kn->n + 3) / 4, block = kn->block;
  for (size_t i = 0; i + 1 < ar; i++) rows *= ad[i];
  if (at != ORT_ELEM_FLOAT || qt != ORT_ELEM_INT8 || st != ORT_ELEM_FLOAT || qr != 3 || sr != 3 || k % block ||
      qd[0] != tiles || qd[1] * 16 != k || qd[2] != 64 || sd[0] != tiles || sd[1] * block != k || sd[2] != 4) {
    char msg[256];
    snprintf(msg, sizeof msg,
             "Int8BlockGemv: A [..., %lld] float, weights [%lld, K/16, 64] int8 and scales [%lld, K/%lld, 4] "
             "float expected (N %lld, K a multiple of the block)",
             (long long)k, (long long)tiles, (long long)tiles, (long long)block, (long long)kn->n);
    return fail(ORT_INVALID_ARGUMENT, msg);
  }
  int64_t yd[8];
  for (size_t i = 0; i < ar; i++) yd[i] = ad[i];
  yd[ar - 1] = kn->n;
  OrtValue* yv;
  const void *a, *qp, *sp;
  void* y;
  CHECK(ORT_KernelContext_GetOutput(api)(ctx, 0, yd, ar, &yv));
  CHECK(ORT_GetTensorData(api)(av, &a));
  CHECK(ORT_GetTensorData(api)(qv, &qp));
  CHECK(ORT_GetTensorData(api)(sv, &sp));
  CHECK(ORT_GetTensorMutableData(api)(yv, &y));
  if (rows == 0) return NULL;

  QuantRows q = {malloc(sizeof(int16_t) * rows * k), malloc(sizeof(float) * rows * (k / block)), 0, 0, 0};
  OrtStatus* s = NULL;
  if (!q.a16 || !q.scale) {
    s = fail(ORT_FAIL, "Int8BlockGemv: out of memory");
  } else {
    int8_gemv_quantize(a, (int)rows, (int)k, (int)block, &q);
    Job job = {&q, qp, sp, y, (int)kn->n, (int)tiles};
    size_t tasks = (size_t)(tiles + TILES_PER_TASK - 1) / TILES_PER_TASK;
    s = ORT_KernelContext_ParallelFor(api)(ctx, run_task, tasks, 0, &job);
  }
  free(q.a16);
  free(q.scale);
  return s;
}

static void destroy_kernel(void* kernel) { free(kernel); }
static const char* op_name(const OrtCustomOp* op) { return (void)op, "Int8BlockGemv"; }
static const char* cpu_provider(const OrtCustomOp* op) { return (void)op, NULL; }
static int input_type(const OrtCustomOp* op, size_t i) { return (void)op, i == 1 ? ORT_ELEM_INT8 : ORT_ELEM_FLOAT; }
static size_t input_count(const OrtCustomOp* op) { return (void)op, 3; }
static int output_type(const OrtCustomOp* op, size_t i) { return (void)op, (void)i, ORT_ELEM_FLOAT; }
static size_t output_count(const OrtCustomOp* op) { return (void)op, 1; }
static int zero(const OrtCustomOp* op, size_t i) { return (void)op, (void)i, 0; }

static const OrtCustomOp int8_block_gemv = {
    .version = ORT_CUSTOM_OP_VERSION,
    .GetName = op_name,
    .GetExecutionProviderType = cpu_provider,
    .GetInputType = input_type,
    .GetInputTypeCount = input_count,
    .GetOutputType = output_type,
    .GetOutputTypeCount = output_count,
    .KernelDestroy = destroy_kernel,
    .GetInputCharacteristic = zero,
    .GetOutputCharacteristic = zero,
    .GetInputMemoryType = zero,
    .CreateKernelV2 = create_kernel,
    .KernelComputeV2 = compute,
};

/* The entry point of SessionOptions.register_custom_ops_library. */
__attribute__((visibility("default"))) OrtStatus* RegisterCustomOps(OrtSessionOptions* options,
                                                                      const OrtApiBase* base) {
  api = base->GetApi(ORT_API_USED);
  if (!api) { /* ONNX Runtime before 1.23: every version can make a status */
    api = base->GetApi(1);
    return fail(ORT_FAIL, "Int8BlockGemv needs ONNX Runtime 1.23 or later");
  }
  if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma"))
    return fail(ORT_FAIL, "Int8BlockGemv needs a CPU with AVX2 and FMA");
  OrtCustomOpDomain* domain;
  CHECK(ORT_CreateCustomOpDomain(api)(DOMAIN, &domain));
  CHECK(ORT_CustomOpDomain_Add(api)(domain, &int8_block_gemv));
  return ORT_AddCustomOpDomain(api)(options, domain);
}
