/*
 * ISA-specific micro-kernels of the packed FP4 GEMM (docs/numerics.md §11), and the
 * layers' float32 transpose.
 *
 * Swift cannot enable CPU features per function, so the few loops that need AVX-512 VNNI or
 * AVX2 intrinsics live here, each compiled for its instruction set with a per-function
 * `target` attribute; the rest of the library stays portable. Packing, blocking, threading
 * and the choice of kernel are in Swift (Sources/FP4Core/Kernels/PackedGEMM.swift), which
 * calls a kernel only after fp4isa_cpu_has() said the CPU runs it.
 *
 * One call computes a tile C[mr, nr] (mr <= MR, nr <= NR) over all G scale groups along K:
 *
 *   acc_g[i][j] = corr[g][j] + sum over the group's quads q and lanes t of
 *                 a[g, q][i][t] * b[g, q][j][t]          (uint8 x int8, exact in int32)
 *   f[i][j]     = fma(float(acc_g[i][j]), sa[g][i] * sb[g][j], f[i][j])   for g = 0, 1, ...
 *   c[i][j]     = (f[i][j] * post) / div
 *
 * Panels: a is [G * quads][MR][4] bytes, b is [G * quads][NR][4] bytes, corr [G][NR] int32,
 * sa [G][MR] and sb [G][NR] float32. Every kernel and the portable Swift one do the same
 * float operations in the same order, so all paths give bit-identical results.
 */
#ifndef FP4ISA_H
#define FP4ISA_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Instruction sets a kernel may need. */
#define FP4ISA_AVX2 1        /* AVX2 + FMA */
#define FP4ISA_AVX512VNNI 2  /* AVX-512 F, BW, VL and VNNI */
#define FP4ISA_AVX512DQ 3    /* AVX-512 F, DQ and VL (64-bit lane multiplies) */

/* 1 when this CPU (and the OS's saved register state) supports `isa`, else 0. */
int32_t fp4isa_cpu_has(int32_t isa);

/* Tile shapes of the kernels (rows of A, columns of B per call). */
#define FP4ISA_AVX512VNNI_MR 6
#define FP4ISA_AVX512VNNI_NR 32
#define FP4ISA_AVX2_MR 4
#define FP4ISA_AVX2_NR 16

void fp4isa_gemm_tile_avx512vnni(const uint8_t *a, const int8_t *b, const int32_t *corr,
                                 const float *sa, const float *sb, int64_t groups, int64_t quads,
                                 float post, float div, float *c, int64_t ldc, int64_t mr, int64_t nr);

void fp4isa_gemm_tile_avx2(const uint8_t *a, const int8_t *b, const int32_t *corr,
                           const float *sa, const float *sb, int64_t groups, int64_t quads,
                           float post, float div, float *c, int64_t ldc, int64_t mr, int64_t nr);

/* b[c * ldb + r] = a[r * lda + c] for r < rows, c < cols (the layers' float32 transposes:
 * pure data movement, so every path gives the same bits). Needs FP4ISA_AVX2. */
void fp4isa_transpose_f32_avx2(const float *a, int64_t lda, float *b, int64_t ldb, int64_t rows, int64_t cols);

/* Uniform draws of the counter-based generator (docs/numerics.md, stochastic rounding:
 * SplitMix64's mix, top 24 bits, times 2^-24) for `rows` x 8 counters:
 *   out[8 * i + l] = uniform(base[l] + i * step)   (wrapping uint64 arithmetic).
 * Pure integer arithmetic, so every path gives the same bits; AVX-512 DQ multiplies 64-bit
 * lanes in one instruction where AVX2 needs three 32-bit ones. Needs FP4ISA_AVX512DQ. */
void fp4isa_counter_uniforms_avx512dq(const uint64_t *base, uint64_t step, int64_t rows, float *out);

#ifdef __cplusplus
}
#endif
#endif
