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

/// e2m1 stochastic rounding to packed codes (no x̂), eight elements at a time: the same bits
/// as the general path (`StochasticRounder`: `GridParameters.roundStochastic` with the draw
/// `CounterRNG.uniform(key, i)` of flat index i, then `Quantizer.CodeWriter`), which
/// KernelParityTests compares it with. The draws stay a pure function of (seed, index).
/// Used for nvfp4's dY (two-level scales, v = x · (S / sb)); the general path wrote one code
/// per byte with a scalar draw each, ~10% of the nvfp4 layer's forward+backward.
extension E2M1Kernel {
    /// How a group maps x to the grid: v = x · m (two-level and multiply rules) or v = x / s.
    enum GridMap {
        case multiply(Float)
        case divide(Float)
    }

    /// Codes of x[range] (one group) into the packed bytes: an odd first element ORs into the
    /// high nibble of a byte written before, an odd last one writes a low nibble alone (as
    /// `Quantizer.codeSegmentPacked`), whole blocks of 8 go through SIMD8.
    static func stochasticSegment(_ x: UnsafePointer<Float>, _ codes: UnsafeMutablePointer<UInt8>, _ range: Range<Int>,
                                  _ map: GridMap, key: UInt64, draws: UnsafePointer<Float>? = nil) {
        var i = range.lowerBound
        let end = range.upperBound
        if i < end && i & 1 == 1 {
            codes[i >> 1] |= UInt8(truncatingIfNeeded: stochasticCode(x[i], map, key: key, index: i) << 4)
            i += 1
        }
        let blocks = (end - i) >> 3
        if blocks > 0 {
            let d = draws.map { $0 + (i - range.lowerBound) }
            switch map {
            case .multiply(let m): stochasticBlocks(x, codes, from: i, blocks, key: key, draws: d) { $0 * SIMD8(repeating: m) }
            case .divide(let s): stochasticBlocks(x, codes, from: i, blocks, key: key, draws: d) { $0 / SIMD8(repeating: s) }
            }
            i += 8 * blocks
        }
        while i + 1 < end {
            let c0 = stochasticCode(x[i], map, key: key, index: i), c1 = stochasticCode(x[i + 1], map, key: key, index: i + 1)
            codes[i >> 1] = UInt8(truncatingIfNeeded: c0 | (c1 << 4))
            i += 2
        }
        if i < end { codes[i >> 1] = UInt8(truncatingIfNeeded: stochasticCode(x[i], map, key: key, index: i)) }
    }

    /// Blocks of 8 from even flat index `start`: draws of indices start + 8k + lane, read from
    /// `draws` (draws[8k + lane], filled by `CounterDraws`) when given.
    @inline(__always)
    static func stochasticBlocks(_ x: UnsafePointer<Float>, _ codes: UnsafeMutablePointer<UInt8>, from start: Int, _ blocks: Int,
                                 key: UInt64, draws: UnsafePointer<Float>?, _ toGrid: (SIMD8<Float>) -> SIMD8<Float>) {
        // Counters key + (index + 1)·γ, stepped by 8γ per block (wrapping adds: the same values
        // as multiplying each index, without a 64-bit vector multiply per block).
        let base = key &+ (UInt64(bitPattern: Int64(start)) &+ 1) &* K.gamma
        var counters = SIMD8<UInt64>(repeating: base) &+ SIMD8<UInt64>(0, 1, 2, 3, 4, 5, 6, 7) &* K.gamma
        let step = SIMD8<UInt64>(repeating: 8 &* K.gamma)
        let src = UnsafeRawPointer(x + start), cp = UnsafeMutableRawPointer(codes + (start >> 1))
        for k in 0..<blocks {
            let v = toGrid(src.loadUnaligned(fromByteOffset: 32 * k, as: SIMD8<Float>.self))
            let u = draws.map { K.load8($0 + 8 * k) } ?? K.uniformsFromCounters(counters)
            let c = K.stochasticGrid(v, u).code
            cp.storeBytes(of: pack(c), toByteOffset: 4 * k, as: UInt32.self)
            counters &+= step
        }
    }

    /// One element by the general path's scalar functions.
    @inline(__always)
    static func stochasticCode(_ x: Float, _ map: GridMap, key: UInt64, index: Int) -> UInt32 {
        let v: Float
        switch map {
        case .multiply(let m): v = x * m
        case .divide(let s): v = x / s
        }
        let grid = GridParameters(.e2m1, saturating: true)
        let r = grid.roundStochastic(abs(v), CounterRNG.uniform(key: key, index: index))
        let sign = (v.bitPattern >> 31) << 3
        return UInt32(bitPattern: grid.magnitudeCode(r, infCode: 7)) | sign
    }
}
