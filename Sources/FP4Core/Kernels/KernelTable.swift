/// Which fast kernel runs for a format or a scale rule, next to the reference it must equal
/// (ggml's `type_traits` / `type_traits_cpu`). The general path (`GridParameters` rounding,
/// `Quantizer.CodeWriter` codes, `ElementCodec` decode tables, `ScaleRule.groupScale`) is the
/// reference; a fast kernel is used only where this table names one, and KernelParityTests
/// runs each one against its reference (every float16 bit pattern, scaled, where that applies).
///
/// The entries are enums, not function values: the element loops are generic over the
/// kernel type so each one is specialized (a function value per element would not vectorize).

/// Scalar nearest-even rounding of a grid magnitude (the `MagnitudeRounder` the loops use).
enum NearestEvenKernel: Sendable {
    /// Reference, formats with mantissa bits: `GridParameters.roundNearestEvenMantissa`.
    case gridMantissa
    /// Reference, formats without mantissa bits (e3m0): `GridParameters.roundNearestEvenExponent`.
    case gridExponent
    /// e2m1: `E2M1Kernel.roundMagnitude` (add/subtract 2^(e+22)); reference `gridMantissa`.
    case e2m1Magic
}

/// Nearest-even codes written as packed FP4 bytes (`Quantizer.quantize`, `quantizeClamped`).
enum PackedCodeKernel: Sendable {
    /// Reference: rounder + `CodeWriter` one code per byte, then `packNibbles` (also FP8).
    case generic
    /// Any saturating FP4 grid: `FP4NearestEven` (midpoint compares), two codes per byte.
    case fp4Midpoints
    /// e2m1: `E2M1Kernel.encodeBlocks` (SIMD8) on blocks of 8, `FP4NearestEven` on the rest.
    case e2m1SIMD8
}

/// Stochastic codes written as packed FP4 bytes (`Quantizer.quantize` without x̂).
enum StochasticCodeKernel: Sendable {
    /// Reference: `StochasticRounder` / `LimitedStochasticRounder` + `CodeWriter`, one code per
    /// byte, then `packNibbles`.
    case generic
    /// e2m1, exact-probability draws: `E2M1Kernel.stochasticSegment` (SIMD8 on blocks of 8).
    case e2m1SIMD8

    static func of(_ q: Quantizer) -> StochasticCodeKernel {
        q.rounding == .stochastic && q.stochasticBits == 0 && q.format == .e2m1 ? .e2m1SIMD8 : .generic
    }
}

/// Packed FP4 codes to values (`Quantizer.dequantize`).
enum DecodeKernel: Sendable {
    /// Reference: `ElementCodec.decodeTable` lookups (also FP8).
    case table
    /// FP4: `FP4Decoder.value`, a select chain over the 8 magnitudes (vectorizes).
    case fp4Select
    /// e2m1: `FP4Decoder.valueE2M1`, arithmetic on the code bits.
    case e2m1Arithmetic
}

/// The kernels of one element format.
struct FormatKernels: Sendable {
    let nearestEven: NearestEvenKernel
    let packedNearestEven: PackedCodeKernel
    let decode: DecodeKernel

    /// The table, one row per format of `MiniFloatFormat.all`.
    static func of(_ f: MiniFloatFormat) -> FormatKernels {
        switch f.name {
        case "e2m1": return FormatKernels(nearestEven: .e2m1Magic, packedNearestEven: .e2m1SIMD8, decode: .e2m1Arithmetic)
        case "e1m2": return FormatKernels(nearestEven: .gridMantissa, packedNearestEven: .fp4Midpoints, decode: .fp4Select)
        case "e3m0": return FormatKernels(nearestEven: .gridExponent, packedNearestEven: .fp4Midpoints, decode: .fp4Select)
        default:  // e4m3, e5m2 (and the scale-only e8m0, which quantizers refuse)
            return FormatKernels(nearestEven: f.manBits > 0 ? .gridMantissa : .gridExponent, packedNearestEven: .generic,
                                 decode: .table)
        }
    }
}

/// The fused kernels of a scale rule. Which general path a rule takes follows from its
/// properties (`ScaleRule.isTwoLevel`, `needsOnlyGroupAmax`, `canClip`, `isPowerOfTwo`); the
/// rules below also have a fused per-block kernel for e2m1 groups of 32 after a Hadamard
/// rotation (the Quartet layer), whose reference is Hadamard.transform + the general Quantizer.
enum ScaleRuleKernel: Sendable {
    /// No fused kernel: `ScaleRule.groupScale` over the general scale pass.
    case general
    /// quest + RNE: `QuartetKernels.quest` / `quest4` (scale: `ScaleRule.questScale(std:fmax:)`).
    case questRotated32
    /// absmax_div3 + stochastic: `QuartetKernels.quantizeGradient` / `verticalUnit`
    /// (scale: `ScaleRule.absmaxDiv3Scale`).
    case absmaxDiv3StochasticRotated32

    static func of(_ rule: ScaleRule) -> ScaleRuleKernel {
        switch rule {
        case .quest: return .questRotated32
        case .absmaxDiv3: return .absmaxDiv3StochasticRotated32
        case .absmax, .pow2, .e8m0, .nvfp4, .e8m0Ceil, .e8m0Even, .e8m0Rceil, .nvfp4Torchao: return .general
        }
    }
}
