/*
 * ISA-specific micro-kernels of the packed FP4 GEMM (docs/numerics.md §11), the layers'
 * float32 transpose, and the AVX-512 arithmetic of Quartet's operand kernels (quest_avx512.c:
 * the forward QuEST).
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

/* One 32-row x 16-column unit of Quartet's backward operands (QuartetKernels.verticalUnit,
 * Sources/FP4Core/Kernels/QuartetGradientKernels.swift, is the reference it equals bit for bit):
 * column l < 16 of the tile S[i][l] = src[i * ld + l], i < 32, is one 32-group of the operand.
 *   x[i][l]  = (H32 · (signs[i] * S[i][l]))[i] * norm     (the Swift butterflies, stage by stage)
 *   amax[l]  = max_i |x[i][l]|;  scale = 2^floor(log2 amax) / 3  (ScaleRule.absmaxDiv3Scale)
 *   u[i][l]  = CounterRNG uniform of key + ((n0 + l) * rp + t0 + i + 1) * gamma  (wrapping)
 *   codes / x̂ = e2m1 stochastic rounding of x / scale with draw u (QuartetKernels.stochasticGrid)
 * Writes scales[l] (1 for a zero or non-finite group) and either, when codes is not NULL,
 *   codes[16 * j + l] = the e2m1 codes of rows 8j ..< 8j + 8 of column l (row 8j + m in bits
 *   4m ..< 4m + 4; a zero group: the sign codes of x; a non-finite group: 0), j < 4,
 * or else xhat[16 * i + l] = x̂ (a zero group: x * 0; a non-finite group: NaN).
 * Returns the mask of columns whose group held NaN or +-inf (bit l). Reads exactly 32 rows of
 * 16 floats. Every float operation is the Swift one in its order (no FMA). Needs
 * FP4ISA_AVX512DQ. */
uint32_t fp4isa_quartet_vertical_avx512(const float *src, int64_t ld, const float *signs, float norm,
                                        uint64_t key, uint64_t rp, uint64_t n0, uint64_t t0,
                                        uint32_t *codes, float *scales, float *xhat);

/* One row of Quartet's backward operand Q_b(A·H_b) along the rows (QuartetKernels.gradientRows
 * with quantizeGradientBlock, the reference it equals bit for bit): the row src[0 ..< cols] in
 * 32-blocks j < ceil(cols / 32), the last one zero-padded (nothing past cols is read):
 *   x        = Hadamard.rotate32(block j, signs[0 ..< 32], norm)   (the Swift butterflies)
 *   scale    = 2^floor(log2 amax) / 3  (ScaleRule.absmaxDiv3Scale of the block's amax)
 *   u[k]     = CounterRNG uniform of key + (index + 32j + k + 1) * gamma  (wrapping)
 *   codes / x̂ = e2m1 stochastic rounding of x / scale with draw u[k]
 * When codes is not NULL: codes[16j ..< 16j + 16] = the block's 32 codes, element 2i in the low
 * nibble of byte i, and scales[j] = scale (a zero group: sign codes of x and scale 1; a
 * non-finite group: zero bytes and scale 1). Else xhat[32j ..< 32j + 32] = x̂ (a zero group:
 * x * 0; a non-finite group: NaN). Returns the number of blocks that held NaN or +-inf. Needs
 * FP4ISA_AVX512DQ. */
uint32_t fp4isa_quartet_rows_avx512(const float *src, int64_t cols, const float *signs, float norm,
                                    uint64_t key, uint64_t index, uint8_t *codes, float *scales, float *xhat);

/* QuEST of `count` 32-blocks, Quartet's forward quantizer (QuartetKernels.quest / quest4 of
 * Hadamard.rotate32 without signs, Sources/FP4Core/Kernels/QuestKernels.swift, is the reference
 * it equals bit for bit). Block k is src[k * ld ..< k * ld + 32] (ld a multiple of 32), f = k * ld
 * its flat index:
 *   x      = Hadamard.rotate32(block, no signs, norm)   (the Swift butterflies)
 *   σ      = population std of x from float64 sums of x and x² in element order
 *   scale  = 2^min(floor(log2((2.92247856 / 6)·σ + 1e-8)), 127)   (ScaleRule.questScale)
 *   q      = e2m1 round-to-nearest-even of x / scale, saturating at 6;  x̂ = q · scale
 *   mask   = bit i set when |x_i / scale| < 6
 * A block of (signed) zeros: scale 1, the sign codes of x, x̂ = x * 0, mask all ones. Outputs,
 * each skipped when NULL: codes[f/2 ..< f/2 + 16] (element 2i in the low nibble of byte i),
 * scales[f / 32], mask[f/8 ..< f/8 + 4] (a little-endian word, bit i = element i) and
 * xhat[k * ldx ..< k * ldx + 32]. A block holding NaN or +-inf writes zeros to its x̂ and nothing
 * else. Returns the number of such blocks. Reads exactly the count blocks. The float operations
 * are the Swift ones in their order, or ones that round the same real value once, so the bits
 * are the same (quest_avx512.c says why for each): x / scale as x · 2^-e, sq + x² as an FMA (x² is
 * exact in float64), e2m1's min(|v|, 6) by vrangeps and its rounding constant carrying the code
 * (checked on every finite float32 v); the zero and non-finite tests read the sum of squares.
 * Needs FP4ISA_AVX512DQ. */
uint32_t fp4isa_quest_blocks_avx512(const float *src, int64_t ld, int64_t count, float norm, uint8_t *codes,
                                    float *scales, uint8_t *mask, float *xhat, int64_t ldx);

#ifdef __cplusplus
}
#endif
#endif
