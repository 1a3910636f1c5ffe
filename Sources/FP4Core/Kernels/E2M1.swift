/// e2m1 nearest-even coding of 8 elements at a time (v = x / s, x̂ = q · s), the same bits as
/// `FP4NearestEven.encode` / `GridParameters.roundNearestEvenMantissa`: with a = min(|v|, 6)
/// and e = max(floor(log2 a), 0), the e2m1 quantum in binade e is 2^(e − 1), and
/// t = a + 2^(e + 22) rounds a to k quanta, ties to even (the IEEE add rounds at exactly that
/// bit), so t − 2^(e + 22) is the rounded magnitude (exact) and k = bits(t) & 7 (k ≤ 4). The
/// magnitude code is k + 2e (e = 0: k = 0 ... 4; e = 1: k = 2 ... 4; e = 2: k = 2, 3).
/// Only SIMD arithmetic, bitwise operators and shifts (SIMDLanes.swift: comparisons and
/// selects on SIMD types can compile to per-lane code). Reference:
/// `GridParameters.roundNearestEvenMantissa` + `magnitudeCode`; KernelParityTests compares them
/// on every float16 bit pattern.
enum E2M1Kernel {
    typealias K = QuartetKernels

    /// The scalar form of `encode`'s rounding: min(a0, 6) rounded to the e2m1 grid, ties to
    /// even, by adding and subtracting 2^(max(e, 0) + 22). Same bits as
    /// `GridParameters(.e2m1).roundNearestEvenMantissa`; loops over it vectorize.
    @inline(__always)
    static func roundMagnitude(_ a0: Float) -> Float {
        let a = Swift.min(a0, 6)
        let e = Int32(bitPattern: a.bitPattern & 0x7F80_0000) &- 0x3F80_0000
        let magic = Float(bitPattern: UInt32(bitPattern: (e & ~(e &>> 31)) &+ 0x4A80_0000))
        return (a + magic) - magic
    }

    /// Codes (sign bit 8 | magnitude code) and signed grid values of the grid-scaled v.
    @inline(__always)
    static func encode(_ v: SIMD8<Float>) -> (code: SIMD8<UInt32>, q: SIMD8<Float>) {
        let b = K.bits(v)
        let sign = b & 0x8000_0000
        let a = K.minNonNegative(K.float(b & 0x7FFF_FFFF), 6)
        let e = K.int(K.bits(a) & 0x7F80_0000) &- 0x3F80_0000
        let e0 = K.uint(e & ~(e &>> 31))  // max(e, 0) << 23
        let magic = K.float(e0 &+ 0x4A80_0000)  // 2^(max(e, 0) + 22)
        let t = a + magic
        let code = (K.bits(t) & 7) &+ (e0 &>> 22) | (sign &>> 28)
        return (code, K.float(K.bits(t - magic) | sign))
    }

    /// 8 codes packed two per byte.
    @inline(__always)
    static func pack(_ c: SIMD8<UInt32>) -> UInt32 {
        let w = unsafeBitCast(c, to: SIMD4<UInt64>.self)
        return unsafeBitCast(SIMD4<UInt8>(truncatingIfNeeded: w | (w &>> 28)), to: UInt32.self)
    }

    /// `blocks` blocks of 8: codes into codes[0 ..< 4 · blocks], x̂ into fake[0 ..< 8 · blocks].
    static func encodeBlocks(_ x: UnsafePointer<Float>, _ codes: UnsafeMutablePointer<UInt8>,
                             _ fake: UnsafeMutablePointer<Float>, _ blocks: Int, _ s: Float) {
        let sv = SIMD8<Float>(repeating: s)
        let src = UnsafeRawPointer(x), dst = UnsafeMutableRawPointer(fake), cp = UnsafeMutableRawPointer(codes)
        for k in 0..<blocks {
            let (c, q) = encode(src.loadUnaligned(fromByteOffset: 32 * k, as: SIMD8<Float>.self) / sv)
            cp.storeBytes(of: pack(c), toByteOffset: 4 * k, as: UInt32.self)
            dst.storeBytes(of: q * sv, toByteOffset: 32 * k, as: SIMD8<Float>.self)
        }
    }

    /// Codes of x · m (a two-level scale's ratio S / sb), eight elements at a time.
    static func encodeBlocks(_ x: UnsafePointer<Float>, _ codes: UnsafeMutablePointer<UInt8>, _ blocks: Int,
                             multiplier m: Float) {
        let mv = SIMD8<Float>(repeating: m)
        let src = UnsafeRawPointer(x), cp = UnsafeMutableRawPointer(codes)
        for k in 0..<blocks {
            let c = encode(src.loadUnaligned(fromByteOffset: 32 * k, as: SIMD8<Float>.self) * mv).code
            cp.storeBytes(of: pack(c), toByteOffset: 4 * k, as: UInt32.self)
        }
    }

    /// `encodeBlocks` without x̂.
    static func encodeBlocks(_ x: UnsafePointer<Float>, _ codes: UnsafeMutablePointer<UInt8>, _ blocks: Int, _ s: Float) {
        let sv = SIMD8<Float>(repeating: s)
        let src = UnsafeRawPointer(x), cp = UnsafeMutableRawPointer(codes)
        for k in 0..<blocks {
            let c = encode(src.loadUnaligned(fromByteOffset: 32 * k, as: SIMD8<Float>.self) / sv).code
            cp.storeBytes(of: pack(c), toByteOffset: 4 * k, as: UInt32.self)
        }
    }
}

/// `NearestEvenRounder` for e2m1 (same bits, fewer operations): `E2M1Kernel.roundMagnitude`.
struct E2M1NearestEvenRounder: MagnitudeRounder {
    @inline(__always) func round(_ a0: Float, index: Int) -> Float { E2M1Kernel.roundMagnitude(a0) }
}
