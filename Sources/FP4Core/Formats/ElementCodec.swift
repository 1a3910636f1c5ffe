/// The generic element codec: encodes unscaled values to codes and decodes codes, for
/// any `MiniFloatFormat`. All formats share this code; only their data differs.
public struct ElementCodec: Sendable {
    public let format: MiniFloatFormat
    public let grid: GridParameters
    /// Value of every code (2^bits entries), including the sign half.
    public let decodeTable: [Float]

    public init(_ format: MiniFloatFormat) {
        self.format = format
        self.grid = GridParameters(format)
        let n = format.magnitudeCodeCount
        var table = [Float](repeating: 0, count: format.hasSign ? 2 * n : n)
        for c in 0..<n {
            let m = format.magnitude(ofCode: c)
            table[c] = m
            if format.hasSign { table[n + c] = -m }
        }
        self.decodeTable = table
    }

    /// One codec per format, in `MiniFloatFormat.all` order.
    public static let all: [ElementCodec] = MiniFloatFormat.all.map(ElementCodec.init)
    public static func of(_ f: MiniFloatFormat) -> ElementCodec {
        all.first { $0.format == f } ?? ElementCodec(f)
    }
    /// The codec of nvfp4 block scales and FP8 operands.
    public static let e4m3 = ElementCodec(.e4m3)

    @inlinable var infCode: Int32 { Int32(format.infMagnitudeCode ?? format.maxFiniteMagnitudeCode) }

    /// Code of an element that is already on the grid scale (numerics.md §1).
    /// Non-finite input: NaN becomes the format's NaN code if it has one, ±inf its inf code
    /// or ±max; formats without either return nil (the caller reports the error).
    @inlinable
    public func encode(_ v: Float, rounding: Rounding = .nearestEven, uniform u: Float = 0) -> UInt8? {
        let sign: Int32 = (v.sign == .minus && format.hasSign) ? Int32(format.signBit) : 0
        if v.isNaN {
            guard let nan = format.nanMagnitudeCode else { return nil }
            return UInt8(truncatingIfNeeded: sign | Int32(nan))
        }
        if format.isScaleOnly { return encodeScale(v) }
        if v.isInfinite {
            switch format.overflow {
            case .saturate:
                return format.nanMagnitudeCode == nil && format.isFP4
                    ? nil
                    : UInt8(truncatingIfNeeded: sign | Int32(format.maxFiniteMagnitudeCode))
            case .infinity:
                return UInt8(truncatingIfNeeded: sign | infCode)
            }
        }
        let r = grid.roundMagnitude(abs(v), rounding, u)
        return UInt8(truncatingIfNeeded: sign | grid.magnitudeCode(r, infCode: infCode))
    }

    /// e8m0 (no sign, no zero): the nearest power of two, ties up (as ml_dtypes'
    /// float8_e8m0fnu), clamped below at 2^−127. Zero, negatives, NaN, inf and values
    /// rounding above 2^127 give the NaN code 255.
    @inlinable func encodeScale(_ v: Float) -> UInt8? {
        guard v > 0, v.isFinite else { return 255 }
        let bits = v.bitPattern
        let biased = Int(bits >> 23)
        if biased == 0 { return 0 }  // float32 subnormal: below 2^-126, clamps to 2^-127
        let e = biased - 127 + ((bits & 0x40_0000) != 0 ? 1 : 0)
        if e > 127 { return 255 }
        return UInt8(Swift.max(e, -127) + 127)
    }

    @inlinable
    public func decode(_ code: UInt8) -> Float {
        let c = Int(code)
        return c < decodeTable.count ? decodeTable[c] : .nan
    }
}
