/// The Quartet linear layer (spec §6, Castro et al. 2025): MXFP4-style e2m1 groups of 32
/// in all three GEMMs, with Hadamard rotations. Shapes: X [T, K], W [N, K], b [N], Y, dY [T, N].
///
/// Forward (H = normalized Hadamard of size 32, blockwise along K):
///   X_q, m_x = QuEST(X·H);  W_q, m_w = QuEST(W·H);  Y = X_q·W_qᵀ + b
/// QuEST = e2m1, block(32), `quest` scales, RNE; m = clip mask |v| < 6.
///
/// Backward, with d ∈ {±1}^32 drawn per call and H_b = diag(d)·H applied blockwise along the
/// GEMM's reduction dimension, Q_b = e2m1, block(32), `absmax_div3`, stochastic rounding:
///   dX = (Q_b(dY·H_b) · Q_b(W_qᵀ·H_b)ᵀ ⊙ m_x)·Hᵀ     (rotation along N)
///   dW = (Q_b(dYᵀ·H_b) · Q_b(X_qᵀ·H_b)ᵀ ⊙ m_w)·Hᵀ    (rotation along T)
///   db = Σ_T dY
/// K must be a multiple of 32. T and N need not be: the backward operands are padded with
/// zero columns up to the next multiple of 32 along the rotated dimension (zeros add nothing
/// to the products; they form their own zero groups or share a group with real values).
///
/// Randomness: every draw is a pure function of (seed, call). With
/// key_j = mix(seed + (5·call + j + 1)·γ) (SplitMix64, `CounterRNG`), the signs are
/// d_i = −1 if uniform(key_0, i) < 1/2 else +1, and the four stochastic quantizers of
/// dY·H_b, W_qᵀ·H_b, dYᵀ·H_b, X_qᵀ·H_b use seeds key_1 ... key_4 (draw = flat index of the
/// padded operand). The caller picks `call` (a counter, fresh per backward).
///
/// Saved for backward (caller-owned): X_q as packed e2m1 codes + float scales (quest:
/// powers of two) and m_x packed one bit per element (LSB first), 4.5 + 1 bits per element.
/// W is not saved: W_q and m_w are recomputed.
public enum QuartetLinear {
    public static let block = 32

    public static let forwardQuantizer = Quantizer(format: .e2m1, granularity: .block(32), scaleRule: .quest,
                                                   rounding: .nearestEven)

    /// Q_b with a given seed.
    public static func backwardQuantizer(seed: UInt64) -> Quantizer {
        Quantizer(format: .e2m1, granularity: .block(32), scaleRule: .absmaxDiv3, rounding: .stochastic, seed: seed)
    }

    /// The seed of key j of a backward call (0: signs, 1...4: the stochastic quantizers).
    public static func key(seed: UInt64, call: UInt64, _ j: UInt64) -> UInt64 {
        CounterRNG.mix(seed &+ (5 &* call &+ j &+ 1) &* CounterRNG.gamma)
    }

    /// The ±1 sign vector of a backward call.
    public static func signs(seed: UInt64, call: UInt64) -> [Float] {
        let k = CounterRNG.key(seed: key(seed: seed, call: call, 0))
        return (0..<block).map { CounterRNG.uniform(key: k, index: $0) < 0.5 ? -1 : 1 }
    }

    /// (code bytes, scale count, mask bytes) of the saved state for X [T, K].
    public static func savedSizes(tokens T: Int, inFeatures K: Int) throws -> (codes: Int, scales: Int, mask: Int) {
        try check(T, K, 0)
        return (forwardQuantizer.codeBytes(count: T * K), T * K / block, Quantizer.maskBytes(count: T * K))
    }

    static func check(_ T: Int, _ K: Int, _ N: Int) throws {
        try LinearLayer.checkShapes(T, K, N)
        guard K % block == 0 else {
            throw FP4Error.invalid("the quartet recipe needs in_features to be a multiple of \(block), got \(K)")
        }
    }

    /// Forward; writes Y and the saved state. NaN/inf in X or W throw (codes cannot hold them).
    public static func forward(x: UnsafePointer<Float>, tokens T: Int, inFeatures K: Int,
                               w: UnsafePointer<Float>, outFeatures N: Int, bias: UnsafePointer<Float>?,
                               y: UnsafeMutablePointer<Float>,
                               xCodes: UnsafeMutablePointer<UInt8>, xScales: UnsafeMutablePointer<Float>,
                               xMask: UnsafeMutablePointer<UInt8>) throws {
        try check(T, K, N)
        let q = forwardQuantizer
        // X·H → X_q (codes + dequantized operand) and m_x.
        let xh = Scratch(T * K), xq = Scratch(T * K)
        try Hadamard.transform(x, rows: T, cols: K, block: block, into: xh.pointer)
        if T * K > 0 {
            let ts = try q.quantize(xh.pointer, rows: T, cols: K, codes: xCodes, dequantized: xq.pointer)
            q.clipMask(xh.pointer, scales: ts, into: xMask)
            for g in 0..<ts.groups.count { xScales[g] = ts.groups[g].scale }
        }
        let wq = try rotatedWeight(w, N, K, mask: nil)
        if let bias {
            for t in 0..<T { (y + t * N).update(from: bias, count: N) }
        }
        BLAS.gemm(transA: false, transB: true, m: T, n: N, k: K, a: xq.pointer, b: wq.pointer,
                  beta: bias == nil ? 0 : 1, c: y)
        withExtendedLifetime((xh, xq, wq)) {}
    }

    /// W_q = QuEST(W·H) (dequantized), and m_w into `mask` when given.
    static func rotatedWeight(_ w: UnsafePointer<Float>, _ N: Int, _ K: Int, mask: UnsafeMutablePointer<UInt8>?) throws -> Scratch {
        let wh = Scratch(N * K), wq = Scratch(N * K)
        try Hadamard.transform(w, rows: N, cols: K, block: block, into: wh.pointer)
        if N * K > 0 {
            let ts = try forwardQuantizer.scales(of: wh.pointer, rows: N, cols: K)
            if ts.nonFiniteCount > 0 {
                let i = Quantizer.firstNonFiniteIndex(w, count: N * K)
                throw FP4Error(.nonFinite, "cannot quantize a non-finite weight (\(i >= 0 ? w[i] : .nan)) at flat index \(Swift.max(i, 0))")
            }
            try forwardQuantizer.fakeQuantize(wh.pointer, rows: N, cols: K, into: wq.pointer, nonFinite: .raise)
            if let mask { forwardQuantizer.clipMask(wh.pointer, scales: ts, into: mask) }
        }
        return wq
    }

    /// Q_b(A·H_b) for A [rows, cols] given as `fill(dst, ldPadded)`: the operand is written
    /// into a zero-padded [rows, colsPadded] buffer, rotated with the signs, quantized.
    static func rotatedGradientOperand(rows: Int, cols: Int, signs: [Float], seed: UInt64,
                                       fill: (UnsafeMutablePointer<Float>, Int) -> Void) throws -> (Scratch, Int) {
        let cp = (cols + block - 1) / block * block
        let a = Scratch(rows * cp)
        a.pointer.initialize(repeating: 0, count: Swift.max(rows * cp, 1))
        fill(a.pointer, cp)
        try signs.withUnsafeBufferPointer { d in
            try Hadamard.transform(UnsafePointer(a.pointer), rows: rows, cols: cp, block: block, signs: d.baseAddress!, into: a.pointer)
        }
        if rows * cp > 0 {
            try backwardQuantizer(seed: seed).fakeQuantize(UnsafePointer(a.pointer), rows: rows, cols: cp, into: a.pointer,
                                                           nonFinite: .propagate)
        }
        return (a, cp)
    }

    /// g ⊙ m (m packed bits), then g·Hᵀ (= g·H: H is symmetric) into `out`.
    static func maskAndUnrotate(_ g: UnsafeMutablePointer<Float>, rows: Int, cols: Int, mask: UnsafePointer<UInt8>,
                                into out: UnsafeMutablePointer<Float>) throws {
        let n = rows * cols
        for i in 0..<n where (mask[i >> 3] >> UInt8(i & 7)) & 1 == 0 { g[i] = 0 }
        try Hadamard.transform(UnsafePointer(g), rows: rows, cols: cols, block: block, into: out)
    }

    /// Backward. Any of dx, dw, db may be nil to skip it.
    public static func backward(dy: UnsafePointer<Float>, tokens T: Int, outFeatures N: Int,
                                w: UnsafePointer<Float>, inFeatures K: Int,
                                xCodes: UnsafePointer<UInt8>, xScales: UnsafePointer<Float>, xMask: UnsafePointer<UInt8>,
                                seed: UInt64, call: UInt64,
                                dx: UnsafeMutablePointer<Float>?, dw: UnsafeMutablePointer<Float>?,
                                db: UnsafeMutablePointer<Float>?) throws {
        try check(T, K, N)
        let d = signs(seed: seed, call: call)
        if dx != nil || dw != nil {
            let mw = UnsafeMutablePointer<UInt8>.allocate(capacity: Swift.max(Quantizer.maskBytes(count: N * K), 1))
            defer { mw.deallocate() }
            let wq = try rotatedWeight(w, N, K, mask: mw)
            if let dx {
                // A = Q_b(dY·H_b) [T, Np]; B = Q_b(W_qᵀ·H_b) [K, Np]; G = A·Bᵀ [T, K].
                let (a, np) = try rotatedGradientOperand(rows: T, cols: N, signs: d, seed: key(seed: seed, call: call, 1)) { p, ld in
                    for t in 0..<T { (p + t * ld).update(from: dy + t * N, count: N) }
                }
                let (b, _) = try rotatedGradientOperand(rows: K, cols: N, signs: d, seed: key(seed: seed, call: call, 2)) { p, ld in
                    for n in 0..<N { for k in 0..<K { p[k * ld + n] = wq.pointer[n * K + k] } }
                }
                let g = Scratch(T * K)
                BLAS.gemm(transA: false, transB: true, m: T, n: K, k: np, a: a.pointer, b: b.pointer, c: g.pointer)
                try maskAndUnrotate(g.pointer, rows: T, cols: K, mask: xMask, into: dx)
                withExtendedLifetime((a, b, g)) {}
            }
            if let dw {
                // X_q from the saved codes (rotated basis).
                let xq = Scratch(T * K)
                if T * K > 0 {
                    try forwardQuantizer.dequantize(codes: xCodes, rows: T, cols: K, scales: xScales, tensorScale: 1, into: xq.pointer)
                }
                // C = Q_b(dYᵀ·H_b) [N, Tp]; D = Q_b(X_qᵀ·H_b) [K, Tp]; G = C·Dᵀ [N, K].
                let (c, tp) = try rotatedGradientOperand(rows: N, cols: T, signs: d, seed: key(seed: seed, call: call, 3)) { p, ld in
                    for t in 0..<T { for n in 0..<N { p[n * ld + t] = dy[t * N + n] } }
                }
                let (e, _) = try rotatedGradientOperand(rows: K, cols: T, signs: d, seed: key(seed: seed, call: call, 4)) { p, ld in
                    for t in 0..<T { for k in 0..<K { p[k * ld + t] = xq.pointer[t * K + k] } }
                }
                let g = Scratch(N * K)
                BLAS.gemm(transA: false, transB: true, m: N, n: K, k: tp, a: c.pointer, b: e.pointer, c: g.pointer)
                try maskAndUnrotate(g.pointer, rows: N, cols: K, mask: UnsafePointer(mw), into: dw)
                withExtendedLifetime((xq, c, e, g)) {}
            }
            withExtendedLifetime(wq) {}
        }
        if let db {
            LinearLayer.columnSums(dy, rows: T, cols: N, into: db)
        }
    }
}
