/*
 * lk_qdot.h — integer dot products of ggml-quantized weight rows with quantized activations.
 *
 * Internal to LoRAKit (not part of the public C API). These few kernels are written in C with
 * intrinsics because they need widening integer multiply-adds (u8×s8 → s32: vpdpbusd with AVX-VNNI or
 * AVX512-VNNI, vpmaddubsw + vpmaddwd with plain AVX2) that Swift's SIMD types cannot express.
 *
 * Activations: x is cut into 32-value blocks; block b is stored as integers q with x ≈ dx[b]·q,
 * dx[b] = max|x_b| / L, q = round-to-nearest-even(x / dx[b]) (so |q| ≤ L), and xs[b] = dx[b]·Σq (the block
 * sum of the quantized x, used by the offset term of q4_0 and q4_1). Two widths:
 *   int8 (wide = 0): L = 127, q stored as one int8 (llama.cpp's q8_1);
 *   wide (wide = 1): L = 16256 = 127·128, q stored as two int8 digits q = 128·hi + lo, hi in −127..127,
 *                    lo in 0..127; the kernels multiply both digits (twice the integer work) and combine.
 * A block holding a NaN or an infinity gets dx = xs = NaN (and q = 0), so the outputs become NaN.
 * Blocks are stored in pairs (b = 2p, 2p+1), in the order the kernels read them; per pair:
 *   xq[S·p ..< S·p+64]       = hi of x_b[0..15], x_b+1[0..15], x_b[16..31], x_b+1[16..31]   (int8)
 *   xq[S·p+64 ..< S·p+128]   = lo in the same order (wide only)
 *   xf[4p ..< 4p+4]          = dx[b], xs[b], dx[b+1], xs[b+1]                                (f32)
 * with S = 64 (int8) or 128 (wide). An odd last block is paired with a zero block (q = 0, dx = xs = 0).
 *
 * Result of one weight row (d, m: the weight block's f16 scale and offset; for q4_0 m = −8d, for q8_0
 * m = 0): per pair, 8 int32 lanes I (lanes 0–3: partial sums of block b, 4–7: of block b+1, each lane
 * Σ w·q over 4 + 4 fixed positions, exact: |I| ≤ 8·128·16256 < 2²⁴), acc[j] = fma(f32(I[j]), d·dx, acc[j])
 * with the block's d·dx, and bias[k] += (d, m)·(dx, xs) in 4 lanes; finally
 *   y = ((acc0+acc4) + (acc2+acc6)) + ((acc1+acc5) + (acc3+acc7)) + (bias1 + bias3)
 * (q4_0: + −8·(bias1 + bias3) with m replaced by d; q8_0: no bias). Every path (scalar, AVX2, AVX-VNNI,
 * AVX512-VNNI) computes exactly these operations — the integer sums are exact (no saturation in
 * vpmaddubsw: each pair of products is at most 2·128·127 < 2¹⁵) — so all paths give bitwise the same y,
 * and a row's result does not depend on which rows are processed with it (so not on the thread count).
 */
#ifndef LK_QDOT_H
#define LK_QDOT_H
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Internal functions: linked into liblorakit.so but not exported from it (hidden visibility), so the
 * library's lk_* dynamic symbols are exactly the functions of lorakit.h (Tests/abi checks them against
 * `nm -D`). Swift code in the same library still calls them directly. */
#pragma GCC visibility push(hidden)

/* Kernel paths. LK_QDOT_AUTO is the default path: the fastest one this CPU supports, unless the
 * environment variable LORAKIT_QDOT (scalar | avx2 | avxvnni | avx512vnni) names another supported path. */
enum {
    LK_QDOT_AUTO = 0,
    LK_QDOT_SCALAR = 1,      /* portable C, every architecture */
    LK_QDOT_AVX2 = 2,        /* vpmaddubsw + vpmaddwd (x86_64 with AVX2, FMA, F16C) */
    LK_QDOT_AVXVNNI = 3,     /* vpdpbusd, VEX encoding (Alder Lake, Sapphire Rapids, Zen 5) */
    LK_QDOT_AVX512VNNI = 4,  /* vpdpbusd on 256-bit registers, EVEX (Ice Lake, Cascade Lake, Zen 4) */
};

/* 1 if `path` is compiled in and this CPU (and OS) supports it; LK_QDOT_AUTO is always supported. */
int32_t lk_qdot_path_supported(int32_t path);

/* The path LK_QDOT_AUTO stands for (never LK_QDOT_AUTO itself). */
int32_t lk_qdot_default_path(void);

/* Short name of a path ("scalar", "avx2", "avxvnni", "avx512vnni", "auto"), or "unknown". */
const char *lk_qdot_path_name(int32_t path);

/* Quantize n_blocks·32 floats as described above. xq: (wide ? 128 : 64)·⌈n_blocks/2⌉ bytes;
 * xf: 4·⌈n_blocks/2⌉ floats. The result does not depend on `path` (an unsupported path runs the scalar
 * code). */
void lk_quantize_x8(int32_t path, int32_t wide, const float *x, int64_t n_blocks, int8_t *xq, float *xf);

/* y[r] = the dot product of weight row r with the quantized x (of the same `wide`), for n_rows rows of
 * n_blocks blocks each, consecutive rows row_stride bytes apart. type: 0 = q8_0, 1 = q4_0, 2 = q4_1. An
 * unsupported path runs the scalar code (same results). */
void lk_qdot_rows(int32_t path, int32_t wide, int32_t type, const void *w, size_t row_stride, int64_t n_rows,
                  int64_t n_blocks, const int8_t *xq, const float *xf, float *y);

/* Several x rows against the same weight rows, each weight block read and unpacked once (AVX512-VNNI on
 * 512-bit registers, two x rows per register). 1 if this kernel serves `path` on this CPU (the path
 * resolves to avxvnni or avx512vnni and the CPU has AVX512-VNNI and AVX512BW); otherwise callers use
 * lk_qdot_rows per x row (same results). */
int32_t lk_qdot_multi_supported(int32_t path);

/* Interleave n_x quantized x rows (each as lk_quantize_x8 wrote it: ⌈n_blocks/2⌉ pairs, consecutive) for
 * lk_qdot_rows_multi: xi gets ⌈n_x/2⌉·⌈n_blocks/2⌉·2·(wide ? 128 : 64) bytes, xfi ⌈n_x/2⌉·⌈n_blocks/2⌉·8
 * floats (an odd last row is paired with zeros). */
void lk_qdot_interleave(int32_t wide, const int8_t *xq, const float *xf, int64_t n_x, int64_t n_blocks, int8_t *xi,
                        float *xfi);

/* y[j·ldy + r] = lk_qdot_rows' y[r] for x row j < n_x (1...8), from the interleaved rows; bitwise the
 * same values. Only when lk_qdot_multi_supported(path) (otherwise it does nothing). */
void lk_qdot_rows_multi(int32_t path, int32_t wide, int32_t type, const void *w, size_t row_stride, int64_t n_rows,
                        int64_t n_blocks, const int8_t *xi, const float *xfi, int64_t n_x, float *y, int64_t ldy);

/* Several x rows with x as int16 ("x16": no digit split; vpmaddwd with AVX2, vpdpwssd with AVX512-VNNI;
 * layout in qdot.c). 1 if lk_qdot_rows_x16 serves `path` on this CPU (it resolves to avx2, avxvnni or
 * avx512vnni); otherwise callers use lk_qdot_rows per x row (same results). */
int32_t lk_qdot_x16_supported(int32_t path);

/* Quantize n_x ≤ 8 rows of n_blocks·32 floats (`ldx` apart) exactly as lk_quantize_x8 does (same q, dx, xs)
 * into the x16 layout: xi ⌈n_x/2⌉·⌈n_blocks/2⌉·128 int16, xd ⌈n_x/2⌉·⌈n_blocks/2⌉·16 floats,
 * xs ⌈n_blocks/2⌉·16 floats. Only when lk_qdot_x16_supported(path). */
void lk_quantize_x16(int32_t path, int32_t wide, const float *x, int64_t ldx, int64_t n_x, int64_t n_blocks,
                     int16_t *xi, float *xd, float *xs);

/* y[j·ldy + r] = lk_qdot_rows' y[r] for x row j < n_x (1...8) quantized by lk_quantize_x16 (with the same
 * `wide`); bitwise the same values. Only when lk_qdot_x16_supported(path) (otherwise it does nothing). */
void lk_qdot_rows_x16(int32_t path, int32_t type, const void *w, size_t row_stride, int64_t n_rows, int64_t n_blocks,
                      const int16_t *xi, const float *xd, const float *xs, int64_t n_x, float *y, int64_t ldy);

#pragma GCC visibility pop

#ifdef __cplusplus
}
#endif
#endif
