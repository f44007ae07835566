/*
 * lk_qdot.h — integer dot products of ggml-quantized weight rows with int16-quantized activations.
 *
 * Internal to LoRAKit (not part of the public C API). These few kernels are written in C with
 * intrinsics because they need the widening integer multiply-add instructions (vpmaddwd) that Swift's
 * SIMD types cannot express: with them the decode mat-vec reads weights at memory speed.
 *
 * Activations: x is cut into 32-value blocks; block b is stored as int16 xq[32b .. 32b+31] with
 * x ≈ dx[b]·xq (dx[b] = max|x_b| / 32767, round to nearest even) and xs[b] = Σ x over the block (in f32,
 * used by the offset term of q4_0/q4_1). Every row's result is reduced block by block in a fixed order,
 * so results do not depend on how rows are split between threads.
 */
#ifndef LK_QDOT_H
#define LK_QDOT_H
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Quantize n_blocks·32 floats to int16 blocks as described above. */
void lk_quantize_x16(const float *x, int64_t n_blocks, int16_t *xq, float *dx, float *xs);

/* y[r] = Σ_b (dot of weight row r's block b with xq block b), for n_rows rows of n_blocks blocks each,
 * consecutive rows row_stride bytes apart. type: 0 = q8_0, 1 = q4_0, 2 = q4_1. */
void lk_qdot_rows(int32_t type, const void *w, size_t row_stride, int64_t n_rows, int64_t n_blocks,
                  const int16_t *xq, const float *dx, const float *xs, float *y);

#ifdef __cplusplus
}
#endif
#endif
