/* The part of ONNX Runtime's C ABI (x86-64, API version 23 and later; onnxruntime 1.31 offers 1-31)
   that a custom-operator library needs, declared here so the build needs no ONNX Runtime headers.

   OrtApi is a table of function pointers that only ever grows at its end, so a function's index in
   it is fixed once released; these indices were checked against onnxruntime 1.31.1 (an operator
   built from them computes correct results: tests/test_int8_gemv.py). The handles are opaque. */
#ifndef MUSICGEN_ORT_ABI_H
#define MUSICGEN_ORT_ABI_H

#include <stddef.h>
#include <stdint.h>

typedef struct OrtStatus OrtStatus;
typedef struct OrtValue OrtValue;
typedef struct OrtKernelInfo OrtKernelInfo;
typedef struct OrtKernelContext OrtKernelContext;
typedef struct OrtTensorTypeAndShapeInfo OrtTensorTypeAndShapeInfo;
typedef struct OrtCustomOpDomain OrtCustomOpDomain;
typedef struct OrtSessionOptions OrtSessionOptions;
typedef void* const* OrtApiTable; /* the OrtApi struct, read as an array of function pointers */

typedef struct {
  OrtApiTable (*GetApi)(uint32_t version); /* NULL if the runtime lacks that version */
  const char* (*GetVersionString)(void);
} OrtApiBase;

/* The API version this library asks for: GetTensorData (the newest function used) came in 23. */
#define ORT_API_USED 23

enum { ORT_ELEM_FLOAT = 1, ORT_ELEM_INT8 = 3, ORT_ELEM_INT32 = 6, ORT_ELEM_FLOAT16 = 10 };
enum { ORT_FAIL = 1, ORT_INVALID_ARGUMENT = 2 };

/* Indices into OrtApi and the function types found there. */
#define ORT_FN(index, type) ((type)api[index])
#define ORT_CreateStatus(api) ORT_FN(0, OrtStatus * (*)(int, const char*))
#define ORT_CreateCustomOpDomain(api) ORT_FN(26, OrtStatus * (*)(const char*, OrtCustomOpDomain**))
#define ORT_CustomOpDomain_Add(api) ORT_FN(27, OrtStatus * (*)(OrtCustomOpDomain*, const void*))
#define ORT_AddCustomOpDomain(api) ORT_FN(28, OrtStatus * (*)(OrtSessionOptions*, OrtCustomOpDomain*))
#define ORT_GetTensorMutableData(api) ORT_FN(51, OrtStatus * (*)(OrtValue*, void**))
#define ORT_GetTensorElementType(api) ORT_FN(60, OrtStatus * (*)(const OrtTensorTypeAndShapeInfo*, int*))
#define ORT_GetDimensionsCount(api) ORT_FN(61, OrtStatus * (*)(const OrtTensorTypeAndShapeInfo*, size_t*))
#define ORT_GetDimensions(api) ORT_FN(62, OrtStatus * (*)(const OrtTensorTypeAndShapeInfo*, int64_t*, size_t))
#define ORT_GetTensorTypeAndShape(api) ORT_FN(65, OrtStatus * (*)(const OrtValue*, OrtTensorTypeAndShapeInfo**))
#define ORT_KernelInfoGetAttribute_float(api) ORT_FN(85, OrtStatus * (*)(const OrtKernelInfo*, const char*, float*))
#define ORT_KernelInfoGetAttribute_int64(api) ORT_FN(86, OrtStatus * (*)(const OrtKernelInfo*, const char*, int64_t*))
#define ORT_ReleaseStatus(api) ORT_FN(93, void (*)(OrtStatus*))
#define ORT_KernelContext_GetInputCount(api) ORT_FN(88, OrtStatus * (*)(const OrtKernelContext*, size_t*))
#define ORT_KernelContext_GetOutputCount(api) ORT_FN(89, OrtStatus * (*)(const OrtKernelContext*, size_t*))
#define ORT_KernelContext_GetInput(api) ORT_FN(90, OrtStatus * (*)(const OrtKernelContext*, size_t, const OrtValue**))
#define ORT_KernelContext_GetOutput(api) \
  ORT_FN(91, OrtStatus * (*)(OrtKernelContext*, size_t, const int64_t*, size_t, OrtValue**))
#define ORT_KernelInfo_GetInputCount(api) ORT_FN(230, OrtStatus * (*)(const OrtKernelInfo*, size_t*))
#define ORT_KernelInfoGetConstantInput_tensor(api) \
  ORT_FN(249, OrtStatus * (*)(const OrtKernelInfo*, size_t, int*, const OrtValue**))
#define ORT_ReleaseTensorTypeAndShapeInfo(api) ORT_FN(99, void (*)(OrtTensorTypeAndShapeInfo*))
#define ORT_KernelContext_ParallelFor(api) \
  ORT_FN(274, OrtStatus * (*)(const OrtKernelContext*, void (*)(void*, size_t), size_t, size_t, void*))
#define ORT_GetTensorData(api) ORT_FN(378, OrtStatus * (*)(const OrtValue*, const void**))

/* OrtCustomOp: a version, then function pointers the runtime reads according to that version. */
#define ORT_CUSTOM_OP_VERSION 18 /* V2 create/compute (16), start/end version (17), in-place maps (18) */
typedef struct OrtCustomOp {
  uint32_t version;
  void* (*CreateKernel)(const struct OrtCustomOp*, OrtApiTable, const OrtKernelInfo*);
  const char* (*GetName)(const struct OrtCustomOp*);
  const char* (*GetExecutionProviderType)(const struct OrtCustomOp*); /* returns NULL: the CPU provider */
  int (*GetInputType)(const struct OrtCustomOp*, size_t);
  size_t (*GetInputTypeCount)(const struct OrtCustomOp*);
  int (*GetOutputType)(const struct OrtCustomOp*, size_t);
  size_t (*GetOutputTypeCount)(const struct OrtCustomOp*);
  void (*KernelCompute)(void*, OrtKernelContext*);
  void (*KernelDestroy)(void*);
  int (*GetInputCharacteristic)(const struct OrtCustomOp*, size_t);  /* 0: required */
  int (*GetOutputCharacteristic)(const struct OrtCustomOp*, size_t); /* 0: required */
  int (*GetInputMemoryType)(const struct OrtCustomOp*, size_t);      /* 0: the provider's default */
  int (*GetVariadicInputMinArity)(const struct OrtCustomOp*);
  int (*GetVariadicInputHomogeneity)(const struct OrtCustomOp*);
  int (*GetVariadicOutputMinArity)(const struct OrtCustomOp*);
  int (*GetVariadicOutputHomogeneity)(const struct OrtCustomOp*);
  OrtStatus* (*CreateKernelV2)(const struct OrtCustomOp*, OrtApiTable, const OrtKernelInfo*, void**);
  OrtStatus* (*KernelComputeV2)(void*, OrtKernelContext*);
  void* InferOutputShapeFn;
  int (*GetStartVersion)(const struct OrtCustomOp*);
  int (*GetEndVersion)(const struct OrtCustomOp*);
  void* GetMayInplace;
  void* ReleaseMayInplace;
  void* GetAliasMap;
  void* ReleaseAliasMap;
} OrtCustomOp;

_Static_assert(sizeof(OrtCustomOp) == 208, "OrtCustomOp is 208 bytes on x86-64");

#endif
