/// The e4m3 block-scale byte of the `nvfp4` rules, sb = e4m3_rne_sat(t) for one group, on the
/// float32 bits (reference: `ElementCodec.e4m3.encode` and `decode`, the general codec, which
/// KernelParityTests holds it to bit for bit). The general codec's per-group cost was ~9% of
/// the nvfp4 layer's forward+backward (four quantizations, ~1.3M blocks per call).
enum E4M3ScaleKernel {
    /// (code, float value) of the e4m3 RNE rounding of t ≥ +0 with saturation to 448; nil for
    /// NaN, −0 and negative t (the caller uses the general codec there).
    @inline(__always)
    static func nearestEven(_ t: Float) -> (code: UInt8, value: Float)? {
        guard t.bitPattern <= 0x7F80_0000 else { return nil }  // +0 ... +inf
        if t >= 448 { return (0x7E, 448) }  // the largest finite code (also +inf: saturation)
        let bits = t.bitPattern
        if bits >= 0x3C80_0000 {
            // Normal (t ≥ 2^−6): round float32's mantissa to 3 bits, ties to even; a carry moves
            // into the exponent. Rebias 127 → 7: code = (exponent|mantissa) − (120 << 3).
            let r = (bits &+ 0x7_FFFF &+ ((bits >> 20) & 1)) >> 20
            return (UInt8(truncatingIfNeeded: r &- 960), Float(bitPattern: r << 20))
        }
        // Subnormal steps of 2^−9 (t · 512 is exact; adding 2^23 rounds it to an integer, ties
        // to even). m = 8 is 2^−6, whose code is 8 as well.
        let m = (t * 512 + 0x1p23).bitPattern & 0x7F_FFFF
        return (UInt8(truncatingIfNeeded: m), Float(m) * 0x1p-9)
    }
}
