/// What a format does with magnitudes above its largest finite value.
public enum OverflowBehaviour: Sendable {
    /// Round to ±max (all FP4 formats and e4m3, numerics.md §1).
    case saturate
    /// IEEE-like: values that round above max become ±inf (e5m2).
    case infinity
}

/// A sign-magnitude minifloat described by data: exponent and mantissa widths, bias,
/// and how the top codes are used. One generic codec (`ElementCodec`) serves all of them.
///
/// Codes are `sign << (expBits + manBits) | magnitudeCode`, magnitude codes ascend with
/// value. A magnitude code splits into a biased exponent field `E` and a mantissa
/// field `m`: `E == 0` is subnormal, `m · 2^(1 − bias − manBits)`; otherwise
/// `(1 + m / 2^manBits) · 2^(E − bias)`.
public struct MiniFloatFormat: Sendable, Equatable {
    public let name: String
    public let expBits: Int
    public let manBits: Int
    public let bias: Int
    public let hasSign: Bool
    /// Largest magnitude code that is a finite value.
    public let maxFiniteMagnitudeCode: Int
    /// Magnitude code a NaN encodes to, if the format has NaN (e4m3: S.1111.111). Every
    /// code above the largest finite one that is not infinity decodes to NaN.
    public let nanMagnitudeCode: Int?
    /// Magnitude code of infinity, if the format has one (e5m2).
    public let infMagnitudeCode: Int?
    public let overflow: OverflowBehaviour
    /// Scale-only formats (e8m0) have no sign, no zero and no mantissa.
    public let isScaleOnly: Bool

    public static func == (a: MiniFloatFormat, b: MiniFloatFormat) -> Bool { a.name == b.name }

    /// Total bits per code.
    @inlinable public var bits: Int { (hasSign ? 1 : 0) + expBits + manBits }
    /// Exponent of the smallest normal binade, 1 − bias.
    @inlinable public var minExponent: Int { 1 - bias }
    /// Largest finite magnitude.
    public var maxValue: Float { magnitude(ofCode: maxFiniteMagnitudeCode) }
    /// Exponent of the largest binade, floor(log2 max) (the `emax` of the e8m0 scale rule).
    public var maxExponent: Int {
        (maxFiniteMagnitudeCode >> manBits) - bias
    }
    /// Number of distinct magnitude codes.
    @inlinable public var magnitudeCodeCount: Int { 1 << (expBits + manBits) }
    @inlinable public var signBit: Int { hasSign ? 1 << (expBits + manBits) : 0 }
    @inlinable public var isFP4: Bool { bits == 4 }

    /// The value of a magnitude code, computed from the field layout (exact in Float).
    public func magnitude(ofCode code: Int) -> Float {
        if code > maxFiniteMagnitudeCode { return code == infMagnitudeCode ? .infinity : .nan }
        if isScaleOnly { return exactPow2(code - bias) }
        let e = code >> manBits
        let m = code & ((1 << manBits) - 1)
        if e == 0 { return Float(m) * exactPow2(minExponent - manBits) }
        return Float((1 << manBits) + m) * exactPow2(e - bias - manBits)
    }

    /// Every format of numerics.md §1, in ABI order (the index is the C enum value).
    public static let all: [MiniFloatFormat] = [
        MiniFloatFormat(name: "e2m1", expBits: 2, manBits: 1, bias: 1, hasSign: true,
                        maxFiniteMagnitudeCode: 7, nanMagnitudeCode: nil, infMagnitudeCode: nil,
                        overflow: .saturate, isScaleOnly: false),
        MiniFloatFormat(name: "e1m2", expBits: 1, manBits: 2, bias: 0, hasSign: true,
                        maxFiniteMagnitudeCode: 7, nanMagnitudeCode: nil, infMagnitudeCode: nil,
                        overflow: .saturate, isScaleOnly: false),
        MiniFloatFormat(name: "e3m0", expBits: 3, manBits: 0, bias: 3, hasSign: true,
                        maxFiniteMagnitudeCode: 7, nanMagnitudeCode: nil, infMagnitudeCode: nil,
                        overflow: .saturate, isScaleOnly: false),
        MiniFloatFormat(name: "e4m3", expBits: 4, manBits: 3, bias: 7, hasSign: true,
                        maxFiniteMagnitudeCode: 0x7E, nanMagnitudeCode: 0x7F, infMagnitudeCode: nil,
                        overflow: .saturate, isScaleOnly: false),
        MiniFloatFormat(name: "e5m2", expBits: 5, manBits: 2, bias: 15, hasSign: true,
                        maxFiniteMagnitudeCode: 0x7B, nanMagnitudeCode: 0x7E, infMagnitudeCode: 0x7C,
                        overflow: .infinity, isScaleOnly: false),
        MiniFloatFormat(name: "e8m0", expBits: 8, manBits: 0, bias: 127, hasSign: false,
                        maxFiniteMagnitudeCode: 254, nanMagnitudeCode: 255, infMagnitudeCode: nil,
                        overflow: .saturate, isScaleOnly: true),
    ]

    public static let e2m1 = all[0]
    public static let e1m2 = all[1]
    public static let e3m0 = all[2]
    public static let e4m3 = all[3]
    public static let e5m2 = all[4]
    public static let e8m0 = all[5]

    public static func named(_ name: String) -> MiniFloatFormat? { all.first { $0.name == name } }
}

/// 2^e as a Float for e in [-149, 127]; 0 below, +inf above.
@inlinable public func exactPow2(_ e: Int) -> Float {
    if e > 127 { return .infinity }
    if e >= -126 { return Float(bitPattern: UInt32(e + 127) << 23) }
    if e >= -149 { return Float(bitPattern: UInt32(1) << UInt32(e + 149)) }
    return 0
}
