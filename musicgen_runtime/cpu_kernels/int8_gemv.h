/* Blockwise int8 matrix-vector product for decode steps of one or two rows (AVX2 + FMA).

   Y[m][n] = sum_k A[m][k] * W[n][k], W[n][k] = Q[n][k] * S[n][k / block].

   Q is packed in tiles of 8 outputs, each tile's weights one sequential run in the order the kernel reads
   them: pair c (inputs 2c, 2c + 1) of tile t is the 16 bytes
   Qp[(t * K/2 + c) * 16 + 2j + i] = Q[8t + j][2c + i]   (j < 8, i < 2; int8, no zero point),
   and the scales Sp[(t * K/block + b) * 8 + j] = S[8t + j][b]. Rows past N are padding (zeros).
   A is quantized to int16 per row and block before the product (15 bits, against the 8 of ORT's
   MatMulNBits at accuracy level 4), so the inner loop is integer multiply-adds of int16 pairs.

   Unpacked row-major weights read at about half the memory's rate on a 2-core AMD EPYC (Zen 2): the
   hardware prefetchers do not follow many 1 KB streams that change every tile. */
#ifndef MUSICGEN_INT8_GEMV_H
#define MUSICGEN_INT8_GEMV_H

#include <stddef.h>
#include <stdint.h>

#define TILE_OUTPUTS 8 /* outputs per packed tile */
#define STREAMS 3      /* tiles read side by side (2 to 4; int8_gemv.c says why 3) */
#define MAX_BLOCK 512  /* int32 sums of a block of int16 x int8 products stay below 2^31 */

/* Rows of A quantized for int8_gemv_tiles: a16 [M][K], scale [M][K / block]. */
typedef struct {
  int16_t* a16;
  float* scale;
  int rows, k, block;
} QuantRows;

/* Fills q (caller-owned buffers of M*K int16 and M*K/block floats) from A [M][K]. */
void int8_gemv_quantize(const float* a, int rows, int k, int block, QuantRows* q);

enum { EPILOGUE_NONE = 0, EPILOGUE_GELU = 1 };

/* Y [rows][n] for output tiles [t0, t1) (outputs 8*t0 .. min(8*t1, n) - 1), each output through the
   epilogue: EPILOGUE_GELU applies gelu(y) = y/2 (1 + erf(y / sqrt 2)) to the range's outputs once they are
   made, so each thread runs it over its own (as a kernel of its own, after the product, the GELU of
   musicgen-small's MLP took 7.7 us a layer on one thread). */
void int8_gemv_tiles(const QuantRows* a, const int8_t* qp, const float* sp, float* y, int n, int t0, int t1,
                     int epilogue);

#endif
