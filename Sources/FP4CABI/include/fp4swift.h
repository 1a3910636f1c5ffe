/*
 * fp4swift C ABI: the one description of what libfp4swift.so exports.
 * python/fp4swift/_native.py mirrors this file line for line; change both together
 * and bump FP4SWIFT_ABI_VERSION whenever a signature, struct or constant changes.
 *
 * Conventions
 * - Every function returns an int32 status (FP4SWIFT_OK = 0). On failure the text of
 *   fp4swift_last_error() (thread-local) says what was wrong.
 * - Tensors are contiguous row-major float32 buffers [rows, cols]; the caller allocates
 *   every output and passes its length, which the library checks.
 * - Enumerations are indices into name tables (fp4swift_name), so names live in one place.
 */
#ifndef FP4SWIFT_H
#define FP4SWIFT_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define FP4SWIFT_ABI_VERSION 6

/* Status codes. */
#define FP4SWIFT_OK 0
#define FP4SWIFT_INVALID_ARGUMENT 1 /* bad shape, name, range or buffer length */
#define FP4SWIFT_NONFINITE 2        /* NaN/inf where the operation cannot represent it */
#define FP4SWIFT_INVALID_STATE 3    /* a handle used outside its life cycle */
#define FP4SWIFT_INTERNAL 4         /* a bug: please report */

/* Name tables for fp4swift_name(table, index). */
#define FP4SWIFT_TABLE_FORMAT 0      /* e2m1, e1m2, e3m0, e4m3, e5m2, e8m0 */
#define FP4SWIFT_TABLE_GRANULARITY 1 /* tensor, row, column, block, block2d */
#define FP4SWIFT_TABLE_SCALE_RULE 2  /* absmax, pow2, e8m0, nvfp4, absmax_div3, quest,
                                        e8m0_ceil, e8m0_even, e8m0_rceil, nvfp4_torchao */
#define FP4SWIFT_TABLE_ROUNDING 3    /* nearest_even, nearest_away, stochastic */
#define FP4SWIFT_TABLE_GEMM_PATH 4   /* generic, avx2, avx512vnni */

/* Granularity indices (FP4SWIFT_TABLE_GRANULARITY). */
#define FP4SWIFT_GRANULARITY_TENSOR 0
#define FP4SWIFT_GRANULARITY_ROW 1
#define FP4SWIFT_GRANULARITY_COLUMN 2
#define FP4SWIFT_GRANULARITY_BLOCK 3
#define FP4SWIFT_GRANULARITY_BLOCK2D 4

/* Non-finite policies. */
#define FP4SWIFT_NONFINITE_PROPAGATE 0
#define FP4SWIFT_NONFINITE_RAISE 1

/* A quantizer (numerics.md §2): every field is an index into its name table. */
typedef struct fp4swift_quantizer {
    int32_t format;
    int32_t granularity;
    int32_t block;      /* n of block(n) / block2d(n); ignored otherwise */
    int32_t scale_rule;
    int32_t rounding;
    int32_t nonfinite;  /* FP4SWIFT_NONFINITE_* */
    uint64_t seed;      /* stochastic rounding: draw i = f(seed, flat index i) */
    int32_t stochastic_bits; /* stochastic rounding with r = 1..32 random bits added below the
                              * kept precision, then truncation; 0: exact probability */
} fp4swift_quantizer;

/* Facts about an element format. */
typedef struct fp4swift_format_info {
    int32_t bits;        /* 4 or 8 */
    int32_t exp_bits;
    int32_t man_bits;
    int32_t bias;
    int32_t max_exponent; /* floor(log2 max): the emax of the e8m0 scale rule */
    int32_t scale_only;   /* 1 for e8m0 */
    float max_value;
} fp4swift_format_info;

/* Library. */
int32_t fp4swift_abi_version(void);
const char *fp4swift_last_error(void);
int32_t fp4swift_set_num_threads(int32_t n);
int32_t fp4swift_get_num_threads(void);
/* Name of entry `index` of `table`, or NULL past the end. */
const char *fp4swift_name(int32_t table, int32_t index);
int32_t fp4swift_format_info_get(int32_t format, fp4swift_format_info *out);

/* Element codecs (§1): one code per byte, values already on the grid scale. */
int32_t fp4swift_encode(const float *x, int64_t n, int32_t format, int32_t rounding,
                        uint64_t seed, uint8_t *codes);
int32_t fp4swift_decode(const uint8_t *codes, int64_t n, int32_t format, float *out);
/* FP4 packing: element 2i in the low nibble, 2i+1 in the high one; odd n pads with 0. */
int32_t fp4swift_pack_nibbles(const uint8_t *codes, int64_t n, uint8_t *packed, int64_t packed_len);
int32_t fp4swift_unpack_nibbles(const uint8_t *packed, int64_t packed_len, int64_t n, uint8_t *codes);

/* Quantizers (§2, §3). */
/* Scale-group tiling of a [rows, cols] tensor; fails when blocks do not divide it. */
int32_t fp4swift_group_layout(int64_t rows, int64_t cols, const fp4swift_quantizer *q,
                              int64_t *tile_rows, int64_t *tile_cols);
/* x -> dequantized x-hat. nonfinite_groups receives the number of NaN/inf groups. */
int32_t fp4swift_fake_quantize(const float *x, int64_t rows, int64_t cols,
                               const fp4swift_quantizer *q, float *out,
                               int64_t *nonfinite_groups);
/* x -> codes (FP4: packed, ceil(n/2) bytes; FP8: n bytes) and per-group scales.
 * scales[g] is the float scale s (nvfp4: float(sb); nvfp4_torchao: P * sb, so x-hat = q * s);
 * scale_bytes[g] (may be NULL) the stored byte for the e8m0* / nvfp4* rules; tensor_scale the
 * nvfp4 S or the nvfp4_torchao P (1 otherwise).
 * Non-finite input always fails, naming the first offending flat index. */
int32_t fp4swift_quantize(const float *x, int64_t rows, int64_t cols,
                          const fp4swift_quantizer *q, uint8_t *codes, int64_t codes_len,
                          float *scales, uint8_t *scale_bytes, int64_t n_scales,
                          float *tensor_scale);
int32_t fp4swift_dequantize(const uint8_t *codes, int64_t codes_len, int64_t rows, int64_t cols,
                            const fp4swift_quantizer *q, const float *scales, int64_t n_scales,
                            float tensor_scale, float *out);

/* Blockwise normalized Walsh-Hadamard transform (§6) along the last dimension: every 1 x block
 * segment x of each row becomes x · diag(d) · H_block, H_block the Sylvester-Hadamard matrix / sqrt(block)
 * (H·H^T = I). block: a power of two dividing cols (32 default in Python). signs: NULL (d = all +1) or
 * block entries of exactly +1/-1. out may equal x (in place). */
int32_t fp4swift_hadamard(const float *x, int64_t rows, int64_t cols, int32_t block, const float *signs,
                          float *out);

/* Clip mask of quantizing x with q (§2, quest; Quartet's backward): bit i (flat index) is 1 when
 * |x_i / s| < fmax (strictly inside the range; nvfp4: |x_i * S / sb| < 6), 0 when it clipped or
 * its group holds NaN/inf; all-zero groups give 1. Packed LSB first: element i is bit (i % 8) of
 * mask[i / 8]; mask_len >= ceil(rows * cols / 8). */
int32_t fp4swift_clip_mask(const float *x, int64_t rows, int64_t cols, const fp4swift_quantizer *q,
                           uint8_t *mask, int64_t mask_len);

/* Fidelity (§5): out[0] cosine, out[1] MSE, out[2] SNR in dB; float64 accumulation. */
int32_t fp4swift_fidelity(const float *x, const float *x_hat, int64_t n, double *out);

/* DGE (§4): out[i] = f'(v[i]) (derivative) or the smooth surrogate f(v[i]), on an FP4 grid. */
int32_t fp4swift_dge_derivative(const float *v, int64_t n, int32_t format, float k, float clamp, float *out);
int32_t fp4swift_dge_surrogate(const float *v, int64_t n, int32_t format, float k, float *out);

/* OCC (§5). Groups: the whole tensor (per_row = 0, one threshold pair) or each row. */
int32_t fp4swift_occ_thresholds(const float *x, int64_t rows, int64_t cols, double alpha, int32_t per_row,
                                float *lo, float *hi, int64_t n_groups);
/* Upper bound on the residual's non-zeros. */
int32_t fp4swift_occ_residual_capacity(int64_t rows, int64_t cols, double alpha, int32_t per_row,
                                       int64_t *capacity);
/* x_clamped (may be NULL) and the residual x - x_clamped as CSR (indptr: rows + 1 entries). */
int32_t fp4swift_occ_clamp(const float *x, int64_t rows, int64_t cols, double alpha, int32_t per_row,
                           float *x_clamped, int64_t *indptr, int32_t *indices, float *values,
                           int64_t capacity, int64_t *nnz);
/* y[rows, n] += R · w^T, R the CSR [rows, cols], w row-major [n, cols] (the compensation term). */
int32_t fp4swift_csr_matmul_t(const int64_t *indptr, const int32_t *indices, const float *values,
                              int64_t nnz, int64_t rows, int64_t cols, const float *w, int64_t n, float *y);

/* FP4 linear layer (§6): X [T, K], W [N, K], bias [N], Y and dY [T, N]. */
typedef struct fp4swift_linear_recipe {
    int32_t quantize_input;    /* 0: X stays float32 */
    fp4swift_quantizer input;
    int32_t quantize_weight;
    fp4swift_quantizer weight;
    int32_t quantize_gradient; /* dY before both backward GEMMs */
    fp4swift_quantizer gradient;
    int32_t occ;               /* outlier clamping of X */
    int32_t occ_per_row;
    int32_t occ_compensate;
    double occ_alpha;
    int32_t dge;               /* 0: straight-through weight gradient */
    float dge_k;
    float dge_clamp;
    int32_t wgrad_hadamard;    /* 0, or the block (power of two) of a random Hadamard transform of the
                                  dW GEMM's operands along T: dW = Q_g(dY^T H_b) Q_x(X^T H_b)^T */
    uint64_t wgrad_hadamard_seed; /* fixes the signs d of H_b = diag(d) H */
    /* The backward GEMMs' own operands (FP8 backward under an FP4 forward, numerics.md §7), each a
     * FP4SWIFT_BACKWARD_* mode: W in dX = dY W, and X in dW = dY^T X (what forward saves). */
    int32_t backward_weight_mode;
    fp4swift_quantizer backward_weight;
    int32_t backward_input_mode;
    fp4swift_quantizer backward_input;
    int32_t gemm;              /* FP4SWIFT_GEMM_*: where the GEMMs run (§11) */
    int32_t backward_grouping; /* FP4SWIFT_BACKWARD_GROUPING_*: how the backward quantizers group */
} fp4swift_linear_recipe;

/* STORED: the backward quantizers group dY [T, N], W [N, K] and the saved X [T, K] as stored.
 * REDUCTION: each backward GEMM's operands are grouped along its reduction dimension (OCP MX
 * training): dX = Q(dY) Q(W^T)^T grouped along N; dW = Q(dY^T) Q(X_b^T)^T grouped along T (X_b
 * decoded from the saved codes, T zero-padded to whole groups). */
#define FP4SWIFT_BACKWARD_GROUPING_STORED 0
#define FP4SWIFT_BACKWARD_GROUPING_REDUCTION 1

/* Where a layer's GEMMs run. PACKED: every GEMM whose two operands are FP4 codes with scales
 * constant along its reduction dimension runs on the codes (§11), the others as SIMULATED;
 * SIMULATED: sgemm on the fake-quantized float32 operands (the results of ABI 5). */
#define FP4SWIFT_GEMM_SIMULATED 0
#define FP4SWIFT_GEMM_PACKED 1

#define FP4SWIFT_BACKWARD_FORWARD 0   /* the forward's W_q / X_q */
#define FP4SWIFT_BACKWARD_FLOAT32 1   /* W / X in float32 (X: pass x to the backward) */
#define FP4SWIFT_BACKWARD_QUANTIZE 2  /* the mode's own quantizer */

/* Caller-owned saved state: X_q codes + scales and the CSR residual. */
typedef struct fp4swift_linear_saved {
    uint8_t *x_codes;
    int64_t x_codes_len;
    float *x_scales;
    int64_t x_scales_len;
    float x_tensor_scale;      /* written by forward */
    int64_t *residual_indptr;  /* T + 1 entries when residual_capacity > 0 */
    int32_t *residual_indices;
    float *residual_values;
    int64_t residual_capacity;
    int64_t residual_nnz;      /* written by forward */
    uint8_t *x_scale_bytes;    /* e8m0 / nvfp4 rules: the stored scale bytes (then x_scales is unused) */
    int64_t x_scale_bytes_len;
} fp4swift_linear_saved;

/* Scales are saved in their stored form: x_scale_bytes_len bytes for rules that store a byte
 * (e8m0 exponents, nvfp4 e4m3 codes; then x_scales_len = 0), else x_scales_len floats. */
/* The built-in recipe called `name` ("fp32", "fp4-direct", "wang2025", "mxfp4", "nvfp4", "quartet",
 * "fp8", "zhou2025"; zhou2025's MLP recipe), as the Swift core defines it. X, W and backward operand
 * quantizers have nonfinite = RAISE, dY's PROPAGATE. "quartet" runs its own layer: its entry
 * holds the quantizers that layer uses (input/weight: QuEST, gradient: the backward's, seed 0). */
int32_t fp4swift_linear_recipe_named(const char *name, fp4swift_linear_recipe *out);
int32_t fp4swift_linear_saved_sizes(int64_t tokens, int64_t in_features, const fp4swift_linear_recipe *recipe,
                                    int64_t *x_codes_len, int64_t *x_scales_len, int64_t *residual_capacity,
                                    int64_t *x_scale_bytes_len);
/* bias may be NULL. */
int32_t fp4swift_linear_forward(const float *x, int64_t tokens, int64_t in_features,
                                const float *w, int64_t out_features, const float *bias,
                                const fp4swift_linear_recipe *recipe, float *y, fp4swift_linear_saved *saved);
/* The forward in two steps, for layers that read the same X under the same recipe (q/k/v
 * projections): prepare_input does the work on X alone (OCC; the saved codes, scales and
 * residual) and writes the forward GEMM's X operand, Q(X_c) + dX, to x_operand [tokens,
 * in_features]; forward_prepared computes y = x_operand W_q^T + bias. When the forward GEMM
 * runs on codes (fp4swift_linear_forward_on_codes), x_operand is neither written nor read
 * (NULL allowed) and forward_prepared reads X_q and the residual from `saved` instead; when
 * the recipe keeps X in float32, x_operand is x itself. Under gemm = PACKED with FP4 X and W
 * but a saved X of the recipe's own (zhou2025: FP8), x_operand holds X_q's packed codes and
 * float32 scales as bytes, not X_q's floats (still a [tokens, in_features] float buffer). Together they equal
 * fp4swift_linear_forward bit for bit, and one prepared state serves every sharing layer's
 * backward (it does not depend on W). */
int32_t fp4swift_linear_prepare_input(const float *x, int64_t tokens, int64_t in_features,
                                      const fp4swift_linear_recipe *recipe, float *x_operand,
                                      fp4swift_linear_saved *saved);
int32_t fp4swift_linear_forward_prepared(const float *x_operand, int64_t tokens, int64_t in_features,
                                         const float *w, int64_t out_features, const float *bias,
                                         const fp4swift_linear_recipe *recipe, float *y,
                                         const fp4swift_linear_saved *saved);
/* on_codes = 1 when the recipe's forward GEMM runs on the saved packed codes for this in_features
 * (§11): gemm = PACKED, X and W FP4 with groups along K that nest, and the saved X is the forward's.
 * (A recipe whose saved X is its own, zhou2025, reports 0: its codes travel in x_operand.) */
int32_t fp4swift_linear_forward_on_codes(int64_t in_features, const fp4swift_linear_recipe *recipe,
                                         int32_t *on_codes);
/* x: the forward input, needed (and read) only when the recipe keeps X in float32.
 * dx, dw, db may be NULL to skip that gradient. */
int32_t fp4swift_linear_backward(const float *dy, int64_t tokens, int64_t out_features,
                                 const float *x, const float *w, int64_t in_features,
                                 const fp4swift_linear_recipe *recipe, const fp4swift_linear_saved *saved,
                                 float *dx, float *dw, float *db);

/* Quartet linear layer (§6): X [T, K] with K a multiple of 32, W [N, K]. Forward rotates X and W
 * blockwise (Hadamard, 32) and quantizes them with QuEST; the caller-owned saved state is X_q as
 * packed e2m1 codes, its float scales and the clip mask m_x (1 bit per element, LSB first).
 * Backward draws its random signs and stochastic-rounding seeds from (seed, call): pass a fresh
 * call counter per backward. T and N need not be multiples of 32 (zero padding). dx, dw, db may be NULL.
 * gemm: FP4SWIFT_GEMM_PACKED (the GEMMs on codes, §11) or FP4SWIFT_GEMM_SIMULATED. */
int32_t fp4swift_quartet_saved_sizes(int64_t tokens, int64_t in_features, int64_t *x_codes_len,
                                     int64_t *x_scales_len, int64_t *x_mask_len);
int32_t fp4swift_quartet_forward(const float *x, int64_t tokens, int64_t in_features,
                                 const float *w, int64_t out_features, const float *bias, float *y,
                                 uint8_t *x_codes, int64_t x_codes_len, float *x_scales, int64_t x_scales_len,
                                 uint8_t *x_mask, int64_t x_mask_len, int32_t gemm);
int32_t fp4swift_quartet_backward(const float *dy, int64_t tokens, int64_t out_features,
                                  const float *w, int64_t in_features,
                                  const uint8_t *x_codes, int64_t x_codes_len, const float *x_scales,
                                  int64_t x_scales_len, const uint8_t *x_mask, int64_t x_mask_len,
                                  uint64_t seed, uint64_t call, float *dx, float *dw, float *db, int32_t gemm);

/* GEMM on packed FP4 codes (§11): C = A·B^T with exact integer dot products inside each scale
 * group and float32 across groups, in ascending order along K. */
#define FP4SWIFT_GEMM_PATH_DEFAULT (-1)  /* FP4SWIFT_GEMM_ISA if set, else the fastest this CPU runs */
#define FP4SWIFT_GEMM_PATH_GENERIC 0     /* portable */
#define FP4SWIFT_GEMM_PATH_AVX2 1        /* AVX2 + FMA: vpmaddubsw + vpmaddwd */
#define FP4SWIFT_GEMM_PATH_AVX512VNNI 2  /* AVX-512 VNNI: vpdpbusd */

/* One operand: a quantized row-major [rows, cols] tensor, cols = K. The quantizer's format
 * (FP4 only), granularity (tensor, row, block, block2d; not column) and scale rule describe
 * the codes; its rounding, seed and nonfinite fields are not read. */
typedef struct fp4swift_gemm_operand {
    const uint8_t *codes;       /* packed FP4 codes, ceil(rows * cols / 2) bytes (§1) */
    int64_t codes_len;
    int64_t rows;
    int64_t cols;
    fp4swift_quantizer quantizer;
    const float *scales;        /* one float scale per group (nvfp4: float(sb); nvfp4_torchao: P * sb);
                                 * NULL: read scale_bytes */
    const uint8_t *scale_bytes; /* e8m0* rules: exponent bytes; nvfp4*: e4m3 codes of sb */
    int64_t n_scales;
    float tensor_scale;         /* nvfp4 rule: S (x-hat = q * sb / S); nvfp4_torchao: P (x-hat = q * P * sb;
                                 * applied to scale_bytes only); 1 for every other rule */
} fp4swift_gemm_operand;

/* c [a.rows, b.rows] = A·B^T. path: FP4SWIFT_GEMM_PATH_*; one this CPU cannot run fails. */
int32_t fp4swift_gemm(const fp4swift_gemm_operand *a, const fp4swift_gemm_operand *b, int32_t path,
                      float *c, int64_t c_len);
/* The path FP4SWIFT_GEMM_PATH_DEFAULT resolves to now (fails if FP4SWIFT_GEMM_ISA is invalid). */
int32_t fp4swift_gemm_default_path(int32_t *path);
/* supported = 1 when this CPU runs `path`, else 0. */
int32_t fp4swift_gemm_path_supported(int32_t path, int32_t *supported);

#ifdef __cplusplus
}
#endif
#endif
