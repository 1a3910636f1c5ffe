/// Nearest-even coding for an FP4 format (saturating, 8 ascending magnitudes), by the 7
/// midpoints between neighbours: the code of a magnitude a is the number of midpoints it
/// passes, where a tie passes iff the lower code is odd (ties go to the even code), and its
/// grid value is the sum of the steps passed (exact: small dyadic numbers). This is the
/// RNE of numerics.md §1 with saturation, bit for bit, and compares + adds vectorize well with fewer
/// vector instructions than the general binade / round / code sequence.
struct FP4NearestEven {
    // Thresholds as bit patterns (non-negative floats order like their bits): a magnitude with
    // bits b passes midpoint k iff b > u_k, with u_k = bits(t_k) for ">" and bits(t_k) − 1 for
    // ">=". Steps d_k as bit patterns. All plain scalars, kept in registers in the loops.
    let u0, u1, u2, u3, u4, u5, u6: UInt32
    let d0, d1, d2, d3, d4, d5, d6: UInt32
    /// The format is e2m1: `Quantizer.codeSegmentPackedDivide` takes the SIMD8 kernel.
    let isE2M1: Bool

    init?(_ f: MiniFloatFormat) {
        guard f.isFP4, f.overflow == .saturate, f.maxFiniteMagnitudeCode == 7 else { return nil }
        var u = [UInt32](), d = [UInt32]()
        for k in 0..<7 {
            let lo = f.magnitude(ofCode: k), hi = f.magnitude(ofCode: k + 1), m = (lo + hi) / 2
            // The midpoint must be exact (always true for FP4 grids).
            guard lo < m, m < hi, m - lo == hi - m else { return nil }
            // Ties: codes 0, 2, 4, 6 stay (a > t), codes 1, 3, 5 go up (a >= t).
            u.append(k & 1 == 0 ? m.bitPattern : m.bitPattern - 1)
            d.append((hi - lo).bitPattern)
        }
        (u0, u1, u2, u3, u4, u5, u6) = (u[0], u[1], u[2], u[3], u[4], u[5], u[6])
        (d0, d1, d2, d3, d4, d5, d6) = (d[0], d[1], d[2], d[3], d[4], d[5], d[6])
        isE2M1 = FormatKernels.of(f).packedNearestEven == .e2m1SIMD8
    }

    /// The coder of `f` when the kernel table gives it a packed FP4 kernel, else nil (the
    /// generic one-code-per-byte path).
    static func forPackedCodes(_ f: MiniFloatFormat) -> FP4NearestEven? {
        FormatKernels.of(f).packedNearestEven == .generic ? nil : FP4NearestEven(f)
    }

    /// Code (sign bit 8 | magnitude code) and signed grid value of the grid-scaled value v.
    /// Integer arithmetic only (Bool selects would become a tree of branches).
    @inline(__always)
    func encode(_ v: Float) -> (code: UInt32, q: Float) {
        let sign = v.bitPattern & 0x8000_0000, b = v.bitPattern & 0x7FFF_FFFF
        // All ones when b > u (both < 2^31, so the borrow lands in the sign bit), else 0.
        @inline(__always) func passes(_ u: UInt32) -> UInt32 {
            UInt32(bitPattern: Int32(bitPattern: u &- b) >> 31)
        }
        let p0 = passes(u0), p1 = passes(u1), p2 = passes(u2), p3 = passes(u3)
        let p4 = passes(u4), p5 = passes(u5), p6 = passes(u6)
        let c = 0 &- (p0 &+ p1 &+ p2 &+ p3 &+ p4 &+ p5 &+ p6)
        // Sum of the steps passed, in code order (every partial sum is a grid value: exact).
        var r = Float(bitPattern: d0 & p0)
        r += Float(bitPattern: d1 & p1)
        r += Float(bitPattern: d2 & p2)
        r += Float(bitPattern: d3 & p3)
        r += Float(bitPattern: d4 & p4)
        r += Float(bitPattern: d5 & p5)
        r += Float(bitPattern: d6 & p6)
        return (c | (sign >> 28), Float(bitPattern: r.bitPattern | sign))
    }
}

/// FP4 decoding of a 4-bit code (sign bit 8 | magnitude code) by selects over the 8
/// magnitudes (sign-magnitude: code c + 8 is the magnitude of c with the sign bit set).
struct FP4Decoder {
    let m0, m1, m2, m3, m4, m5, m6, m7: Float
    /// The magnitudes are e2m1's (0, 0.5, 1, 1.5, 2, 3, 4, 6): `valueE2M1` applies (the
    /// table's `.e2m1Arithmetic`; checked against the format table here).
    let isE2M1: Bool

    init(_ table: UnsafeBufferPointer<Float>) {
        (m0, m1, m2, m3) = (table[0], table[1], table[2], table[3])
        (m4, m5, m6, m7) = (table[4], table[5], table[6], table[7])
        let e2m1: [Float] = [0, 0.5, 1, 1.5, 2, 3, 4, 6]
        isE2M1 = (0..<8).allSatisfy { table[$0].bitPattern == e2m1[$0].bitPattern }
    }

    /// `value` for e2m1, arithmetically: magnitude code m ≥ 2 is the float with bits
    /// (m + 252) << 22 (exponent m / 2 − 1, mantissa bit m & 1); m = 0, 1 are m · 0.5.
    @inline(__always)
    static func valueE2M1(_ c: UInt32) -> Float {
        let m = c & 7
        let v = m < 2 ? Float(m) * 0.5 : Float(bitPattern: (m &+ 252) << 22)
        return Float(bitPattern: v.bitPattern | ((c & 8) << 28))
    }

    @inline(__always)
    func value(_ c: UInt32) -> Float {
        // A select chain on the magnitude code (compiles to compare + blend per step, in
        // vectors; measured faster than a select tree on the code bits).
        let m = c & 7
        var v = m0
        v = m == 1 ? m1 : v
        v = m == 2 ? m2 : v
        v = m == 3 ? m3 : v
        v = m == 4 ? m4 : v
        v = m == 5 ? m5 : v
        v = m == 6 ? m6 : v
        v = m == 7 ? m7 : v
        return Float(bitPattern: v.bitPattern | ((c & 8) << 28))
    }
}
