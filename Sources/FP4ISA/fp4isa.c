// ISA-specific micro-kernels of the packed FP4 GEMM. See include/fp4isa.h for the contract;
// PackedGEMM.swift's portable tile is the reference every kernel here must equal bit for bit.
#include "fp4isa.h"

#include <string.h>

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>

// Feature bits, read once with cpuid and xgetbv (not __builtin_cpu_supports: that needs a
// compiler-rt symbol the shipped .so does not link).
static uint64_t xcr0(void) {
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}

static int32_t cpu_has_uncached(int32_t isa) {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    const int osxsave = (c >> 27) & 1, avx = (c >> 28) & 1, fma = (c >> 12) & 1;
    if (!osxsave || !avx) return 0;
    const uint64_t state = xcr0();
    if ((state & 0x6) != 0x6) return 0;  // the OS saves xmm and ymm registers
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
    const int avx2 = (b >> 5) & 1;
    switch (isa) {
    case FP4ISA_AVX2:
        return avx2 && fma;
    case FP4ISA_AVX512VNNI: {
        const int f = (b >> 16) & 1, bw = (b >> 30) & 1, vl = (b >> 31) & 1, vnni = (c >> 11) & 1;
        const int zmm_state = (state & 0xE0) == 0xE0;  // opmask, upper zmm, zmm16-31
        return avx2 && fma && f && bw && vl && vnni && zmm_state;
    }
    case FP4ISA_AVX512DQ: {
        const int f = (b >> 16) & 1, dq = (b >> 17) & 1, vl = (b >> 31) & 1;
        const int zmm_state = (state & 0xE0) == 0xE0;
        return avx2 && fma && f && dq && vl && zmm_state;
    }
    default:
        return 0;
    }
}

// The answers never change while the process runs, and cpuid is slow where a hypervisor traps
// it (microseconds): PackedGEMM asks on every GEMM call, so each answer is read once and kept.
// Two threads that race on the first call store the same value.
int32_t fp4isa_cpu_has(int32_t isa) {
    static int32_t known[4] = {-1, -1, -1, -1};
    if (isa < 0 || isa >= 4) return cpu_has_uncached(isa);
    int32_t v = __atomic_load_n(&known[isa], __ATOMIC_RELAXED);
    if (v < 0) {
        v = cpu_has_uncached(isa);
        __atomic_store_n(&known[isa], v, __ATOMIC_RELAXED);
    }
    return v;
}

static inline int32_t load_i32(const uint8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}

#define VNNI_TARGET __attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")))

VNNI_TARGET void fp4isa_gemm_tile_avx512vnni(const uint8_t *a, const int8_t *b, const int32_t *corr,
                                             const float *sa, const float *sb, int64_t groups, int64_t quads,
                                             float post, float div, float *c, int64_t ldc, int64_t mr, int64_t nr) {
    enum { MR = FP4ISA_AVX512VNNI_MR, NR = FP4ISA_AVX512VNNI_NR };
    __m512 f[MR][2];
#pragma clang loop unroll(full)
    for (int i = 0; i < MR; i++) f[i][0] = f[i][1] = _mm512_setzero_ps();
    for (int64_t g = 0; g < groups; g++) {
        // The integer sums start at the offset correction, so no subtraction is needed later.
        const __m512i c0 = _mm512_loadu_si512(corr + g * NR), c1 = _mm512_loadu_si512(corr + g * NR + 16);
        __m512i acc[MR][2];
#pragma clang loop unroll(full)
        for (int i = 0; i < MR; i++) { acc[i][0] = c0; acc[i][1] = c1; }
        for (int64_t q = 0; q < quads; q++) {
            const __m512i b0 = _mm512_loadu_si512(b), b1 = _mm512_loadu_si512(b + 64);
#pragma clang loop unroll(full)
            for (int i = 0; i < MR; i++) {
                const __m512i ai = _mm512_set1_epi32(load_i32(a + 4 * i));
                acc[i][0] = _mm512_dpbusd_epi32(acc[i][0], ai, b0);
                acc[i][1] = _mm512_dpbusd_epi32(acc[i][1], ai, b1);
            }
            a += 4 * MR;
            b += 4 * NR;
        }
        const __m512 s0 = _mm512_loadu_ps(sb + g * NR), s1 = _mm512_loadu_ps(sb + g * NR + 16);
#pragma clang loop unroll(full)
        for (int i = 0; i < MR; i++) {
            const __m512 t = _mm512_set1_ps(sa[g * MR + i]);
            f[i][0] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[i][0]), _mm512_mul_ps(t, s0), f[i][0]);
            f[i][1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[i][1]), _mm512_mul_ps(t, s1), f[i][1]);
        }
    }
    const __m512 p = _mm512_set1_ps(post), d = _mm512_set1_ps(div);
    const __mmask16 m0 = nr >= 16 ? 0xFFFF : (__mmask16)((1u << nr) - 1);
    const __mmask16 m1 = nr >= 32 ? 0xFFFF : nr > 16 ? (__mmask16)((1u << (nr - 16)) - 1) : 0;
    // A fully unrolled store with a guard per row keeps f in registers (a loop bounded by mr
    // made the compiler mirror f on the stack and store it after every group).
#pragma clang loop unroll(full)
    for (int i = 0; i < MR; i++) {
        if (i < mr) {
            _mm512_mask_storeu_ps(c + i * ldc, m0, _mm512_div_ps(_mm512_mul_ps(f[i][0], p), d));
            _mm512_mask_storeu_ps(c + i * ldc + 16, m1, _mm512_div_ps(_mm512_mul_ps(f[i][1], p), d));
        }
    }
}

#define AVX2_TARGET __attribute__((target("avx2,fma")))

AVX2_TARGET void fp4isa_gemm_tile_avx2(const uint8_t *a, const int8_t *b, const int32_t *corr,
                                       const float *sa, const float *sb, int64_t groups, int64_t quads,
                                       float post, float div, float *c, int64_t ldc, int64_t mr, int64_t nr) {
    enum { MR = FP4ISA_AVX2_MR, NR = FP4ISA_AVX2_NR };
    // vpmaddubsw adds two uint8 x int8 products into a saturating int16: the offsets keep
    // |a| <= 128 and |b| <= 64, so a pair stays within 2 * 128 * 64 = 16384 and never saturates.
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 f[MR][2];
#pragma clang loop unroll(full)
    for (int i = 0; i < MR; i++) f[i][0] = f[i][1] = _mm256_setzero_ps();
    for (int64_t g = 0; g < groups; g++) {
        const __m256i c0 = _mm256_loadu_si256((const __m256i *)(corr + g * NR));
        const __m256i c1 = _mm256_loadu_si256((const __m256i *)(corr + g * NR + 8));
        __m256i acc[MR][2];
#pragma clang loop unroll(full)
        for (int i = 0; i < MR; i++) { acc[i][0] = c0; acc[i][1] = c1; }
        for (int64_t q = 0; q < quads; q++) {
            const __m256i b0 = _mm256_loadu_si256((const __m256i *)b);
            const __m256i b1 = _mm256_loadu_si256((const __m256i *)(b + 32));
#pragma clang loop unroll(full)
            for (int i = 0; i < MR; i++) {
                const __m256i ai = _mm256_set1_epi32(load_i32(a + 4 * i));
                acc[i][0] = _mm256_add_epi32(acc[i][0], _mm256_madd_epi16(_mm256_maddubs_epi16(ai, b0), ones));
                acc[i][1] = _mm256_add_epi32(acc[i][1], _mm256_madd_epi16(_mm256_maddubs_epi16(ai, b1), ones));
            }
            a += 4 * MR;
            b += 4 * NR;
        }
        const __m256 s0 = _mm256_loadu_ps(sb + g * NR), s1 = _mm256_loadu_ps(sb + g * NR + 8);
#pragma clang loop unroll(full)
        for (int i = 0; i < MR; i++) {
            const __m256 t = _mm256_set1_ps(sa[g * MR + i]);
            f[i][0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[i][0]), _mm256_mul_ps(t, s0), f[i][0]);
            f[i][1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[i][1]), _mm256_mul_ps(t, s1), f[i][1]);
        }
    }
    const __m256 p = _mm256_set1_ps(post), d = _mm256_set1_ps(div);
#pragma clang loop unroll(full)
    for (int i = 0; i < MR; i++) {
        if (i >= mr) break;
        float row[NR];
        _mm256_storeu_ps(row, _mm256_div_ps(_mm256_mul_ps(f[i][0], p), d));
        _mm256_storeu_ps(row + 8, _mm256_div_ps(_mm256_mul_ps(f[i][1], p), d));
        memcpy(c + i * ldc, row, (size_t)nr * sizeof(float));
    }
}

// b[c * ldb + r] = a[r * lda + c]: 8x8 blocks transposed in registers (unpack, shuffle,
// permute2f128), so every load and store is a contiguous 32 bytes; edges one float at a time.
AVX2_TARGET void fp4isa_transpose_f32_avx2(const float *a, int64_t lda, float *b, int64_t ldb,
                                           int64_t rows, int64_t cols) {
    int64_t c = 0;
    for (; c + 8 <= cols; c += 8) {
        int64_t r = 0;
        for (; r + 8 <= rows; r += 8) {
            const float *p = a + r * lda + c;
            const __m256 r0 = _mm256_loadu_ps(p), r1 = _mm256_loadu_ps(p + lda), r2 = _mm256_loadu_ps(p + 2 * lda),
                         r3 = _mm256_loadu_ps(p + 3 * lda), r4 = _mm256_loadu_ps(p + 4 * lda),
                         r5 = _mm256_loadu_ps(p + 5 * lda), r6 = _mm256_loadu_ps(p + 6 * lda),
                         r7 = _mm256_loadu_ps(p + 7 * lda);
            const __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
            const __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
            const __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
            const __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
            const __m256 s0 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0));
            const __m256 s1 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
            const __m256 s2 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0));
            const __m256 s3 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
            const __m256 s4 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(1, 0, 1, 0));
            const __m256 s5 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(3, 2, 3, 2));
            const __m256 s6 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(1, 0, 1, 0));
            const __m256 s7 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(3, 2, 3, 2));
            float *q = b + c * ldb + r;
            _mm256_storeu_ps(q, _mm256_permute2f128_ps(s0, s4, 0x20));
            _mm256_storeu_ps(q + ldb, _mm256_permute2f128_ps(s1, s5, 0x20));
            _mm256_storeu_ps(q + 2 * ldb, _mm256_permute2f128_ps(s2, s6, 0x20));
            _mm256_storeu_ps(q + 3 * ldb, _mm256_permute2f128_ps(s3, s7, 0x20));
            _mm256_storeu_ps(q + 4 * ldb, _mm256_permute2f128_ps(s0, s4, 0x31));
            _mm256_storeu_ps(q + 5 * ldb, _mm256_permute2f128_ps(s1, s5, 0x31));
            _mm256_storeu_ps(q + 6 * ldb, _mm256_permute2f128_ps(s2, s6, 0x31));
            _mm256_storeu_ps(q + 7 * ldb, _mm256_permute2f128_ps(s3, s7, 0x31));
        }
        for (; r < rows; r++)
            for (int64_t i = 0; i < 8; i++) b[(c + i) * ldb + r] = a[r * lda + c + i];
    }
    for (; c < cols; c++)
        for (int64_t r = 0; r < rows; r++) b[c * ldb + r] = a[r * lda + c];
}

#define DQ_TARGET __attribute__((target("avx2,fma,avx512f,avx512dq,avx512vl")))

DQ_TARGET void fp4isa_counter_uniforms_avx512dq(const uint64_t *base, uint64_t step, int64_t rows, float *out) {
    const __m512i m1 = _mm512_set1_epi64((long long)0xBF58476D1CE4E5B9ull);
    const __m512i m2 = _mm512_set1_epi64((long long)0x94D049BB133111EBull);
    const __m512i st = _mm512_set1_epi64((long long)step);
    const __m256 unit = _mm256_set1_ps(0x1p-24f);
    __m512i c = _mm512_loadu_si512(base);
    for (int64_t i = 0; i < rows; i++) {
        __m512i z = c;
        z = _mm512_mullo_epi64(_mm512_xor_si512(z, _mm512_srli_epi64(z, 30)), m1);
        z = _mm512_mullo_epi64(_mm512_xor_si512(z, _mm512_srli_epi64(z, 27)), m2);
        // The last xor-shift of mix leaves the top 24 bits alone: they are z >> 40 (< 2^24,
        // so the int32 conversion to float is exact).
        const __m256i top = _mm512_cvtepi64_epi32(_mm512_srli_epi64(z, 40));
        _mm256_storeu_ps(out + 8 * i, _mm256_mul_ps(_mm256_cvtepi32_ps(top), unit));
        c = _mm512_add_epi64(c, st);
    }
}


// --- Quartet backward operand, one 32-row x 16-column unit (QuartetKernels.verticalUnit) -----
// Every float operation is the Swift kernel's, in its order: no FMA may be formed.

#define QV_TARGET __attribute__((target("avx2,fma,avx512f,avx512dq,avx512vl")))

// CounterRNG.uniform of 16 counters (lanes 0-7 in lo, 8-15 in hi): SplitMix64's mix, top 24
// bits (the last xor-shift leaves them alone), times 2^-24.
QV_TARGET static inline __m512 qv_uniforms(__m512i lo, __m512i hi) {
    const __m512i m1 = _mm512_set1_epi64((long long)0xBF58476D1CE4E5B9ull);
    const __m512i m2 = _mm512_set1_epi64((long long)0x94D049BB133111EBull);
    lo = _mm512_mullo_epi64(_mm512_xor_si512(lo, _mm512_srli_epi64(lo, 30)), m1);
    hi = _mm512_mullo_epi64(_mm512_xor_si512(hi, _mm512_srli_epi64(hi, 30)), m1);
    lo = _mm512_mullo_epi64(_mm512_xor_si512(lo, _mm512_srli_epi64(lo, 27)), m2);
    hi = _mm512_mullo_epi64(_mm512_xor_si512(hi, _mm512_srli_epi64(hi, 27)), m2);
    const __m256i tlo = _mm512_cvtepi64_epi32(_mm512_srli_epi64(lo, 40));
    const __m256i thi = _mm512_cvtepi64_epi32(_mm512_srli_epi64(hi, 40));
    const __m512i top = _mm512_inserti64x4(_mm512_castsi256_si512(tlo), thi, 1);
    return _mm512_mul_ps(_mm512_cvtepi32_ps(top), _mm512_set1_ps(0x1p-24f));
}

// stochasticGrid(x / s, u) and its uses (QuartetKernels.stochasticEncode): a = min(|v|, 6) on bit
// patterns, binade e = max(floor(log2 a), 0), q = a·2^(1-e) < 4, k = floor(q) + (u < q - floor(q));
// *code = k + 2e | sign(v) << 3, *xhat = (±k·2^(e-1))·s.
QV_TARGET __attribute__((always_inline)) static inline void
qv_round(__m512 x, __m512 s, __m512 u, __m512i abs_mask, __m512i sign_mask, __m512i six, __m512 one, __m512i *code,
         __m512 *xhat) {
#pragma clang fp contract(off)
    const __m512 vq = _mm512_div_ps(x, s);
    const __m512i vb = _mm512_castps_si512(vq);
    const __m512i ab = _mm512_min_epi32(_mm512_and_si512(vb, abs_mask), six);
    const __m512i e = _mm512_max_epi32(_mm512_sub_epi32(_mm512_srli_epi32(ab, 23), _mm512_set1_epi32(127)),
                                       _mm512_setzero_si512());
    const __m512 units = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_sub_epi32(_mm512_set1_epi32(128), e), 23));
    const __m512 q = _mm512_mul_ps(_mm512_castsi512_ps(ab), units);
    // floor is exact, as the Swift round-to-even-and-correct form (0 <= q < 4).
    const __m512 fl = _mm512_roundscale_ps(q, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    const __mmask16 up = _mm512_cmplt_epi32_mask(_mm512_castps_si512(u), _mm512_castps_si512(_mm512_sub_ps(q, fl)));
    const __m512 k = _mm512_mask_add_ps(fl, up, fl, one);  // fl + 0 is fl
    *code = _mm512_or_si512(
        _mm512_add_epi32(_mm512_and_si512(_mm512_cvtps_epi32(k), _mm512_set1_epi32(7)), _mm512_slli_epi32(e, 1)),
        _mm512_srli_epi32(_mm512_and_si512(vb, sign_mask), 28));
    const __m512 value = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(_mm512_set1_epi32(126), e), 23));
    const __m512 qs = _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(_mm512_mul_ps(k, value)),
                                                          _mm512_and_si512(vb, sign_mask)));
    *xhat = _mm512_mul_ps(qs, s);
}

// The body of fp4isa_quartet_vertical_avx512 for one output kind (inlined twice, so the row
// loop carries no branch on it).
QV_TARGET __attribute__((always_inline)) static inline uint32_t
qv_unit(const float *src, int64_t ld, const float *signs, float norm, uint64_t key, uint64_t rp, uint64_t n0,
        uint64_t t0, uint32_t *codes, float *scales, float *xhat, const int emit_codes) {
#pragma clang fp contract(off)
    enum { B = 32 };
    __m512 v[B];
#pragma clang loop unroll(full)
    for (int i = 0; i < B; i++) v[i] = _mm512_mul_ps(_mm512_loadu_ps(src + i * ld), _mm512_set1_ps(signs[i]));
    // Stage h pairs rows k, k + h into (a + c, a - c), as the Swift loop.
#pragma clang loop unroll(full)
    for (int h = 1; h < B; h *= 2)
#pragma clang loop unroll(full)
        for (int j = 0; j < B; j += 2 * h)
#pragma clang loop unroll(full)
            for (int k = j; k < j + h; k++) {
                const __m512 a = v[k], c = v[k + h];
                v[k] = _mm512_add_ps(a, c);
                v[k + h] = _mm512_sub_ps(a, c);
            }
    const __m512 n = _mm512_set1_ps(norm);
    const __m512i abs_mask = _mm512_set1_epi32(0x7FFFFFFF);
    __m512i m = _mm512_setzero_si512();
#pragma clang loop unroll(full)
    for (int i = 0; i < B; i++) {
        v[i] = _mm512_mul_ps(v[i], n);
        m = _mm512_max_epu32(m, _mm512_and_si512(_mm512_castps_si512(v[i]), abs_mask));
    }
    // ScaleRule.absmaxDiv3Scale: 2^floor(log2 amax) / 3. A normal amax keeps its exponent
    // bits; a subnormal one's power of two is its top set bit, 2^(exponent of float(bits)).
    const __mmask16 nan = _mm512_cmpge_epu32_mask(m, _mm512_set1_epi32(0x7F800000));
    const __mmask16 amax_zero = _mm512_cmpeq_epi32_mask(m, _mm512_setzero_si512());
    const __mmask16 normal = _mm512_cmpge_epu32_mask(m, _mm512_set1_epi32(0x00800000));
    const __m512i top_bit = _mm512_sub_epi32(_mm512_srli_epi32(_mm512_castps_si512(_mm512_cvtepi32_ps(m)), 23),
                                             _mm512_set1_epi32(127));
    const __m512i pow2 = _mm512_mask_blend_epi32(normal, _mm512_sllv_epi32(_mm512_set1_epi32(1), top_bit),
                                                 _mm512_and_si512(m, _mm512_set1_epi32(0x7F800000)));
    const __m512 scale = _mm512_div_ps(_mm512_castsi512_ps(pow2), _mm512_set1_ps(3.0f));
    // keep: a quantized group; zero: amax 0 or a scale that underflowed (x̂ = x·0, sign codes).
    const __mmask16 keep = _mm512_cmp_ps_mask(scale, _mm512_setzero_ps(), _CMP_GT_OQ) & ~nan & ~amax_zero;
    const __mmask16 zero = ~keep & ~nan;
    const __m512 s = _mm512_mask_blend_ps(keep, _mm512_set1_ps(1.0f), scale);
    _mm512_storeu_ps(scales, s);

    // Counter of lane l, row i: key + ((n0 + l)·rp + t0 + i + 1)·γ (wrapping).
    const uint64_t gamma = 0x9E3779B97F4A7C15ull;
    const __m512i col_lo = _mm512_add_epi64(_mm512_set1_epi64((long long)n0), _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7));
    const __m512i col_hi = _mm512_add_epi64(col_lo, _mm512_set1_epi64(8));
    const __m512i g = _mm512_set1_epi64((long long)gamma), k0 = _mm512_set1_epi64((long long)key);
    const __m512i first = _mm512_set1_epi64((long long)(t0 + 1)), rpv = _mm512_set1_epi64((long long)rp);
    __m512i c_lo = _mm512_add_epi64(k0, _mm512_mullo_epi64(_mm512_add_epi64(_mm512_mullo_epi64(col_lo, rpv), first), g));
    __m512i c_hi = _mm512_add_epi64(k0, _mm512_mullo_epi64(_mm512_add_epi64(_mm512_mullo_epi64(col_hi, rpv), first), g));

    const __m512i sign_mask = _mm512_set1_epi32((int)0x80000000u);
    const __m512i six = _mm512_castps_si512(_mm512_set1_ps(6.0f));
    const __m512 one = _mm512_set1_ps(1.0f);
    __m512i word = _mm512_setzero_si512();
#pragma clang loop unroll(full)
    for (int i = 0; i < B; i++) {
        const __m512 u = qv_uniforms(c_lo, c_hi);
        c_lo = _mm512_add_epi64(c_lo, g);
        c_hi = _mm512_add_epi64(c_hi, g);
        const __m512 x = v[i];
        __m512i code;
        __m512 xq;
        qv_round(x, s, u, abs_mask, sign_mask, six, one, &code, &xq);
        if (emit_codes) {
            const __m512i sign_code = _mm512_srli_epi32(_mm512_and_si512(_mm512_castps_si512(x), sign_mask), 28);
            const __m512i c = _mm512_or_si512(_mm512_maskz_mov_epi32(keep, code), _mm512_maskz_mov_epi32(zero, sign_code));
            word = _mm512_or_si512(word, _mm512_slli_epi32(c, 4 * (i % 8)));
            if (i % 8 == 7) {
                _mm512_storeu_si512(codes + 16 * (i / 8), word);
                word = _mm512_setzero_si512();
            }
        } else {
            __m512 y = _mm512_mask_blend_ps(zero, xq, _mm512_mul_ps(x, _mm512_setzero_ps()));
            y = _mm512_mask_blend_ps(nan, y, _mm512_castsi512_ps(_mm512_set1_epi32(0x7FC00000)));
            _mm512_storeu_ps(xhat + 16 * i, y);
        }
    }
    return nan;
}

QV_TARGET uint32_t fp4isa_quartet_vertical_avx512(const float *src, int64_t ld, const float *signs, float norm,
                                                  uint64_t key, uint64_t rp, uint64_t n0, uint64_t t0,
                                                  uint32_t *codes, float *scales, float *xhat) {
    if (codes) return qv_unit(src, ld, signs, norm, key, rp, n0, t0, codes, scales, xhat, 1);
    return qv_unit(src, ld, signs, norm, key, rp, n0, t0, codes, scales, xhat, 0);
}

// --- Quartet backward operand, the rows of one matrix row (QuartetKernels.gradientRows) -------

// Hadamard.h8 on both 8-lane halves of v: out_j = v_(j xor h) + v_j * (+1 or -1), h = 1, 2, 4.
QV_TARGET static inline __m512 qr_h8(__m512 v) {
    v = _mm512_add_ps(_mm512_permute_ps(v, 0xB1), _mm512_mul_ps(v, _mm512_setr_ps(1, -1, 1, -1, 1, -1, 1, -1,
                                                                                  1, -1, 1, -1, 1, -1, 1, -1)));
    v = _mm512_add_ps(_mm512_permute_ps(v, 0x4E), _mm512_mul_ps(v, _mm512_setr_ps(1, 1, -1, -1, 1, 1, -1, -1,
                                                                                  1, 1, -1, -1, 1, 1, -1, -1)));
    v = _mm512_add_ps(_mm512_shuffle_f32x4(v, v, 0xB1), _mm512_mul_ps(v, _mm512_setr_ps(1, 1, 1, 1, -1, -1, -1, -1,
                                                                                        1, 1, 1, 1, -1, -1, -1, -1)));
    return v;
}

// 16 e2m1 codes (< 16, one per int32 lane) as 8 bytes, element 2i in the low nibble of byte i,
// in the low half of the result.
QV_TARGET static inline __m128i qr_nibbles(__m512i c) {
    const __m128i b = _mm512_cvtepi32_epi8(c);  // 16-bit lane i: element 2i | element 2i+1 << 8
    return _mm_and_si128(_mm_or_si128(b, _mm_srli_epi16(b, 4)), _mm_set1_epi16(0xFF));
}

// Hadamard.rotate32 of block j of the row (zero-padded past cols) into *y0, *y1; returns its
// amax as a bit pattern.
QV_TARGET __attribute__((always_inline)) static inline uint32_t
qr_rotate(const float *src, int64_t cols, int64_t j, __m512 d0, __m512 d1, __m512 n, __m512 *y0, __m512 *y1) {
#pragma clang fp contract(off)
    // The last block is zero-padded (masked loads read nothing past the row).
    const int64_t left = cols - 32 * j;
    const __mmask16 m0 = left >= 16 ? 0xFFFF : (__mmask16)((1u << left) - 1);
    const __mmask16 m1 = left >= 32 ? 0xFFFF : left > 16 ? (__mmask16)((1u << (left - 16)) - 1) : 0;
    __m512 z0 = _mm512_mul_ps(_mm512_maskz_loadu_ps(m0, src + 32 * j), d0);
    __m512 z1 = _mm512_mul_ps(_mm512_maskz_loadu_ps(m1, src + 32 * j + 16), d1);
    // h = 1, 2, 4 in each 8-lane part; h = 8 pairs the parts of one zmm (w0 = v0 + v1,
    // w1 = v0 - v1); h = 16 pairs the two zmm.
    z0 = qr_h8(z0);
    z1 = qr_h8(z1);
    const __m512 a0 = _mm512_shuffle_f32x4(z0, z0, 0x44), c0 = _mm512_shuffle_f32x4(z0, z0, 0xEE);
    const __m512 a1 = _mm512_shuffle_f32x4(z1, z1, 0x44), c1 = _mm512_shuffle_f32x4(z1, z1, 0xEE);
    z0 = _mm512_mask_sub_ps(_mm512_add_ps(a0, c0), 0xFF00, a0, c0);
    z1 = _mm512_mask_sub_ps(_mm512_add_ps(a1, c1), 0xFF00, a1, c1);
    *y0 = _mm512_mul_ps(_mm512_add_ps(z0, z1), n);
    *y1 = _mm512_mul_ps(_mm512_sub_ps(z0, z1), n);
    const __m512i abs_mask = _mm512_set1_epi32(0x7FFFFFFF);
    return (uint32_t)_mm512_reduce_max_epu32(_mm512_max_epu32(_mm512_and_si512(_mm512_castps_si512(*y0), abs_mask),
                                                              _mm512_and_si512(_mm512_castps_si512(*y1), abs_mask)));
}

// ScaleRule.absmaxDiv3Scale of a finite amax > 0: 2^floor(log2 amax) / 3 (a subnormal amax:
// its top bit); 0 for amax 0.
static inline float qr_scale(uint32_t amax) {
#pragma clang fp contract(off)
    if (amax == 0) return 0.0f;
    const uint32_t pow2 = amax >= 0x00800000u ? (amax & 0x7F800000u) : 1u << (31 - __builtin_clz(amax));
    float p;
    memcpy(&p, &pow2, 4);
    return p / 3.0f;
}

// quantizeGradientBlock of the rotated block j (y0, y1 with the given amax and scale) into the
// outputs; returns 1 when it held NaN or ±inf.
QV_TARGET __attribute__((always_inline)) static inline uint32_t
qr_store(__m512 y0, __m512 y1, uint32_t amax, float scale, int64_t j, uint64_t key, uint64_t index, uint8_t *codes,
         float *scales, float *xhat, const int emit_codes) {
#pragma clang fp contract(off)
    const __m512i abs_mask = _mm512_set1_epi32(0x7FFFFFFF), sign_mask = _mm512_set1_epi32((int)0x80000000u);
    const __m512i six = _mm512_castps_si512(_mm512_set1_ps(6.0f));
    const __m512 one = _mm512_set1_ps(1.0f);
    if (amax >= 0x7F800000u) {
        if (emit_codes) {
            _mm_storeu_si128((__m128i *)(codes + 16 * j), _mm_setzero_si128());
            scales[j] = 1.0f;
        } else {
            const __m512 nan = _mm512_castsi512_ps(_mm512_set1_epi32(0x7FC00000));
            _mm512_storeu_ps(xhat + 32 * j, nan);
            _mm512_storeu_ps(xhat + 32 * j + 16, nan);
        }
        return 1;
    }
    __m512i c0, c1;
    __m512 q0, q1;
    if (!(scale > 0.0f)) {
        // A zero group: the sign codes of x, x̂ = x * 0.
        c0 = _mm512_srli_epi32(_mm512_and_si512(_mm512_castps_si512(y0), sign_mask), 28);
        c1 = _mm512_srli_epi32(_mm512_and_si512(_mm512_castps_si512(y1), sign_mask), 28);
        q0 = _mm512_mul_ps(y0, _mm512_setzero_ps());
        q1 = _mm512_mul_ps(y1, _mm512_setzero_ps());
        scale = 1.0f;
    } else {
        // Draws of flat indices index + 32j + k: counter key + (index + 32j + k + 1)·γ.
        const uint64_t gamma = 0x9E3779B97F4A7C15ull;
        const uint64_t base = key + (index + 32 * (uint64_t)j + 1) * gamma;
        const __m512i b0 = _mm512_add_epi64(_mm512_set1_epi64((long long)base),
                                            _mm512_mullo_epi64(_mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7),
                                                               _mm512_set1_epi64((long long)gamma)));
        const __m512i b1 = _mm512_add_epi64(b0, _mm512_set1_epi64((long long)(8 * gamma)));
        const __m512i g16 = _mm512_set1_epi64((long long)(16 * gamma));
        const __m512 u0 = qv_uniforms(b0, b1);
        const __m512 u1 = qv_uniforms(_mm512_add_epi64(b0, g16), _mm512_add_epi64(b1, g16));
        const __m512 s = _mm512_set1_ps(scale);
        qv_round(y0, s, u0, abs_mask, sign_mask, six, one, &c0, &q0);
        qv_round(y1, s, u1, abs_mask, sign_mask, six, one, &c1, &q1);
    }
    if (emit_codes) {
        _mm_storeu_si128((__m128i *)(codes + 16 * j), _mm_packus_epi16(qr_nibbles(c0), qr_nibbles(c1)));
        scales[j] = scale;
    } else {
        _mm512_storeu_ps(xhat + 32 * j, q0);
        _mm512_storeu_ps(xhat + 32 * j + 16, q1);
    }
    return 0;
}

QV_TARGET __attribute__((always_inline)) static inline uint32_t
qr_row(const float *src, int64_t cols, const float *signs, float norm, uint64_t key, uint64_t index, uint8_t *codes,
       float *scales, float *xhat, const int emit_codes) {
    enum { G = 2 };  // 3 and 4 gained little more (microbenchmark: 0.97, 0.88, 0.86, 0.88 ns per value for G = 1..4)
    const __m512 d0 = _mm512_loadu_ps(signs), d1 = _mm512_loadu_ps(signs + 16), n = _mm512_set1_ps(norm);
    uint32_t non_finite = 0;
    const int64_t blocks = (cols + 31) / 32;
    int64_t j = 0;
    // G blocks at a time, phase by phase: each block is one long dependency chain (rotation,
    // amax, scale, division, rounding), and interleaving G of them lets them overlap.
    for (; j + G <= blocks; j += G) {
        __m512 y0[G], y1[G];
        uint32_t amax[G];
        float scale[G];
#pragma clang loop unroll(full)
        for (int t = 0; t < G; t++) amax[t] = qr_rotate(src, cols, j + t, d0, d1, n, &y0[t], &y1[t]);
#pragma clang loop unroll(full)
        for (int t = 0; t < G; t++) scale[t] = qr_scale(amax[t]);
#pragma clang loop unroll(full)
        for (int t = 0; t < G; t++)
            non_finite += qr_store(y0[t], y1[t], amax[t], scale[t], j + t, key, index, codes, scales, xhat, emit_codes);
    }
    for (; j < blocks; j++) {
        __m512 y0, y1;
        const uint32_t amax = qr_rotate(src, cols, j, d0, d1, n, &y0, &y1);
        non_finite += qr_store(y0, y1, amax, qr_scale(amax), j, key, index, codes, scales, xhat, emit_codes);
    }
    return non_finite;
}

QV_TARGET uint32_t fp4isa_quartet_rows_avx512(const float *src, int64_t cols, const float *signs, float norm,
                                              uint64_t key, uint64_t index, uint8_t *codes, float *scales,
                                              float *xhat) {
    if (codes) return qr_row(src, cols, signs, norm, key, index, codes, scales, xhat, 1);
    return qr_row(src, cols, signs, norm, key, index, codes, scales, xhat, 0);
}

#else  // not x86-64: only the portable Swift tile runs

int32_t fp4isa_cpu_has(int32_t isa) { (void)isa; return 0; }

void fp4isa_gemm_tile_avx512vnni(const uint8_t *a, const int8_t *b, const int32_t *corr, const float *sa,
                                 const float *sb, int64_t groups, int64_t quads, float post, float div, float *c,
                                 int64_t ldc, int64_t mr, int64_t nr) {
    (void)a; (void)b; (void)corr; (void)sa; (void)sb; (void)groups; (void)quads; (void)post; (void)div; (void)c;
    (void)ldc; (void)mr; (void)nr;
}

void fp4isa_gemm_tile_avx2(const uint8_t *a, const int8_t *b, const int32_t *corr, const float *sa,
                           const float *sb, int64_t groups, int64_t quads, float post, float div, float *c,
                           int64_t ldc, int64_t mr, int64_t nr) {
    (void)a; (void)b; (void)corr; (void)sa; (void)sb; (void)groups; (void)quads; (void)post; (void)div; (void)c;
    (void)ldc; (void)mr; (void)nr;
}

void fp4isa_transpose_f32_avx2(const float *a, int64_t lda, float *b, int64_t ldb, int64_t rows, int64_t cols) {
    (void)a; (void)lda; (void)b; (void)ldb; (void)rows; (void)cols;
}

void fp4isa_counter_uniforms_avx512dq(const uint64_t *base, uint64_t step, int64_t rows, float *out) {
    (void)base; (void)step; (void)rows; (void)out;
}

uint32_t fp4isa_quartet_vertical_avx512(const float *src, int64_t ld, const float *signs, float norm, uint64_t key,
                                        uint64_t rp, uint64_t n0, uint64_t t0, uint32_t *codes, float *scales,
                                        float *xhat) {
    (void)src; (void)ld; (void)signs; (void)norm; (void)key; (void)rp; (void)n0; (void)t0; (void)codes; (void)scales;
    (void)xhat;
    return 0;
}

uint32_t fp4isa_quartet_rows_avx512(const float *src, int64_t cols, const float *signs, float norm, uint64_t key,
                                    uint64_t index, uint8_t *codes, float *scales, float *xhat) {
    (void)src; (void)cols; (void)signs; (void)norm; (void)key; (void)index; (void)codes; (void)scales; (void)xhat;
    return 0;
}

#endif
