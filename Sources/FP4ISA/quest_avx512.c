// The AVX-512 form of Quartet's forward QuEST kernel. See include/fp4isa.h for the contract;
// QuartetKernels.quest / quest4 of Hadamard.rotate32 (Sources/FP4Core/Kernels/QuestKernels.swift)
// is the reference it equals bit for bit. Float operations are Swift's in its order, with no
// contraction; where another operation is used it rounds the same real value once (said where
// it happens), and QuestWideTests compares the bits.
//
// Blocks go 16 at a time, transposed so that a vector holds element e of 8 or 16 blocks (lane b
// = block b): the butterflies are plain vector adds, a zmm of doubles holds 8 blocks' float64
// sums (each block's in element order; four independent chains per batch), and the scale, the
// rounding and the clip mask are per lane. Phase 1 (qq_prepare: load, transpose, rotate, sums,
// scale) of batch i + 1 runs before phase 2 (qq_quantize: e2m1, pack, store) of batch i, so the
// sums' long dependency chains can overlap the previous batch's rounding.
#include "fp4isa.h"

#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>

#define QQ_TARGET __attribute__((target("avx2,fma,avx512f,avx512dq,avx512vl")))

enum { QQ_BATCH = 16, QQ_HALF = 8, QQ_B = 32 };

// One batch between the phases.
typedef struct {
    float x[QQ_B][QQ_BATCH];   // x[e][b]: element e of rotated block b
    uint32_t s[QQ_BATCH];      // scale bits 2^e of each block
    uint32_t inv[QQ_BATCH];    // 2^-e
    uint32_t scale[QQ_BATCH];  // the scale to store (1 for a zero block)
    uint32_t finite;           // bit b: block b is finite
    int64_t n;                 // blocks in the batch
} __attribute__((aligned(64))) qq_batch;

static const float qq_zeros[QQ_B] __attribute__((aligned(64)));  // the rows past a partial batch

// Element e (0 ..< 8) of rows p[0 ..< 8] as out[e] (lane b = p[b][e]): 4×4 transposes inside
// the 128-bit lanes of [row b | row b + 4].
QQ_TARGET __attribute__((always_inline)) static inline void qq_load_tile(const float *const *p, int64_t off,
                                                                        __m256 *out) {
#pragma clang loop unroll(full)
    for (int h = 0; h < 2; h++) {  // columns 4h ..< 4h + 4
        __m256 r[4];
#pragma clang loop unroll(full)
        for (int b = 0; b < 4; b++)
            r[b] = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(p[b] + off + 4 * h)),
                                        _mm_loadu_ps(p[b + 4] + off + 4 * h), 1);
        const __m256 a0 = _mm256_unpacklo_ps(r[0], r[1]), a1 = _mm256_unpackhi_ps(r[0], r[1]);
        const __m256 a2 = _mm256_unpacklo_ps(r[2], r[3]), a3 = _mm256_unpackhi_ps(r[2], r[3]);
        out[4 * h + 0] = _mm256_shuffle_ps(a0, a2, 0x44);
        out[4 * h + 1] = _mm256_shuffle_ps(a0, a2, 0xEE);
        out[4 * h + 2] = _mm256_shuffle_ps(a1, a3, 0x44);
        out[4 * h + 3] = _mm256_shuffle_ps(a1, a3, 0xEE);
    }
}

// Hadamard.rotate32 of the 8 blocks p[b] into x[e][off + b].
QQ_TARGET __attribute__((always_inline)) static inline void qq_rotate(const float *const *p, float norm,
                                                                     float (*x)[QQ_BATCH], int off) {
#pragma clang fp contract(off)
    __m256 v[QQ_B];
#pragma clang loop unroll(full)
    for (int t = 0; t < QQ_B / 8; t++) qq_load_tile(p, 8 * t, v + 8 * t);
    // Stage h pairs elements k, k + h into (a + c, a − c) (h8's c + a and a + (−c) are the same
    // IEEE results), then · norm.
#pragma clang loop unroll(full)
    for (int h = 1; h < QQ_B; h *= 2)
#pragma clang loop unroll(full)
        for (int j = 0; j < QQ_B; j += 2 * h)
#pragma clang loop unroll(full)
            for (int k = j; k < j + h; k++) {
                const __m256 a = v[k], c = v[k + h];
                v[k] = _mm256_add_ps(a, c);
                v[k + h] = _mm256_sub_ps(a, c);
            }
    const __m256 nv = _mm256_set1_ps(norm);
#pragma clang loop unroll(full)
    for (int e = 0; e < QQ_B; e++) _mm256_store_ps(x[e] + off, _mm256_mul_ps(v[e], nv));
}

// The scale bits (ScaleRule.questScale(std:fmax: 6)) of 8 blocks from their float64 sums.
QQ_TARGET __attribute__((always_inline)) static inline __m256i qq_exponent(__m512d sum, __m512d sq) {
#pragma clang fp contract(off)
    const __m512d n32 = _mm512_set1_pd(32.0), mu = _mm512_div_pd(sum, n32);
    const __m512d var = _mm512_max_pd(_mm512_sub_pd(_mm512_div_pd(sq, n32), _mm512_mul_pd(mu, mu)), _mm512_setzero_pd());
    // s0 = (2.92247856 / 6)·σ + 1e-8, s = 2^min(e, 127) with e the unbiased exponent field of s0
    // (s0 >= 1e-8 is normal; an inf or NaN s0 has field 2047, which gives 2^127 as Swift's
    // isFinite guard does).
    const __m512d s0 = _mm512_add_pd(_mm512_mul_pd(_mm512_set1_pd(2.92247856 / 6.0), _mm512_sqrt_pd(var)),
                                     _mm512_set1_pd(1e-8));
    const __m512i e64 = _mm512_min_epi64(
        _mm512_sub_epi64(_mm512_and_si512(_mm512_srli_epi64(_mm512_castpd_si512(s0), 52), _mm512_set1_epi64(0x7FF)),
                         _mm512_set1_epi64(1023)),
        _mm512_set1_epi64(127));
    return _mm512_cvtepi64_epi32(e64);
}

// Phase 1 for the n <= 16 blocks at src + b·ld.
QQ_TARGET __attribute__((always_inline)) static inline void qq_prepare(const float *src, int64_t ld, int64_t n,
                                                                      float norm, qq_batch *out) {
#pragma clang fp contract(off)
#pragma clang loop unroll(full)
    for (int h = 0; h < 2; h++) {
        const float *p[QQ_HALF];
#pragma clang loop unroll(full)
        for (int b = 0; b < QQ_HALF; b++) {
            const int64_t k = QQ_HALF * h + b;
            p[b] = k < n ? src + k * ld : qq_zeros;  // read nothing past the last block
        }
        qq_rotate(p, norm, out->x, QQ_HALF * h);
    }
    // Population std in float64 (QuartetKernels.quest4 / std): each block's sums in element
    // order, lane b block b (two zmm of 8, four independent chains). sq += d·d as one FMA: d·d is
    // exact in float64 (a float's 24-bit significand squared, exponents within range), so the
    // FMA rounds the same sum once, as the add does.
    __m512d sum0 = _mm512_setzero_pd(), sq0 = _mm512_setzero_pd(), sum1 = _mm512_setzero_pd(), sq1 = _mm512_setzero_pd();
#pragma clang loop unroll(full)
    for (int e = 0; e < QQ_B; e++) {
        const __m512d d0 = _mm512_cvtps_pd(_mm256_load_ps(out->x[e])), d1 = _mm512_cvtps_pd(_mm256_load_ps(out->x[e] + 8));
        sum0 = _mm512_add_pd(sum0, d0);
        sq0 = _mm512_fmadd_pd(d0, d0, sq0);
        sum1 = _mm512_add_pd(sum1, d1);
        sq1 = _mm512_fmadd_pd(d1, d1, sq1);
    }
    const __m512i e = _mm512_inserti64x4(_mm512_castsi256_si512(qq_exponent(sum0, sq0)), qq_exponent(sum1, sq1), 1);
    // x / s = x · 2^−e exactly (both round the same real value; checked for every float32 x and
    // every e the scale can take): a finite block has σ <= max|x| < 2^128, so e <= 126 and 2^−e
    // is a normal float.
    const __m512i s = _mm512_slli_epi32(_mm512_add_epi32(e, _mm512_set1_epi32(127)), 23);
    _mm512_store_si512(out->s, s);
    _mm512_store_si512(out->inv, _mm512_slli_epi32(_mm512_sub_epi32(_mm512_set1_epi32(127), e), 23));
    // Swift's amax tests from the sum of squares: amax = 0 (all ±0) iff sq = 0 (a nonzero
    // float's square is >= 2^−298, a normal double); amax >= inf (NaN or ±inf) iff sq is not
    // finite (32 finite squares stay below 2^261). A zero block stores scale 1; its codes, mask
    // and x̂ come out of the rounding as Swift's zero path makes them (±0 · 2^−e = ±0: sign
    // codes, |v| < 6, ±0 · s = x · 0).
    const __m512d inf = _mm512_set1_pd(__builtin_inf());
    const __mmask16 zero = (__mmask16)(_mm512_cmp_pd_mask(sq0, _mm512_setzero_pd(), _CMP_EQ_OQ) |
                                       _mm512_cmp_pd_mask(sq1, _mm512_setzero_pd(), _CMP_EQ_OQ) << 8);
    _mm512_store_si512(out->scale, _mm512_mask_blend_epi32(zero, s, _mm512_set1_epi32(0x3F800000)));
    const uint32_t finite = (uint32_t)_mm512_cmp_pd_mask(sq0, inf, _CMP_LT_OQ) |
                            (uint32_t)_mm512_cmp_pd_mask(sq1, inf, _CMP_LT_OQ) << 8;
    out->finite = finite & ((1u << n) - 1);
    out->n = n;
}

// Rows b ..< 8 of the 8 × 8 tile c (c[i] = element i of 8 blocks) as r[b].
QQ_TARGET __attribute__((always_inline)) static inline void qq_untranspose(const __m256 *c, __m256 *r) {
    const __m256 t0 = _mm256_unpacklo_ps(c[0], c[1]), t1 = _mm256_unpackhi_ps(c[0], c[1]);
    const __m256 t2 = _mm256_unpacklo_ps(c[2], c[3]), t3 = _mm256_unpackhi_ps(c[2], c[3]);
    const __m256 t4 = _mm256_unpacklo_ps(c[4], c[5]), t5 = _mm256_unpackhi_ps(c[4], c[5]);
    const __m256 t6 = _mm256_unpacklo_ps(c[6], c[7]), t7 = _mm256_unpackhi_ps(c[6], c[7]);
    const __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    const __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    const __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    const __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    r[0] = _mm256_permute2f128_ps(s0, s4, 0x20);
    r[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
    r[2] = _mm256_permute2f128_ps(s2, s6, 0x20);
    r[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
    r[4] = _mm256_permute2f128_ps(s0, s4, 0x31);
    r[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
    r[6] = _mm256_permute2f128_ps(s2, s6, 0x31);
    r[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
}

// Phase 2: QuartetKernels.quest(x, std:) of the batch's blocks (k0 + b, b < n) into the outputs.
// Returns the number of non-finite blocks.
QQ_TARGET __attribute__((always_inline)) static inline uint32_t
qq_quantize(const qq_batch *in, int64_t k0, int64_t ld, uint8_t *codes, float *scales, uint8_t *mask, float *xhat,
            int64_t ldx, const int emit_codes, const int emit_mask, const int emit_xhat) {
#pragma clang fp contract(off)
    const int64_t n = in->n;
    const uint32_t finite = in->finite;
    const int contiguous = ld == QQ_B;
    const __m512 s = _mm512_load_ps(in->s), inv = _mm512_load_ps(in->inv);
    const __m512i six = _mm512_set1_epi32(0x40C00000), one = _mm512_set1_epi32(0x3F800000);
    const __m512i sign_mask = _mm512_set1_epi32((int)0x80000000u);
    // E2M1Kernel.encode with v = x · 2^−e: a = min(|v|, 6), binade e = max(floor(log2 a), 0),
    // t = a + m rounds a to the binade's quantum 2^(e−1), ties to even. Swift's m is 2^(e + 22);
    // this one adds 2e + 8·sign(v) quanta (m's mantissa bits are zero there, and an even count of
    // quanta keeps the parity the tie looks at, so t rounds the same and stays in m's binade):
    // the low nibble of t is then the code k + 2e | sign << 3, and t − m the same k quanta.
    // (Codes, grid values and |v| < 6 equal Swift's for every finite float32 v: checked
    // exhaustively when this was written.)
    // Indexed by the low 4 bits of max(a, 1)'s biased exponent: 127 (e = 0), 128, 129.
    const __m512i magic = _mm512_setr_epi32(0x4B000000 + 2, 0x4B800000 + 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                                            0x4A800000);
    __m512i words[4], inside = _mm512_setzero_si512();
#pragma clang loop unroll(full)
    for (int t = 0; t < QQ_B / 8; t++) {
        __m512i w = _mm512_setzero_si512();
        __m512 q[8];
#pragma clang loop unroll(full)
        for (int i = 0; i < 8; i++) {
            const int e = 8 * t + i;
            const __m512 v = _mm512_mul_ps(_mm512_load_ps(in->x[e]), inv);
            const __m512i vb = _mm512_castps_si512(v);
            // min(|v|, 6) with the sign cleared (vrangeps: min-abs, sign 0); for a finite v the
            // same bits as Swift's min on |v|'s bits, and a < 6 exactly when |v| < 6.
            const __m512i a = _mm512_castps_si512(_mm512_range_ps(v, _mm512_castsi512_ps(six), 0x0A));
            const __m512i m0 = _mm512_permutexvar_epi32(_mm512_srli_epi32(_mm512_max_epu32(a, one), 23), magic);
            // m = m0 | (sign → mantissa bit 3): ternary logic A | (B & C) = 0xF8.
            const __m512i m = _mm512_ternarylogic_epi32(m0, _mm512_srli_epi32(vb, 28), _mm512_set1_epi32(8), 0xF8);
            const __m512 tv = _mm512_add_ps(_mm512_castsi512_ps(a), _mm512_castsi512_ps(m));
            if (emit_codes)
                w = _mm512_ternarylogic_epi32(w, _mm512_slli_epi32(_mm512_castps_si512(tv), 4 * i),
                                              _mm512_set1_epi32((int)(15u << (4 * i))), 0xF8);
            if (emit_xhat) {
                const __m512 mag = _mm512_sub_ps(tv, _mm512_castsi512_ps(m));
                const __m512 qs = _mm512_castsi512_ps(
                    _mm512_ternarylogic_epi32(_mm512_castps_si512(mag), vb, sign_mask, 0xF8));
                q[i] = _mm512_mul_ps(qs, s);
            }
            if (emit_mask)
                inside = _mm512_mask_or_epi32(inside, _mm512_cmplt_epu32_mask(a, six), inside,
                                              _mm512_set1_epi32((int)(1u << e)));
        }
        words[t] = w;
        if (emit_xhat) {
#pragma clang loop unroll(full)
            for (int h = 0; h < 2; h++) {
                __m256 c[8], r[8];
#pragma clang loop unroll(full)
                for (int i = 0; i < 8; i++) c[i] = h ? _mm512_extractf32x8_ps(q[i], 1) : _mm512_castps512_ps256(q[i]);
                qq_untranspose(c, r);
#pragma clang loop unroll(full)
                for (int b = 0; b < QQ_HALF; b++) {
                    const int k = QQ_HALF * h + b;
                    // A non-finite block's x̂ is zero.
                    if (k < n) _mm256_storeu_ps(xhat + (k0 + k) * ldx + 8 * t, (finite >> k) & 1 ? r[b] : _mm256_setzero_ps());
                }
            }
        }
    }
    // Outputs of finite blocks only: masked stores where the blocks' outputs are contiguous.
    const __mmask16 keep = (__mmask16)finite;
    if (scales) {
        if (contiguous) {
            _mm512_mask_storeu_ps(scales + k0, keep, _mm512_load_ps(in->scale));
        } else {
            for (int b = 0; b < n; b++)
                if ((finite >> b) & 1) memcpy(scales + (k0 + b) * ld / QQ_B, &in->scale[b], 4);
        }
    }
    if (emit_mask) {
        if (contiguous) {
            _mm512_mask_storeu_epi32(mask + 4 * k0, keep, inside);
        } else {
            uint32_t m[QQ_BATCH];
            _mm512_storeu_si512(m, inside);
            for (int b = 0; b < n; b++)
                if ((finite >> b) & 1) memcpy(mask + (k0 + b) * ld / 8, &m[b], 4);  // little-endian
        }
    }
    if (emit_codes) {
        // words[j] lane b: word j of block b; block b's 16 bytes are its words 0 ..< 4. Within
        // each 128-bit lane L: u[r] holds block 4L + r.
        const __m512i t0 = _mm512_unpacklo_epi32(words[0], words[1]), t1 = _mm512_unpackhi_epi32(words[0], words[1]);
        const __m512i t2 = _mm512_unpacklo_epi32(words[2], words[3]), t3 = _mm512_unpackhi_epi32(words[2], words[3]);
        const __m512i u0 = _mm512_unpacklo_epi64(t0, t2), u1 = _mm512_unpackhi_epi64(t0, t2);
        const __m512i u2 = _mm512_unpacklo_epi64(t1, t3), u3 = _mm512_unpackhi_epi64(t1, t3);
        // A 4 × 4 transpose of 128-bit lanes: out[L] = blocks 4L ..< 4L + 4.
        const __m512i a0 = _mm512_shuffle_i32x4(u0, u1, 0x44), a1 = _mm512_shuffle_i32x4(u0, u1, 0xEE);
        const __m512i a2 = _mm512_shuffle_i32x4(u2, u3, 0x44), a3 = _mm512_shuffle_i32x4(u2, u3, 0xEE);
        __m512i out[4];
        out[0] = _mm512_shuffle_i32x4(a0, a2, 0x88);
        out[1] = _mm512_shuffle_i32x4(a0, a2, 0xDD);
        out[2] = _mm512_shuffle_i32x4(a1, a3, 0x88);
        out[3] = _mm512_shuffle_i32x4(a1, a3, 0xDD);
        if (contiguous) {
            // Each block is 4 dword lanes: spread the finite bits.
            uint64_t k = 0;
            for (int b = 0; b < QQ_BATCH; b++)
                if ((finite >> b) & 1) k |= (uint64_t)0xF << (4 * b);
#pragma clang loop unroll(full)
            for (int L = 0; L < 4; L++) _mm512_mask_storeu_epi32(codes + 16 * k0 + 64 * L, (__mmask16)(k >> (16 * L)), out[L]);
        } else {
            uint8_t buf[16 * QQ_BATCH];
#pragma clang loop unroll(full)
            for (int L = 0; L < 4; L++) _mm512_storeu_si512(buf + 64 * L, out[L]);
            for (int b = 0; b < n; b++)
                if ((finite >> b) & 1) memcpy(codes + (k0 + b) * ld / 2, buf + 16 * b, 16);
        }
    }
    return (uint32_t)(n - __builtin_popcount(finite));
}

// The whole call for one set of outputs.
QQ_TARGET __attribute__((always_inline)) static inline uint32_t
qq_run(const float *src, int64_t ld, int64_t count, float norm, uint8_t *codes, float *scales, uint8_t *mask,
       float *xhat, int64_t ldx, const int emit_codes, const int emit_mask, const int emit_xhat) {
    qq_batch batch[2];
    const int64_t batches = (count + QQ_BATCH - 1) / QQ_BATCH;
    uint32_t bad = 0;
    if (batches > 0) qq_prepare(src, ld, count < QQ_BATCH ? count : QQ_BATCH, norm, &batch[0]);
    for (int64_t i = 0; i < batches; i++) {
        const int64_t next = (i + 1) * QQ_BATCH;
        if (next < count)
            qq_prepare(src + next * ld, ld, count - next < QQ_BATCH ? count - next : QQ_BATCH, norm, &batch[(i + 1) & 1]);
        bad += qq_quantize(&batch[i & 1], i * QQ_BATCH, ld, codes, scales, mask, xhat, ldx, emit_codes, emit_mask,
                           emit_xhat);
    }
    return bad;
}

QQ_TARGET uint32_t fp4isa_quest_blocks_avx512(const float *src, int64_t ld, int64_t count, float norm, uint8_t *codes,
                                              float *scales, uint8_t *mask, float *xhat, int64_t ldx) {
    // One copy of the loop per set of outputs, so none branches on them per element.
    switch ((codes ? 1 : 0) | (mask ? 2 : 0) | (xhat ? 4 : 0)) {
    case 0: return qq_run(src, ld, count, norm, codes, scales, mask, xhat, ldx, 0, 0, 0);
    case 1: return qq_run(src, ld, count, norm, codes, scales, mask, xhat, ldx, 1, 0, 0);
    case 2: return qq_run(src, ld, count, norm, codes, scales, mask, xhat, ldx, 0, 1, 0);
    case 3: return qq_run(src, ld, count, norm, codes, scales, mask, xhat, ldx, 1, 1, 0);
    case 4: return qq_run(src, ld, count, norm, codes, scales, mask, xhat, ldx, 0, 0, 1);
    case 5: return qq_run(src, ld, count, norm, codes, scales, mask, xhat, ldx, 1, 0, 1);
    case 6: return qq_run(src, ld, count, norm, codes, scales, mask, xhat, ldx, 0, 1, 1);
    default: return qq_run(src, ld, count, norm, codes, scales, mask, xhat, ldx, 1, 1, 1);
    }
}

#else  // not x86-64: only the Swift kernel runs

uint32_t fp4isa_quest_blocks_avx512(const float *src, int64_t ld, int64_t count, float norm, uint8_t *codes,
                                    float *scales, uint8_t *mask, float *xhat, int64_t ldx) {
    (void)src; (void)ld; (void)count; (void)norm; (void)codes; (void)scales; (void)mask; (void)xhat; (void)ldx;
    return 0;
}

#endif
