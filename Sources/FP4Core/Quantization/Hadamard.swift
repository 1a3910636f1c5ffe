/// Blockwise fast Walsh–Hadamard transform along the last dimension (numerics.md §6, Quartet).
///
/// H_b is the normalized Sylvester–Hadamard matrix of size b (a power of two):
/// H_1 = [1], H_2n = [[H_n, H_n], [H_n, −H_n]] / √2. It is symmetric and orthogonal,
/// H_b·H_bᵀ = H_b·H_b = I. A row-major [rows, cols] matrix X is cut into 1×b segments along
/// its rows (b divides cols), and every segment x (a row vector) becomes
///
///     forward:  y = x · diag(d) · H_b     (y_j = Σ_i x_i · d_i · H_b[i, j])
///     inverse:  x = y · H_bᵀ · diag(d)     (undoes forward: diag(d)·H_b is orthogonal)
///
/// with d ∈ {±1}^b an optional sign vector (all +1 when absent). With signs this is the
/// randomized rotation H_b' = diag(d)·H_b of Quartet's backward; without, the plain
/// rotation of its forward. Cost O(n log b): log2 b butterfly stages per segment, then one
/// multiply by 1/√b. Arithmetic is float32 and independent of the thread count.
public enum Hadamard {
    /// The default block size (MXFP4 group size).
    public static let defaultBlock = 32

    /// Checks a block size for a row length: a power of two that divides `cols`.
    public static func validate(block b: Int, cols: Int) throws {
        guard b >= 1, b & (b - 1) == 0 else {
            throw FP4Error.invalid("hadamard block must be a power of two, got \(b)")
        }
        guard cols >= 0, cols % b == 0 else {
            throw FP4Error.invalid("hadamard block \(b) must divide the last dimension, got \(cols)")
        }
    }

    /// Checks a sign vector of length `block`: every entry exactly +1 or −1.
    public static func validate(signs: UnsafePointer<Float>, block b: Int) throws {
        for i in 0..<b where signs[i] != 1 && signs[i] != -1 {
            throw FP4Error.invalid("hadamard signs must be +1 or -1, got \(signs[i]) at index \(i)")
        }
    }

    /// Transforms x (row-major [rows, cols]) into `out`; `out` may be `x` itself (in place).
    /// `signs`, when given, holds `block` entries of ±1 (see the type's documentation).
    public static func transform(_ x: UnsafePointer<Float>, rows: Int, cols: Int, block b: Int = defaultBlock,
                                 signs: UnsafePointer<Float>? = nil, inverse: Bool = false,
                                 into out: UnsafeMutablePointer<Float>) throws {
        guard rows >= 0 else { throw FP4Error.invalid("shape must be non-negative, got [\(rows), \(cols)]") }
        try validate(block: b, cols: cols)
        if let signs { try validate(signs: signs, block: b) }
        guard rows > 0, cols > 0 else { return }
        let norm = Float(1) / Float(b).squareRoot()
        let grain = Parallel.grain(count: rows, minItems: Swift.max(1, 16384 / cols))
        Parallel.forChunks(count: rows, grain: grain) { rowRange in
            let start = rowRange.lowerBound * cols, end = rowRange.upperBound * cols
            var s = start
            while s < end {
                segment(x + s, out + s, b, norm, signs, inverse)
                s += b
            }
        }
    }

    /// One segment: copy (applying d before a forward transform), butterflies, scale
    /// (applying d after an inverse one). Blocks of 8 or more run on SIMD8 vectors; the
    /// stages and their order are the same as the scalar path, so the bits are too.
    @inline(__always)
    static func segment(_ x: UnsafePointer<Float>, _ p: UnsafeMutablePointer<Float>, _ b: Int, _ norm: Float,
                        _ signs: UnsafePointer<Float>?, _ inverse: Bool) {
        if b == 32 {
            segment32(x, p, norm, signs, inverse)
            return
        }
        if b >= 8 {
            // In-vector stages h = 1, 2, 4 per chunk of 8, then h = 8 ... b/2 across chunks.
            var c = 0
            while c < b {
                var v = load8(x + c)
                if let d = signs, !inverse { v *= load8(d + c) }
                store8(h8(v), p + c)
                c += 8
            }
            var h = 8
            while h < b {
                var i = 0
                while i < b {
                    var j = i
                    while j < i + h {
                        let a = load8(p + j), e = load8(p + j + h)
                        store8(a + e, p + j)
                        store8(a - e, p + j + h)
                        j += 8
                    }
                    i += 2 * h
                }
                h *= 2
            }
            let n = SIMD8<Float>(repeating: norm)
            c = 0
            while c < b {
                var v = load8(p + c) * n
                if let d = signs, inverse { v *= load8(d + c) }
                store8(v, p + c)
                c += 8
            }
            return
        }
        if let d = signs, !inverse {
            for i in 0..<b { p[i] = x[i] * d[i] }
        } else if UnsafePointer(p) != x {
            p.update(from: x, count: b)
        }
        butterflies(p, b)
        if let d = signs, inverse {
            for i in 0..<b { p[i] = (p[i] * norm) * d[i] }
        } else {
            for i in 0..<b { p[i] *= norm }
        }
    }

    /// b = 32 in four SIMD8 registers: every input is loaded before any output is stored,
    /// so in place is safe.
    @inline(__always)
    static func segment32(_ x: UnsafePointer<Float>, _ p: UnsafeMutablePointer<Float>, _ norm: Float,
                          _ signs: UnsafePointer<Float>?, _ inverse: Bool) {
        if !inverse {
            rotate32(Block32(x), signs: signs.map { Block32($0) }, norm: norm).store(p)
            return
        }
        var y = rotate32(Block32(x), signs: nil, norm: norm)
        if let d = signs { y.multiply(by: Block32(d)) }
        y.store(p)
    }

    /// The forward rotation of one 32-segment held in registers: (x·diag(d))·H_32, or x·H_32
    /// without signs; `norm` is 1/√32. The same stages in the same order as every other
    /// path of `transform`, so the same bits (fused kernels rotate a block this way while it
    /// is in registers, then quantize it there).
    @inline(__always)
    static func rotate32(_ x: Block32, signs: Block32?, norm: Float) -> Block32 {
        var v0 = x.v0, v1 = x.v1, v2 = x.v2, v3 = x.v3
        if let d = signs {
            v0 *= d.v0; v1 *= d.v1; v2 *= d.v2; v3 *= d.v3
        }
        v0 = h8(v0); v1 = h8(v1); v2 = h8(v2); v3 = h8(v3)
        let w0 = v0 + v1, w1 = v0 - v1, w2 = v2 + v3, w3 = v2 - v3  // h = 8
        v0 = w0 + w2; v2 = w0 - w2; v1 = w1 + w3; v3 = w1 - w3      // h = 16
        let n = SIMD8<Float>(repeating: norm)
        return Block32(v0 * n, v1 * n, v2 * n, v3 * n)
    }

    @inline(__always)
    static func load8(_ p: UnsafePointer<Float>) -> SIMD8<Float> {
        UnsafeRawPointer(p).loadUnaligned(as: SIMD8<Float>.self)
    }

    @inline(__always)
    static func load8(_ p: UnsafeMutablePointer<Float>) -> SIMD8<Float> { load8(UnsafePointer(p)) }

    @inline(__always)
    static func store8(_ v: SIMD8<Float>, _ p: UnsafeMutablePointer<Float>) {
        UnsafeMutableRawPointer(p).storeBytes(of: v, as: SIMD8<Float>.self)
    }

    /// Stages h = 1, 2, 4 inside one vector: out_j = v_(j xor h) ± v_j (+ where bit h of j
    /// is clear, giving a + c; − where it is set, giving a − c).
    @inline(__always)
    static func h8(_ v0: SIMD8<Float>) -> SIMD8<Float> {
        var v = v0
        v = SIMD8(v[1], v[0], v[3], v[2], v[5], v[4], v[7], v[6]) + v * SIMD8(1, -1, 1, -1, 1, -1, 1, -1)
        v = SIMD8(v[2], v[3], v[0], v[1], v[6], v[7], v[4], v[5]) + v * SIMD8(1, 1, -1, -1, 1, 1, -1, -1)
        v = SIMD8(v[4], v[5], v[6], v[7], v[0], v[1], v[2], v[3]) + v * SIMD8(1, 1, 1, 1, -1, -1, -1, -1)
        return v
    }

    /// Unnormalized in-place Walsh–Hadamard butterflies on b contiguous values
    /// (stage h: (a, c) → (a + c, a − c) for pairs h apart).
    @inline(__always)
    static func butterflies(_ p: UnsafeMutablePointer<Float>, _ b: Int) {
        var h = 1
        while h < b {
            var i = 0
            while i < b {
                for j in i..<(i + h) {
                    let a = p[j], c = p[j + h]
                    p[j] = a + c
                    p[j + h] = a - c
                }
                i += 2 * h
            }
            h *= 2
        }
    }
}

/// 32 consecutive floats (one Hadamard segment, one MXFP4 group) in four SIMD8 registers.
struct Block32 {
    var v0: SIMD8<Float>, v1: SIMD8<Float>, v2: SIMD8<Float>, v3: SIMD8<Float>

    @inline(__always)
    init(_ v0: SIMD8<Float>, _ v1: SIMD8<Float>, _ v2: SIMD8<Float>, _ v3: SIMD8<Float>) {
        (self.v0, self.v1, self.v2, self.v3) = (v0, v1, v2, v3)
    }

    @inline(__always)
    init(_ p: UnsafePointer<Float>) {
        self.init(Hadamard.load8(p), Hadamard.load8(p + 8), Hadamard.load8(p + 16), Hadamard.load8(p + 24))
    }

    @inline(__always)
    init(_ p: UnsafeMutablePointer<Float>) { self.init(UnsafePointer(p)) }

    @inline(__always)
    func store(_ p: UnsafeMutablePointer<Float>) {
        Hadamard.store8(v0, p); Hadamard.store8(v1, p + 8); Hadamard.store8(v2, p + 16); Hadamard.store8(v3, p + 24)
    }

    @inline(__always)
    mutating func multiply(by d: Block32) {
        v0 *= d.v0; v1 *= d.v1; v2 *= d.v2; v3 *= d.v3
    }
}
