/// How a scaled value is rounded to the element grid (spec §1).
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
}

/// The data a rounding loop needs from a format, read once outside the loop.
public struct GridParameters: Sendable {
    public let manBits: Int32
    public let minExponent: Int32
    public let maxValue: Float
    public let saturates: Bool

    public init(_ f: MiniFloatFormat) {
        manBits = Int32(f.manBits)
        minExponent = Int32(f.minExponent)
        maxValue = f.maxValue
        saturates = f.overflow == .saturate
    }

    /// Binade exponent used for the quantum of magnitude `a` (finite, ≥ 0):
    /// max(floor(log2 a), minExponent); zero and float32 subnormals land on minExponent.
    @inlinable @inline(__always)
    func binade(_ a: Float) -> Int32 {
        Swift.max(Int32(bitPattern: a.bitPattern >> 23) &- 127, minExponent)
    }

    /// Rounds a finite magnitude `a ≥ 0` to the grid. `u` is the uniform draw
    /// (used by `.stochastic` only). Returns a grid magnitude, or +inf when a
    /// non-saturating format overflows.
    @inlinable @inline(__always)
    public func roundMagnitude(_ a0: Float, _ mode: Rounding, _ u: Float) -> Float {
        let a = saturates ? Swift.min(a0, maxValue) : a0
        let e = binade(a)
        // q = a / quantum, quantum = 2^(e − manBits): both scalings are exact.
        let toUnits = Float(bitPattern: UInt32(bitPattern: 127 &+ manBits &- e) << 23)
        let toValue = Float(bitPattern: UInt32(bitPattern: 127 &- manBits &+ e) << 23)
        let q = a * toUnits
        let r: Float
        switch mode {
        case .nearestEven:
            if manBits > 0 {
                // The mantissa LSB is the code LSB, so ties-to-even on q is the spec's rule.
                r = q.rounded(.toNearestOrEven)
            } else {
                // manBits == 0 (e3m0): the code LSB is the exponent LSB.
                let fl = q.rounded(.down)
                let frac = q - fl
                let loOdd = fl != 0 && ((e &- minExponent &+ 1) & 1) != 0
                r = fl + ((frac > 0.5 || (frac == 0.5 && loOdd)) ? 1 : 0)
            }
        case .nearestAway:
            r = (q + 0.5).rounded(.down)  // q < 2^(manBits+1): q + 0.5 is exact
        case .stochastic:
            let fl = q.rounded(.down)
            r = fl + ((q - fl) > u ? 1 : 0)
        }
        let out = r * toValue
        if !saturates && out > maxValue { return .infinity }
        return saturates ? Swift.min(out, maxValue) : out
    }

    /// Magnitude code of a grid magnitude produced by `roundMagnitude`.
    @inlinable @inline(__always)
    public func magnitudeCode(_ r: Float, infCode: Int32) -> Int32 {
        if r == .infinity { return infCode }
        let e = binade(r)
        let toUnits = Float(bitPattern: UInt32(bitPattern: 127 &+ manBits &- e) << 23)
        let m = Int32(r * toUnits)
        let implicit: Int32 = 1 << manBits
        if m < implicit { return m }  // subnormal (or zero)
        return ((e &- minExponent &+ 1) << manBits) &+ (m &- implicit)
    }
}
