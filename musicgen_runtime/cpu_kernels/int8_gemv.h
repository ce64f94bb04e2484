/* Blockwise int8 matrix-vector product for decode steps of one or two rows (AVX2 + FMA).

   Y[m][n] = sum_k A[m][k] * W[n][k], W[n][k] = Q[n][k] * S[n][k / block].

   Q is packed in tiles of 4 output rows, so that one thread reads its outputs' weights as one
   sequential stream: tile t, chunk c (inputs 16c .. 16c + 15) is the 64 bytes
   Qp[(t * K/16 + c) * 64 + r * 16 + i] = Q[4t + r][16c + i]   (r < 4, i < 16; int8, no zero point),
   and the scales Sp[(t * K/block + b) * 4 + r] = S[4t + r][b]. Rows past N are padding (zeros).
   A is quantized to int16 per row and block before the product (15 bits, against the 8 of ORT's
   MatMulNBits at accuracy level 4), so the inner loop is integer multiply-adds of int16 pairs.

   Unpacked row-major weights read at about half the memory's rate on a 2-core AMD EPYC (Zen 2): the
   hardware prefetchers do not follow four 1 KB streams that change every tile. */
#ifndef MUSICGEN_INT8_GEMV_H
#define MUSICGEN_INT8_GEMV_H

#include <stddef.h>
#include <stdint.h>

/* Rows of A quantized for int8_gemv_tiles: a16 [M][K], scale [M][K / block]. */
typedef struct {
  int16_t* a16;
  float* scale;
  int rows, k, block;
} QuantRows;

/* Fills q (caller-owned buffers of M*K int16 and M*K/block floats) from A [M][K]. */
void int8_gemv_quantize(const float* a, int rows, int k, int block, QuantRows* q);

enum { EPILOGUE_NONE = 0, EPILOGUE_GELU = 1 };

/* Y [rows][n] for output tiles [t0, t1) (outputs 4*t0 .. min(4*t1, n) - 1), each output through the
   epilogue: EPILOGUE_GELU applies gelu(y) = y/2 (1 + erf(y / sqrt 2)) to each tile's outputs as they are
   made, while the next tile's weights stream in (as a kernel of its own, after the product, the GELU of
   musicgen-small's MLP took 7.7 us a layer on one thread). */
void int8_gemv_tiles(const QuantRows* a, const int8_t* qp, const float* sp, float* y, int n, int t0, int t1,
                     int epilogue);

#endif
