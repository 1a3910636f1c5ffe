/// How a group's scale follows from its absolute maximum (numerics.md §2).
public enum ScaleRule: Int, Sendable, CaseIterable {
    /// s = amax / fmax (Wang et al.).
    case absmax = 0
    /// s = 2^ceil(log2(amax / fmax)), exact (MS-AMP release).
    case pow2 = 1
    /// s = 2^(floor(log2 amax) − emax), clamped to 2^[−127, 127] (OCP MX).
    case e8m0 = 2
    /// Two levels: per-tensor float32 S and per-block e4m3 scale (NVIDIA TE formula).
    case nvfp4 = 3
    /// s = 2^floor(log2 amax) / 3, so amax / s ∈ [3, 6) (Quartet backward).
    case absmaxDiv3 = 4
    /// QuEST (Quartet forward): from the group's population standard deviation σ,
    /// s0 = (2.92247856 / fmax)·σ + 1e-8, s = 2^floor(log2 s0); values beyond fmax·s clip
    /// (see `Quantizer.clipMask`). Statistics in float64. Saturating formats only.
    case quest = 5
    /// torchao's `ScaleCalculationMode.CEIL`: s = 2^(ceil(log2 amax) − emax), the exponent
    /// read from amax's float32 bits (+1 when its mantissa is non-zero), clamped to [−127, 127].
    /// Byte-0 groups with amax > 0 divide by 2^−126 (torchao's float32 min-normal clamp) and
    /// decode with 2^−127.
    case e8m0Ceil = 6
    /// torchao's `ScaleCalculationMode.EVEN`: amax's float32 mantissa rounded to the element
    /// format's mantissa bits (half up, on the bits), then the floor rule of `e8m0`; byte 0 as
    /// in `e8m0Ceil`.
    case e8m0Even = 7
    /// cuBLAS / Transformer Engine / torchao `RCEIL`: d = amax / fmax (float32), b = e8m0 of d
    /// rounded up (exact: the biased exponent, +1 when the mantissa is non-zero; subnormal d
    /// ≤ 2^−127 gives 0, above gives 1), at most 254. Elements v = x · 2^(127 − b); byte 0
    /// multiplies by 1, so its group encodes signed zeros.
    case e8m0Rceil = 8
    /// torchao's two-level NVFP4 (`per_tensor_amax_to_scale` + `nvfp4_quantize`): P = amax_t /
    /// 2688, sb = e4m3(clamp((amax_b / 6) / P, 2^−6, 448)), v = x · ((1 / P) / sb), x̂ = q · (P · sb).
    case nvfp4Torchao = 9

    public var name: String {
        switch self {
        case .absmax: return "absmax"
        case .pow2: return "pow2"
        case .e8m0: return "e8m0"
        case .nvfp4: return "nvfp4"
        case .absmaxDiv3: return "absmax_div3"
        case .quest: return "quest"
        case .e8m0Ceil: return "e8m0_ceil"
        case .e8m0Even: return "e8m0_even"
        case .e8m0Rceil: return "e8m0_rceil"
        case .nvfp4Torchao: return "nvfp4_torchao"
        }
    }

    /// Every rule that stores an e8m0 exponent byte (s = 2^(b − 127)).
    @inlinable public var isE8M0: Bool {
        switch self {
        case .e8m0, .e8m0Ceil, .e8m0Even, .e8m0Rceil: return true
        default: return false
        }
    }

    /// Whether stored scales are one byte each (e8m0 exponents, nvfp4's e4m3 codes).
    @inlinable public var storesScaleBytes: Bool { isE8M0 || isTwoLevel }

    /// Two levels of scale (a per-tensor scale over per-group e4m3 scales: nvfp4,
    /// nvfp4_torchao): the tensor amax must be known first.
    @inlinable public var isTwoLevel: Bool { self == .nvfp4 || self == .nvfp4Torchao }

    /// Transformer Engine's two-level form (nvfp4): v = x · (S / sb), x̂ = (q · sb) / S, so the
    /// element loops take `TwoLevelScaling` and decoding needs S. nvfp4_torchao's groups
    /// carry a multiplier instead (`GroupScale.multiplier`) and decode as x̂ = q · s.
    @inlinable public var dividesByTensorScale: Bool { self == .nvfp4 }

    /// The tensor scale a packed GEMM divides by (x̂ = q · s / S): S for nvfp4, 1 otherwise
    /// (nvfp4_torchao's float scales already hold P · sb).
    @inlinable public func gemmTensorScale(_ s: Float) -> Float { dividesByTensorScale ? s : 1 }

    /// The group's scale follows from the group's amax alone (not from other statistics, as
    /// quest's σ, nor from the tensor amax, as nvfp4's S): one sweep can compute a row's
    /// amax, its scales and its elements (the fused fake-quantize and clamp paths).
    @inlinable public var needsOnlyGroupAmax: Bool { !isTwoLevel && self != .quest }

    /// Whether values can clip (|x / s| > fmax) on purpose: e8m0 and nvfp4 scales saturate,
    /// quest clips by design. The others keep amax / s ≤ fmax by construction.
    /// (e8m0_even floors like e8m0 after rounding amax; nvfp4_torchao's sb rounds like nvfp4's.
    /// e8m0_ceil and e8m0_rceil round the scale up.)
    @inlinable public var canClip: Bool {
        switch self {
        case .e8m0, .nvfp4, .quest, .e8m0Even, .nvfp4Torchao: return true
        case .absmax, .pow2, .absmaxDiv3, .e8m0Ceil, .e8m0Rceil: return false
        }
    }

    /// Whether amax / s ≤ fmax holds by construction, so nothing in the group clips and a
    /// float32 |x / s| just above fmax is rounding of the scale (e1m2 absmax: 3.5000002),
    /// not saturation (DGE then counts |v| as fmax, numerics.md §4).
    @inlinable public var neverClips: Bool { !canClip }

    /// Scales are powers of two (exact products, no rounding in x / s or q · s).
    @inlinable public var isPowerOfTwo: Bool { self == .pow2 || isE8M0 || self == .quest }
}

/// A group's scale as the element loop applies it. Most rules divide (v = x / s,
/// x̂ = q · s). nvfp4 multiplies by S / sb and decodes as (q · sb) / S, in the order
/// numerics.md §2 gives, so a float32 numpy reference reproduces every bit.
public struct GroupScale: Sendable {
    /// Divide rules: s. nvfp4: float(sb).
    public var scale: Float
    /// nvfp4 only: the per-tensor encode scale S (1 otherwise).
    public var tensorScale: Float
    /// The stored byte (e8m0 exponent, nvfp4 e4m3 code), 0 for float-scale rules.
    public var byte: UInt8
    /// True when the group encodes zeros (amax 0, or an nvfp4 block scale of 0).
    public var isZero: Bool
    /// 0, or the factor of v = x · multiplier when a group encodes by multiplying and decodes
    /// as x̂ = q · scale (nvfp4_torchao: (1 / P) / sb and P · sb; the byte-0 groups of
    /// e8m0_ceil / e8m0_even: 2^126 and 2^−127). `MultiplyScaling`.
    public var multiplier: Float = 0
}

extension ScaleRule {
    /// Per-tensor scale S for nvfp4 from the tensor amax: 448·6 / amax, or 1 when amax
    /// is 0 or the division overflows. Other rules: 1.
    /// nvfp4_torchao: P = amax / 2688 (torchao's `per_tensor_amax_to_scale`), or 1 when
    /// (1 / P) · 2^6, the largest element multiplier a block can get, is not finite (amax 0 or
    /// below about 2^−110.6, where torchao's arithmetic gives inf and NaN).
    public func tensorScale(tensorAmax: Float) -> Float {
        switch self {
        case .nvfp4:
            let s = Float(448 * 6) / tensorAmax
            return (tensorAmax == 0 || !s.isFinite) ? 1 : s
        case .nvfp4Torchao:
            let p = tensorAmax / Float(448 * 6)
            return ((1 / p) * 64).isFinite ? p : 1
        default:
            return 1
        }
    }

    /// The scale of one group with absolute maximum `amax` (finite, ≥ 0). `std`, the
    /// group's population standard deviation, is read by `quest` only.
    public func groupScale(amax: Float, format: MiniFloatFormat, tensorScale S: Float, std: Double = 0) -> GroupScale {
        let zero = GroupScale(scale: 1, tensorScale: 1, byte: 0, isZero: true)
        switch self {
        case .absmax:
            let s = amax / format.maxValue
            // An amax so small that amax / fmax underflows to 0 is treated as an all-zero group.
            return s > 0 ? GroupScale(scale: s, tensorScale: 1, byte: 0, isZero: false) : zero
        case .pow2:
            guard amax > 0 else { return zero }
            let fmax = format.maxValue
            // Smallest k with amax ≤ fmax · 2^k; Double makes the products exact.
            var k = exponentFloor(amax) - exponentFloor(fmax)
            while Double(amax) > Double(fmax) * pow2d(k) { k += 1 }
            while Double(amax) <= Double(fmax) * pow2d(k - 1) { k -= 1 }
            k = Swift.min(Swift.max(k, -149), 127)
            return GroupScale(scale: exactPow2(k), tensorScale: 1, byte: 0, isZero: false)
        case .e8m0:
            guard amax > 0 else {
                return GroupScale(scale: exactPow2(-127), tensorScale: 1, byte: 0, isZero: true)
            }
            let e = Swift.min(Swift.max(exponentFloor(amax) - format.maxExponent, -127), 127)
            return GroupScale(scale: exactPow2(e), tensorScale: 1, byte: UInt8(e + 127), isZero: false)
        case .nvfp4:
            let t = (amax * S) / 6
            if let e = E4M3ScaleKernel.nearestEven(t) {
                return GroupScale(scale: e.value, tensorScale: S, byte: e.code, isZero: e.value == 0)
            }
            let e4m3 = ElementCodec.e4m3
            let code = e4m3.encode(t) ?? 0
            let sb = e4m3.decode(code)
            return GroupScale(scale: sb, tensorScale: S, byte: code, isZero: sb == 0)
        case .absmaxDiv3:
            guard amax > 0 else { return zero }
            let s = ScaleRule.absmaxDiv3Scale(amax: amax)
            return s > 0 ? GroupScale(scale: s, tensorScale: 1, byte: 0, isZero: false) : zero
        case .quest:
            guard amax > 0 else { return zero }
            return GroupScale(scale: ScaleRule.questScale(std: std, format: format), tensorScale: 1, byte: 0, isZero: false)
        case .e8m0Ceil, .e8m0Even:
            // torchao's to_mx (FLOOR / CEIL / EVEN): the exponent field of amax's bits, minus emax.
            let bits = amax.bitPattern & 0x7FFF_FFFF
            let field: Int
            if self == .e8m0Ceil {
                field = Int(bits >> 23) + ((bits & 0x7F_FFFF) != 0 ? 1 : 0)
            } else {
                // Round the mantissa to the element's mantissa bits (add half an LSB, keep the
                // exponent; a carry out of exponent 254 reads as 255, as in torchao).
                let add: UInt32 = 1 << UInt32(22 - format.manBits)
                field = Int((bits &+ add) >> 23)
            }
            let e = Swift.min(Swift.max(field - 127 - format.maxExponent, -127), 127)
            guard amax > 0 else {
                return GroupScale(scale: exactPow2(-127), tensorScale: 1, byte: 0, isZero: true)
            }
            if e == -127 {
                // Byte 0: torchao divides by max(2^−127, float32 min normal) = 2^−126 and decodes
                // with 2^−127 (its get_fp_scale).
                return GroupScale(scale: exactPow2(-127), tensorScale: 1, byte: 0, isZero: false, multiplier: exactPow2(126))
            }
            return GroupScale(scale: exactPow2(e), tensorScale: 1, byte: UInt8(e + 127), isZero: false)
        case .e8m0Rceil:
            let b = Int(ScaleRule.e8m0RoundUp(amax / format.maxValue))
            // Byte 0 multiplies by 1 (Transformer Engine's exp2f_rcp, torchao's rcp): with
            // |x| ≤ fmax · 2^−127 every element rounds to a signed zero.
            return GroupScale(scale: exactPow2(b - 127), tensorScale: 1, byte: UInt8(b), isZero: b == 0)
        case .nvfp4Torchao:
            let e4m3 = ElementCodec.e4m3
            let t = (amax / 6) / S
            let code = e4m3.encode(Swift.min(Swift.max(t, 0x1p-6), 448)) ?? 0
            let sb = e4m3.decode(code)
            return GroupScale(scale: S * sb, tensorScale: S, byte: code, isZero: false, multiplier: (1 / S) / sb)
        }
    }

    /// The e8m0 byte of a finite d ≥ 0 rounded up (cvt.rp.satfinite.ue8m0 semantics): the
    /// biased exponent, +1 when the mantissa is non-zero, at most 254; a subnormal d gives 0
    /// when d ≤ 2^−127 and 1 above; 0 gives 0.
    @inlinable public static func e8m0RoundUp(_ d: Float) -> UInt8 {
        let bits = d.bitPattern & 0x7FFF_FFFF
        let field = bits >> 23, mantissa = bits & 0x7F_FFFF
        if field == 0 { return mantissa > 0x40_0000 ? 1 : 0 }
        if field >= 254 { return 254 }
        return UInt8(field + (mantissa != 0 ? 1 : 0))
    }

    /// QuEST's scale from σ: s0 = (2.92247856 / fmax)·σ + 1e-8 in float64 (for e2m1 the
    /// (2.92247856 / 6)·σ of numerics.md §2: the clip range 2.92σ is the MSE-optimal one for a
    /// Gaussian), s = 2^floor(log2 s0), at most 2^127. s0 ≥ 1e-8, so s ≥ 2^−27.
    public static func questScale(std: Double, format: MiniFloatFormat) -> Float {
        questScale(std: std, fmax: Double(format.maxValue))
    }

    /// `questScale(std:format:)` with fmax given (the quartet kernels pass 6: no format lookup).
    @inlinable @inline(__always)
    public static func questScale(std: Double, fmax: Double) -> Float {
        let s0 = (2.92247856 / fmax) * std + 1e-8
        guard s0.isFinite else { return exactPow2(127) }
        // s0 ≥ 1e-8 is a normal double: its exponent is the biased field − 1023.
        let e = Int((s0.bitPattern >> 52) & 0x7FF) - 1023
        return exactPow2(Swift.min(e, 127))
    }

    /// absmax_div3's s = 2^floor(log2 amax) / 3 for a finite amax > 0 (0 only if it underflows).
    @inlinable @inline(__always)
    public static func absmaxDiv3Scale(amax: Float) -> Float {
        exactPow2(exponentFloor(amax)) / 3
    }
}

/// floor(log2 x) for finite x > 0, including float32 subnormals.
@inlinable public func exponentFloor(_ x: Float) -> Int {
    let bits = x.bitPattern & 0x7FFF_FFFF
    let biased = Int(bits >> 23)
    if biased != 0 { return biased - 127 }
    return -127 - (bits.leadingZeroBitCount - 9)
}

@inlinable func pow2d(_ e: Int) -> Double {
    Double(sign: .plus, exponent: e, significand: 1)
}
