/* What Int8BlockGemv may apply to its input rows before the product, so that the step graph needs no
   kernel of its own for it (each ONNX Runtime kernel cost ~10 us a call, mostly its dispatch onto the
   intra-op threads, against ~1 us for this work on two rows):

   PROLOGUE_SKIP_LAYER_NORM: s = x + skip (the residual stream, also an output), then
     LayerNorm(s) gamma + beta (SkipLayerNormalization with input, skip, gamma, beta).
   (1 is not a prologue: the GELU runs as the product's epilogue, int8_gemv.h.) */
#ifndef MUSICGEN_PROLOGUE_H
#define MUSICGEN_PROLOGUE_H

enum { PROLOGUE_NONE = 0, PROLOGUE_SKIP_LAYER_NORM = 2 };

/* One row of k (a multiple of 8): sum = x + skip; out = (sum - mean) / sqrt(var + epsilon) gamma + beta. */
void prologue_skip_layer_norm(const float* x, const float* skip, const float* gamma, const float* beta,
                              float epsilon, int k, float* sum, float* out);

#endif
