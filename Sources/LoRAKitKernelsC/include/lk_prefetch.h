/*
 * lk_prefetch.h — software prefetch for the Swift kernels (internal to LoRAKit).
 *
 * Swift has no prefetch intrinsic; these static inline functions are inlined into the Swift callers.
 * A prefetch is only a hint: it never faults and never changes a result.
 */
#ifndef LK_PREFETCH_H
#define LK_PREFETCH_H

/* Bring the cache line holding p into all cache levels, for writing (the GEMM's C tile, which is
 * read and rewritten after the tile's K loop). */
static inline __attribute__((always_inline)) void lk_prefetch_write(const void *p) {
    __builtin_prefetch(p, 1, 3);
}

#endif
