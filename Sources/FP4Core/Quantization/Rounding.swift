/// How a scaled value is rounded to the element grid (numerics.md §1).
public enum Rounding: Int, Sendable, CaseIterable {
    /// Nearest grid value; exact midpoints go to the even magnitude code.
    case nearestEven = 0
    /// Nearest grid value; exact midpoints go away from zero.
    case nearestAway = 1
    /// Up with probability (|v| − lo) / (hi − lo), from a counter-based draw.
    case stochastic = 2

    public var name: String {
        switch self {
        case .nearestEven: return "nearest_even"
        case .nearestAway: return "nearest_away"
        case .stochastic: return "stochastic"
        }
    }
}

/// Counter-based uniform draws: the draw for element `index` is a pure function of
/// (seed, index), so results never depend on thread count or chunking.
///
/// SplitMix64: the key is `mix(seed)`, the counter is `key + (index + 1) · γ`,
/// and the output is the top 24 bits of `mix(counter)`, scaled to [0, 1).
public enum CounterRNG {
    public static let gamma: UInt64 = 0x9E37_79B9_7F4A_7C15

    @inlinable @inline(__always)
    public static func mix(_ z0: UInt64) -> UInt64 {
        var z = z0
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    @inlinable @inline(__always)
    public static func key(seed: UInt64) -> UInt64 { mix(seed) }

    /// Uniform in [0, 1) on a 2^-24 grid.
    @inlinable @inline(__always)
    public static func uniform(key: UInt64, index: Int) -> Float {
        let z = mix(key &+ (UInt64(bitPattern: Int64(index)) &+ 1) &* gamma)
        return Float(UInt32(truncatingIfNeeded: z >> 40)) * 0x1p-24
    }

    /// The top `count` (1...64) bits of the same 64-bit output `uniform` reads, as an integer
    /// in [0, 2^count): for count ≤ 24, `uniform` = bits(24) · 2^−24 and bits(r) = bits(24) >> (24 − r).
    @inlinable @inline(__always)
    public static func bits(key: UInt64, index: Int, count: Int) -> UInt64 {
        let z = mix(key &+ (UInt64(bitPattern: Int64(index)) &+ 1) &* gamma)
        return z >> UInt64(64 - count)
    }
}

/// The data a rounding loop needs from a format, read once outside the loop.
///
/// Rounding is done in "units" of the binade's quantum: with e = max(floor(log2 a), emin),
/// quantum = 2^(e − manBits) and q = a / quantum (exact), grid values are the integers q.
public struct GridParameters: Sendable {
    public let manBits: Int32
    public let minExponent: Int32
    public let maxValue: Float
    public let saturates: Bool
    /// Inputs are clamped to this before rounding: max for saturating formats, +inf otherwise.
    public let clampLimit: Float
    /// Rounded values above this become +inf: max for IEEE-like formats, +inf otherwise.
    public let overflowLimit: Float

    /// `saturating`: round to ±max above the range even for a format with infinity (e5m2), as
    /// every quantizer does (numerics.md §1: "satfinite"); the bare element codec keeps IEEE overflow.
    public init(_ f: MiniFloatFormat, saturating: Bool = false) {
        manBits = Int32(f.manBits)
        minExponent = Int32(f.minExponent)
        maxValue = f.maxValue
        saturates = saturating || f.overflow == .saturate
        clampLimit = saturates ? maxValue : .infinity
        overflowLimit = saturates ? .infinity : maxValue
    }

    /// Binade exponent used for the quantum of magnitude `a` (finite, ≥ 0):
    /// max(floor(log2 a), minExponent); zero and float32 subnormals land on minExponent.
    @inlinable @inline(__always)
    func binade(_ a: Float) -> Int32 {
        Swift.max(Int32(bitPattern: a.bitPattern >> 23) &- 127, minExponent)
    }

    /// 2^(manBits − e): multiplying by it turns a magnitude into quantum units (exact).
    @inlinable @inline(__always)
    func toUnits(_ e: Int32) -> Float { Float(bitPattern: UInt32(bitPattern: 127 &+ manBits &- e) << 23) }

    /// 2^(e − manBits): the quantum of binade e.
    @inlinable @inline(__always)
    func toValue(_ e: Int32) -> Float { Float(bitPattern: UInt32(bitPattern: 127 &- manBits &+ e) << 23) }

    /// Back from units to a magnitude, with IEEE overflow to +inf for non-saturating formats.
    @inlinable @inline(__always)
    func finish(_ r: Float, _ e: Int32) -> Float {
        let out = r * toValue(e)
        return out > overflowLimit ? .infinity : out
    }

    /// Nearest, ties to even, for formats with mantissa bits: the mantissa LSB is the code
    /// LSB, so IEEE ties-to-even on the unit count is exactly the spec's rule.
    @inlinable @inline(__always)
    public func roundNearestEvenMantissa(_ a0: Float) -> Float {
        let a = Swift.min(a0, clampLimit), e = binade(a)
        return finish((a * toUnits(e)).rounded(.toNearestOrEven), e)
    }

    /// Nearest, ties to the even magnitude code, for formats without mantissa bits (e3m0),
    /// where the code LSB is the exponent LSB: in binade e the lower neighbour (q = 1) has
    /// code e − emin + 1; below the smallest normal the lower neighbour is code 0 (even).
    @inlinable @inline(__always)
    public func roundNearestEvenExponent(_ a0: Float) -> Float {
        let a = Swift.min(a0, clampLimit), e = binade(a)
        let q = a * toUnits(e)
        let fl = q.rounded(.down), frac = q - fl
        let loOdd = fl >= 1 && ((e &- minExponent &+ 1) & 1) != 0
        let up = frac > 0.5 || (frac == 0.5 && loOdd)
        return finish(fl + (up ? 1 : 0), e)
    }

    /// Nearest, ties away from zero. (floor(q + ½) would be wrong below q = ½, where the
    /// addition rounds; comparing the exact fraction is not.)
    @inlinable @inline(__always)
    public func roundNearestAway(_ a0: Float) -> Float {
        let a = Swift.min(a0, clampLimit), e = binade(a)
        let q = a * toUnits(e)
        let fl = q.rounded(.down)
        return finish(fl + ((q - fl) >= 0.5 ? 1 : 0), e)
    }

    /// Up with probability (a − lo) / (hi − lo) = frac(q), given a uniform draw u ∈ [0, 1).
    @inlinable @inline(__always)
    public func roundStochastic(_ a0: Float, _ u: Float) -> Float {
        let a = Swift.min(a0, clampLimit), e = binade(a)
        let q = a * toUnits(e)
        let fl = q.rounded(.down)
        return finish(fl + ((q - fl) > u ? 1 : 0), e)
    }

    /// Stochastic rounding with `count` random bits, as hardware does it: the fraction of a
    /// grid step below the kept precision is truncated to `count` bits (F = floor(frac · 2^r)),
    /// the random integer R ∈ [0, 2^r) is added, and a carry out rounds up: up iff F + R ≥ 2^r.
    /// P(up) = F / 2^r ≤ frac, so E[q] falls short of v by frac − F / 2^r < 2^−r steps.
    @inlinable @inline(__always)
    public func roundStochastic(_ a0: Float, randomBits R: UInt64, count r: Int) -> Float {
        let a = Swift.min(a0, clampLimit), e = binade(a)
        let q = a * toUnits(e)
        let fl = q.rounded(.down)
        // frac · 2^r is exact (a power-of-two product of an exact difference); F < 2^r ≤ 2^32.
        let one = Float(sign: .plus, exponent: r, significand: 1)
        let f = ((q - fl) * one).rounded(.down)
        // (q = +inf, only for a non-saturating format's overflow, gives NaN here: no carry.)
        let F: UInt64 = f >= 0 && f < one ? UInt64(f) : 0
        return finish(fl + (F &+ R >= (UInt64(1) << UInt64(r)) ? 1 : 0), e)
    }

    /// Rounds a finite magnitude `a ≥ 0` to the grid (`u`: the draw of `.stochastic`).
    /// Returns a grid magnitude, or +inf when a non-saturating format overflows.
    @inlinable
    public func roundMagnitude(_ a: Float, _ mode: Rounding, _ u: Float) -> Float {
        switch mode {
        case .nearestEven: return manBits > 0 ? roundNearestEvenMantissa(a) : roundNearestEvenExponent(a)
        case .nearestAway: return roundNearestAway(a)
        case .stochastic: return roundStochastic(a, u)
        }
    }

    /// Magnitude code of a grid magnitude produced by the rounding functions (branch-free,
    /// so code loops vectorize): subnormal units are the code; otherwise the exponent
    /// field goes above the mantissa field; +inf maps to `infCode`.
    @inlinable @inline(__always)
    public func magnitudeCode(_ r: Float, infCode: Int32) -> Int32 {
        let e = binade(r)
        let m = smallInteger(Swift.min(r, maxValue) * toUnits(e))
        let implicit: Int32 = 1 << manBits
        let normal = ((e &- minExponent &+ 1) << manBits) &+ (m &- implicit)
        let code = m < implicit ? m : normal
        return r > maxValue ? infCode : code
    }
}

/// An integer-valued Float in [0, 2^23) as Int32, without the range check (and trap) of
/// Int32(_: Float) that keeps loops from vectorizing: adding 2^23 puts the integer in the
/// low mantissa bits.
@inlinable @inline(__always)
func smallInteger(_ f: Float) -> Int32 {
    Int32(bitPattern: (f + 0x1p23).bitPattern & 0x7F_FFFF)
}
