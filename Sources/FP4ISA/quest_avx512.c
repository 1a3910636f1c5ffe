// The AVX-512 form of Quartet's forward QuEST kernel. See include/fp4isa.h for the contract;
// QuartetKernels.quest / quest4 of Hadamard.rotate32 (Sources/FP4Core/Kernels/QuestKernels.swift)
// is the reference it equals bit for bit. Every float operation is the Swift one in its order:
// no FMA may be formed.
#include "fp4isa.h"

#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>

#define QQ_TARGET __attribute__((target("avx2,fma,avx512f,avx512dq,avx512vl")))

// Blocks per batch: one zmm of doubles holds the float64 sums of 8 blocks, lane b = block b.
enum { QQ_BATCH = 8 };

// Hadamard.h8 on both 8-lane halves of v: out_j = v_(j xor h) + v_j * (+1 or -1), h = 1, 2, 4.
QQ_TARGET static inline __m512 qq_h8(__m512 v) {
#pragma clang fp contract(off)
    v = _mm512_add_ps(_mm512_permute_ps(v, 0xB1), _mm512_mul_ps(v, _mm512_setr_ps(1, -1, 1, -1, 1, -1, 1, -1,
                                                                                  1, -1, 1, -1, 1, -1, 1, -1)));
    v = _mm512_add_ps(_mm512_permute_ps(v, 0x4E), _mm512_mul_ps(v, _mm512_setr_ps(1, 1, -1, -1, 1, 1, -1, -1,
                                                                                  1, 1, -1, -1, 1, 1, -1, -1)));
    v = _mm512_add_ps(_mm512_shuffle_f32x4(v, v, 0xB1), _mm512_mul_ps(v, _mm512_setr_ps(1, 1, 1, 1, -1, -1, -1, -1,
                                                                                        1, 1, 1, 1, -1, -1, -1, -1)));
    return v;
}

// Hadamard.rotate32(block, signs: nil, norm) of p[0 ..< 32]: *y0 = elements 0-15, *y1 = 16-31.
QQ_TARGET __attribute__((always_inline)) static inline void qq_rotate(const float *p, __m512 n, __m512 *y0, __m512 *y1) {
#pragma clang fp contract(off)
    __m512 z0 = qq_h8(_mm512_loadu_ps(p)), z1 = qq_h8(_mm512_loadu_ps(p + 16));
    // h = 8 pairs the 8-lane parts of one zmm (w0 = v0 + v1, w1 = v0 - v1); h = 16 the two zmm.
    const __m512 a0 = _mm512_shuffle_f32x4(z0, z0, 0x44), c0 = _mm512_shuffle_f32x4(z0, z0, 0xEE);
    const __m512 a1 = _mm512_shuffle_f32x4(z1, z1, 0x44), c1 = _mm512_shuffle_f32x4(z1, z1, 0xEE);
    z0 = _mm512_mask_sub_ps(_mm512_add_ps(a0, c0), 0xFF00, a0, c0);
    z1 = _mm512_mask_sub_ps(_mm512_add_ps(a1, c1), 0xFF00, a1, c1);
    *y0 = _mm512_mul_ps(_mm512_add_ps(z0, z1), n);
    *y1 = _mm512_mul_ps(_mm512_sub_ps(z0, z1), n);
}

// Rows r[0 ..< 8] (16 floats each: 16 elements of 8 blocks) transposed so that element e of the
// 8 blocks is one ymm: e = 4L + k sits in the low half of p[k] (L = 0), the high half of p[k]
// (L = 1), the low half of q[k] (L = 2) or the high half of q[k] (L = 3), block b in lane b.
QQ_TARGET __attribute__((always_inline)) static inline void qq_transpose(const __m512 *r, __m512 *p, __m512 *q) {
    __m512 u[8];
#pragma clang loop unroll(full)
    for (int h = 0; h < 2; h++) {
        const __m512 *s = r + 4 * h;
        const __m512 t0 = _mm512_unpacklo_ps(s[0], s[1]), t1 = _mm512_unpackhi_ps(s[0], s[1]);
        const __m512 t2 = _mm512_unpacklo_ps(s[2], s[3]), t3 = _mm512_unpackhi_ps(s[2], s[3]);
        // 128-bit lane L of u[4h + k]: element 4L + k of blocks 4h ..< 4h + 4.
        u[4 * h + 0] = _mm512_shuffle_ps(t0, t2, 0x44);
        u[4 * h + 1] = _mm512_shuffle_ps(t0, t2, 0xEE);
        u[4 * h + 2] = _mm512_shuffle_ps(t1, t3, 0x44);
        u[4 * h + 3] = _mm512_shuffle_ps(t1, t3, 0xEE);
    }
    const __m512i lo = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
    const __m512i hi = _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
#pragma clang loop unroll(full)
    for (int k = 0; k < 4; k++) {
        p[k] = _mm512_permutex2var_ps(u[k], lo, u[4 + k]);
        q[k] = _mm512_permutex2var_ps(u[k], hi, u[4 + k]);
    }
}

// Adds the 16 elements of r (one half of 8 blocks, in element order) to the float64 sums of x
// and x² (QuartetKernels.quest4: sum += v; sq += v * v) and their magnitudes' bits into *m.
QQ_TARGET __attribute__((always_inline)) static inline void qq_sums(const __m512 *r, __m512d *sum, __m512d *sq,
                                                                   __m512i *m) {
#pragma clang fp contract(off)
    __m512 p[4], q[4];
    qq_transpose(r, p, q);
    const __m512i abs_mask = _mm512_set1_epi32(0x7FFFFFFF);
#pragma clang loop unroll(full)
    for (int e = 0; e < 16; e++) {
        const int L = e / 4, k = e % 4;
        const __m512 v = L < 2 ? p[k] : q[k];
        const __m256 f = (L & 1) ? _mm512_extractf32x8_ps(v, 1) : _mm512_castps512_ps256(v);
        const __m512d d = _mm512_cvtps_pd(f);
        *sum = _mm512_add_pd(*sum, d);
        *sq = _mm512_add_pd(*sq, _mm512_mul_pd(d, d));
    }
#pragma clang loop unroll(full)
    for (int k = 0; k < 4; k++) {
        *m = _mm512_max_epu32(*m, _mm512_and_si512(_mm512_castps_si512(p[k]), abs_mask));
        *m = _mm512_max_epu32(*m, _mm512_and_si512(_mm512_castps_si512(q[k]), abs_mask));
    }
}

// e2m1 round-to-nearest-even of v = y · (1/s) (E2M1Kernel.encode, QuartetKernels.questLanes):
// a = min(|v|, 6) on bit patterns, e0 = max(floor(log2 a), 0) << 23, t = a + 2^(e + 22) rounds a
// to the binade's quantum (ties to even); code = (bits(t) & 7) + 2e | sign << 3,
// x̂ = (±(t − 2^(e + 22)))·s; *inside = |v| < 6.
QQ_TARGET __attribute__((always_inline)) static inline void qq_encode(__m512 y, __m512 inv, __m512 s, __m512i *code,
                                                                     __m512 *xhat, __mmask16 *inside) {
#pragma clang fp contract(off)
    const __m512i six = _mm512_castps_si512(_mm512_set1_ps(6.0f)), sign_mask = _mm512_set1_epi32((int)0x80000000u);
    const __m512i vb = _mm512_castps_si512(_mm512_mul_ps(y, inv));
    const __m512i sign = _mm512_and_si512(vb, sign_mask);
    const __m512i ab = _mm512_and_si512(vb, _mm512_set1_epi32(0x7FFFFFFF));
    const __m512i a = _mm512_min_epu32(ab, six);
    const __m512i e0 = _mm512_max_epi32(
        _mm512_sub_epi32(_mm512_and_si512(a, _mm512_set1_epi32(0x7F800000)), _mm512_set1_epi32(0x3F800000)),
        _mm512_setzero_si512());
    const __m512 magic = _mm512_castsi512_ps(_mm512_add_epi32(e0, _mm512_set1_epi32(0x4A800000)));
    const __m512 t = _mm512_add_ps(_mm512_castsi512_ps(a), magic);
    *code = _mm512_or_si512(_mm512_add_epi32(_mm512_and_si512(_mm512_castps_si512(t), _mm512_set1_epi32(7)),
                                             _mm512_srli_epi32(e0, 22)),
                            _mm512_srli_epi32(sign, 28));
    const __m512 q = _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(_mm512_sub_ps(t, magic)), sign));
    *xhat = _mm512_mul_ps(q, s);
    *inside = _mm512_cmplt_epu32_mask(ab, six);
}

// 16 e2m1 codes (< 16, one per int32 lane) as 8 bytes, element 2i in the low nibble of byte i,
// in the low half of the result.
QQ_TARGET static inline __m128i qq_nibbles(__m512i c) {
    const __m128i b = _mm512_cvtepi32_epi8(c);  // 16-bit lane i: element 2i | element 2i+1 << 8
    return _mm_and_si128(_mm_or_si128(b, _mm_srli_epi16(b, 4)), _mm_set1_epi16(0xFF));
}

QQ_TARGET static inline void qq_store_mask(uint8_t *p, uint32_t word) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(word >> (8 * i));  // little-endian, any alignment
}

// QuartetKernels.quest(x, std:) of one rotated block (y0, y1) with its amax bits and the bits
// of s and 1/s, into the outputs at flat index f (x̂ at xhat, when given); 1 when non-finite.
QQ_TARGET __attribute__((always_inline)) static inline uint32_t
qq_store(__m512 y0, __m512 y1, uint32_t amax, uint32_t scale_bits, uint32_t inv_bits, int64_t f, uint8_t *codes,
         float *scales, uint8_t *mask, float *xhat) {
#pragma clang fp contract(off)
    if (amax >= 0x7F800000u) {
        if (xhat) {
            _mm512_storeu_ps(xhat, _mm512_setzero_ps());
            _mm512_storeu_ps(xhat + 16, _mm512_setzero_ps());
        }
        return 1;
    }
    __m512i c0, c1;
    __m512 q0, q1;
    uint32_t inside;
    float scale;
    if (amax == 0) {
        // All-zero group: scale 1, the sign codes of x, x̂ = x * 0, mask all ones.
        const __m512i sign_mask = _mm512_set1_epi32((int)0x80000000u);
        c0 = _mm512_srli_epi32(_mm512_and_si512(_mm512_castps_si512(y0), sign_mask), 28);
        c1 = _mm512_srli_epi32(_mm512_and_si512(_mm512_castps_si512(y1), sign_mask), 28);
        q0 = _mm512_mul_ps(y0, _mm512_setzero_ps());
        q1 = _mm512_mul_ps(y1, _mm512_setzero_ps());
        inside = 0xFFFFFFFFu;
        scale = 1.0f;
    } else {
        const __m512 s = _mm512_castsi512_ps(_mm512_set1_epi32((int)scale_bits));
        const __m512 inv = _mm512_castsi512_ps(_mm512_set1_epi32((int)inv_bits));
        __mmask16 m0, m1;
        qq_encode(y0, inv, s, &c0, &q0, &m0);
        qq_encode(y1, inv, s, &c1, &q1, &m1);
        inside = (uint32_t)m0 | (uint32_t)m1 << 16;
        memcpy(&scale, &scale_bits, 4);
    }
    if (codes) _mm_storeu_si128((__m128i *)(codes + f / 2), _mm_packus_epi16(qq_nibbles(c0), qq_nibbles(c1)));
    if (scales) scales[f / 32] = scale;
    if (mask) qq_store_mask(mask + f / 8, inside);
    if (xhat) {
        _mm512_storeu_ps(xhat, q0);
        _mm512_storeu_ps(xhat + 16, q1);
    }
    return 0;
}

// One batch of n <= 8 blocks starting at block k0.
QQ_TARGET __attribute__((always_inline)) static inline uint32_t
qq_batch(const float *src, int64_t ld, int64_t k0, int64_t n, __m512 norm, uint8_t *codes, float *scales,
         uint8_t *mask, float *xhat, int64_t ldx) {
#pragma clang fp contract(off)
    __m512 y0[QQ_BATCH], y1[QQ_BATCH];
#pragma clang loop unroll(full)
    for (int b = 0; b < QQ_BATCH; b++) {
        if (b < n) {
            qq_rotate(src + (k0 + b) * ld, norm, &y0[b], &y1[b]);
        } else {
            y0[b] = y1[b] = _mm512_setzero_ps();  // padding: read nothing past the last block
        }
    }
    // Population std in float64 (QuartetKernels.quest4 / std): sums in element order, lane b
    // block b; and the amax bits of each block.
    __m512d sum = _mm512_setzero_pd(), sq = _mm512_setzero_pd();
    __m512i m = _mm512_setzero_si512();
    qq_sums(y0, &sum, &sq, &m);
    qq_sums(y1, &sum, &sq, &m);
    const __m256i amax = _mm256_max_epu32(_mm512_castsi512_si256(m), _mm512_extracti64x4_epi64(m, 1));
    const __m512d n32 = _mm512_set1_pd(32.0), mu = _mm512_div_pd(sum, n32);
    const __m512d var = _mm512_max_pd(_mm512_sub_pd(_mm512_div_pd(sq, n32), _mm512_mul_pd(mu, mu)), _mm512_setzero_pd());
    const __m512d sd = _mm512_sqrt_pd(var);
    // ScaleRule.questScale(std:fmax: 6): s0 = (2.92247856 / 6)·σ + 1e-8, s = 2^min(e, 127) with e
    // the unbiased exponent field of s0 (s0 >= 1e-8 is normal; an inf or NaN s0 has field 2047,
    // which gives 2^127 as Swift's isFinite guard does).
    const __m512d s0 = _mm512_add_pd(_mm512_mul_pd(_mm512_set1_pd(2.92247856 / 6.0), sd), _mm512_set1_pd(1e-8));
    const __m512i e64 = _mm512_min_epi64(
        _mm512_sub_epi64(_mm512_and_si512(_mm512_srli_epi64(_mm512_castpd_si512(s0), 52), _mm512_set1_epi64(0x7FF)),
                         _mm512_set1_epi64(1023)),
        _mm512_set1_epi64(127));
    const __m256i e = _mm512_cvtepi64_epi32(e64);
    // x / s = x · 2^−e exactly (both round the same real value): a finite block has
    // σ <= max|x| < 2^128, so e <= 126 and 2^−e is a normal float.
    const __m256i scale_bits = _mm256_slli_epi32(_mm256_add_epi32(e, _mm256_set1_epi32(127)), 23);
    const __m256i inv_bits = _mm256_slli_epi32(_mm256_sub_epi32(_mm256_set1_epi32(127), e), 23);
    uint32_t am[QQ_BATCH], sb[QQ_BATCH], ib[QQ_BATCH];
    _mm256_storeu_si256((__m256i *)am, amax);
    _mm256_storeu_si256((__m256i *)sb, scale_bits);
    _mm256_storeu_si256((__m256i *)ib, inv_bits);
    uint32_t bad = 0;
#pragma clang loop unroll(full)
    for (int b = 0; b < QQ_BATCH; b++) {
        if (b < n) {
            const int64_t k = k0 + b;
            bad += qq_store(y0[b], y1[b], am[b], sb[b], ib[b], k * ld, codes, scales, mask, xhat ? xhat + k * ldx : 0);
        }
    }
    return bad;
}

QQ_TARGET uint32_t fp4isa_quest_blocks_avx512(const float *src, int64_t ld, int64_t count, float norm, uint8_t *codes,
                                              float *scales, uint8_t *mask, float *xhat, int64_t ldx) {
    const __m512 n = _mm512_set1_ps(norm);
    uint32_t bad = 0;
    int64_t k0 = 0;
    for (; k0 + QQ_BATCH <= count; k0 += QQ_BATCH) bad += qq_batch(src, ld, k0, QQ_BATCH, n, codes, scales, mask, xhat, ldx);
    if (k0 < count) bad += qq_batch(src, ld, k0, count - k0, n, codes, scales, mask, xhat, ldx);
    return bad;
}

#else  // not x86-64: only the Swift kernel runs

uint32_t fp4isa_quest_blocks_avx512(const float *src, int64_t ld, int64_t count, float norm, uint8_t *codes,
                                    float *scales, uint8_t *mask, float *xhat, int64_t ldx) {
    (void)src; (void)ld; (void)count; (void)norm; (void)codes; (void)scales; (void)mask; (void)xhat; (void)ldx;
    return 0;
}

#endif
