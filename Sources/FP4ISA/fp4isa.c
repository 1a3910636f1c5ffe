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

#endif

