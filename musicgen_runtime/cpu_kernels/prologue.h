/* What Int8BlockGemv may apply to its input rows before the product, so that the step graph needs no
   kernel of its own for it (each ONNX Runtime kernel cost ~10 us a call, mostly its dispatch onto the
   intra-op threads, against ~1 us for this work on two rows):

   PROLOGUE_GELU: gelu(x) = x/2 (1 + erf(x / sqrt 2)) (the MLP's activation, before fc2);
   PROLOGUE_SKIP_LAYER_NORM: s = x + skip (the residual stream, also an output), then
     LayerNorm(s) gamma + beta (SkipLayerNormalization with input, skip, gamma, beta). */
#ifndef MUSICGEN_PROLOGUE_H
#define MUSICGEN_PROLOGUE_H

enum { PROLOGUE_NONE = 0, PROLOGUE_GELU = 1, PROLOGUE_SKIP_LAYER_NORM = 2 };

/* out[i] = gelu(x[i]), n a multiple of 8; erf by Abramowitz and Stegun 7.1.26 (|error| <= 1.5e-7). */
void prologue_gelu(const float* x, float* out, long n);

/* One row of k (a multiple of 8): sum = x + skip; out = (sum - mean) / sqrt(var + epsilon) gamma + beta. */
void prologue_skip_layer_norm(const float* x, const float* skip, const float* gamma, const float* beta,
                              float epsilon, int k, float* sum, float* out);

#endif
