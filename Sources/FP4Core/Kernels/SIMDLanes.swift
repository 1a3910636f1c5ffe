/// Lane helpers of the SIMD kernels, written with SIMD operators only (arithmetic, bitwise,
/// shifts, conversions: each one LLVM instruction). Swift's SIMD comparisons,
/// `replacing(with:where:)`, `pointwiseMin` and lane loops (`r[i] = ...`) do compile to vector
/// code in a small function, but inside large inlined kernels they stayed per-lane loops
/// through the stack, 5-10x slower (docs/development.md). Comparisons are therefore done on
/// bit patterns: for floats ≥ +0 (including +inf) the bit patterns order like the values, and
/// every difference below fits in an Int32. They are static members of `QuartetKernels`
/// (`E2M1Kernel` reaches them as `K.`): as protocol-extension members shared by both, the same
/// code lost inlining in the quartet kernels (callgrind: quartet forward 54.8M -> 68.1M
/// instructions at 256x512x256).
extension QuartetKernels {
    @inline(__always) static func bits(_ v: SIMD8<Float>) -> SIMD8<UInt32> { unsafeBitCast(v, to: SIMD8<UInt32>.self) }
    @inline(__always) static func float(_ b: SIMD8<UInt32>) -> SIMD8<Float> { unsafeBitCast(b, to: SIMD8<Float>.self) }
    @inline(__always) static func int(_ b: SIMD8<UInt32>) -> SIMD8<Int32> { unsafeBitCast(b, to: SIMD8<Int32>.self) }
    @inline(__always) static func uint(_ b: SIMD8<Int32>) -> SIMD8<UInt32> { unsafeBitCast(b, to: SIMD8<UInt32>.self) }

    /// All ones in lanes where a < b, else 0 (a, b in 0 ... 2^31 − 1).
    @inline(__always)
    static func lessMask(_ a: SIMD8<UInt32>, _ b: SIMD8<UInt32>) -> SIMD8<UInt32> {
        uint((int(a) &- int(b)) &>> 31)
    }

    /// |v| (clears the sign bit, like `abs`).
    @inline(__always) static func magnitude(_ v: SIMD8<Float>) -> SIMD8<Float> { float(bits(v) & 0x7FFF_FFFF) }

    /// min(a, m) = (m < a ? m : a) for a ≥ +0 (`Swift.min(a, clampLimit)`).
    @inline(__always)
    static func minNonNegative(_ a: SIMD8<Float>, _ m: Float) -> SIMD8<Float> {
        let ab = bits(a), mb = SIMD8<UInt32>(repeating: m.bitPattern)
        let take = lessMask(mb, ab)
        return float((mb & take) | (ab & ~take))
    }

    /// Round to nearest, ties to even, for 0 ≤ q < 2^22: adding 2^23 leaves no fraction bits
    /// and rounds (IEEE default mode), subtracting it is exact. Same as `rounded(.toNearestOrEven)`.
    @inline(__always)
    static func roundEven(_ q: SIMD8<Float>) -> SIMD8<Float> {
        let m = SIMD8<Float>(repeating: 0x1p23)
        return (q + m) - m
    }

    /// floor(q) for 0 ≤ q < 2^22: the nearest integer, less one where it came out above q.
    @inline(__always)
    static func floorNonNegative(_ q: SIMD8<Float>) -> SIMD8<Float> {
        let r = roundEven(q)
        return r - float(lessMask(bits(q), bits(r)) & Float(1).bitPattern)
    }

    /// max |x| over the block as a bit pattern (≥ 0x7F80_0000: the block holds NaN or ±inf).
    @inline(__always)
    static func amaxBits(_ x: Block32) -> UInt32 {
        @inline(__always) func mx(_ a: SIMD8<UInt32>, _ b: SIMD8<UInt32>) -> SIMD8<UInt32> {
            a ^ ((a ^ b) & lessMask(a, b))
        }
        let k = SIMD8<UInt32>(repeating: 0x7FFF_FFFF)
        let m = mx(mx(bits(x.v0) & k, bits(x.v1) & k), mx(bits(x.v2) & k, bits(x.v3) & k))
        let h = m.lowHalf, g = m.highHalf
        let a = h[0] > g[0] ? h[0] : g[0], b = h[1] > g[1] ? h[1] : g[1]
        let c = h[2] > g[2] ? h[2] : g[2], d = h[3] > g[3] ? h[3] : g[3]
        let ab = a > b ? a : b, cd = c > d ? c : d
        return ab > cd ? ab : cd
    }

    /// Sign of v onto magnitude m (`withSign`).
    @inline(__always)
    static func withSign(_ v: SIMD8<Float>, _ m: SIMD8<Float>) -> SIMD8<Float> {
        float(bits(m) | (bits(v) & 0x8000_0000))
    }

    /// Lane i shifted to bit i·step, all lanes summed (disjoint bits: packed).
    @inline(__always)
    static func packLanes(_ v: SIMD8<UInt32>, step: UInt32) -> UInt32 {
        (v &<< (SIMD8<UInt32>(0, 1, 2, 3, 4, 5, 6, 7) &* step)).wrappedSum()
    }


    @inline(__always)
    static func storeCodes(_ c: SIMD4<UInt32>, _ p: UnsafeMutablePointer<UInt8>) {
        UnsafeMutableRawPointer(p).storeBytes(of: c, as: SIMD4<UInt32>.self)
    }

    @inline(__always)
    static func storeWord(_ w: UInt32, _ p: UnsafeMutablePointer<UInt8>) {
        UnsafeMutableRawPointer(p).storeBytes(of: w.littleEndian, as: UInt32.self)
    }

    @inline(__always)
    static func loadWord(_ p: UnsafePointer<UInt8>) -> UInt32 {
        UInt32(littleEndian: UnsafeRawPointer(p).loadUnaligned(as: UInt32.self))
    }


    /// The low 32 bits of each lane (`SIMD8<Int32>(truncatingIfNeeded:)`), written lane by lane:
    /// the stdlib's generic conversion became an out-of-line call in the quartet backward
    /// (callgrind), while lane reads and the 8-scalar initializer are transparent.
    @inline(__always)
    static func low32(_ v: SIMD8<UInt64>) -> SIMD8<Int32> {
        SIMD8<Int32>(Int32(truncatingIfNeeded: v[0]), Int32(truncatingIfNeeded: v[1]), Int32(truncatingIfNeeded: v[2]),
                     Int32(truncatingIfNeeded: v[3]), Int32(truncatingIfNeeded: v[4]), Int32(truncatingIfNeeded: v[5]),
                     Int32(truncatingIfNeeded: v[6]), Int32(truncatingIfNeeded: v[7]))
    }

    /// `SIMD8<Float>(v)` lane by lane (see `low32`).
    @inline(__always)
    static func toFloat(_ v: SIMD8<Int32>) -> SIMD8<Float> {
        SIMD8<Float>(Float(v[0]), Float(v[1]), Float(v[2]), Float(v[3]), Float(v[4]), Float(v[5]), Float(v[6]), Float(v[7]))
    }

    @inline(__always)
    static func load8(_ p: UnsafePointer<Float>) -> SIMD8<Float> { UnsafeRawPointer(p).loadUnaligned(as: SIMD8<Float>.self) }
}

/// The e2m1 grid (numerics.md §1) as lane constants: 1 mantissa bit, smallest binade
/// exponent 0 (quantum 0.5), max 6, sign bit 8 in codes.
/// QuartetKernelTests checks them against GridParameters(.e2m1).
extension QuartetKernels {
    static let manBits: Int32 = 1
    static let minExponent: Int32 = 0
    static let fmax: Float = 6
    static let signBit: UInt32 = 8

    /// GridParameters.binade: max(floor(log2 a), minExponent) for finite a ≥ 0 (here
    /// minExponent = 0: max(x, 0) = x & ~(x >> 31)).
    @inline(__always)
    static func binade(_ a: SIMD8<Float>) -> SIMD8<Int32> {
        let x = int(bits(a) &>> 23) &- 127
        return x & ~(x &>> 31)
    }

    /// 2^(manBits − e) (`GridParameters.toUnits`).
    @inline(__always)
    static func toUnits(_ e: SIMD8<Int32>) -> SIMD8<Float> {
        float(uint((127 &+ manBits) &- e) &<< 23)
    }

    /// 2^(e − manBits) (`GridParameters.toValue`).
    @inline(__always)
    static func toValue(_ e: SIMD8<Int32>) -> SIMD8<Float> {
        float(uint((127 &- manBits) &+ e) &<< 23)
    }

}
