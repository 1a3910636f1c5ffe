#if canImport(Glibc)
import Glibc
#endif

/// The Quartet linear layer (numerics.md §6, Castro et al. 2025): MXFP4-style e2m1 groups of 32
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
    ///
    /// One pass over X and one over W (rows split across workers): each 32-block is rotated,
    /// its QuEST scale computed and the block quantized while it sits in registers.
    public static func forward(x: UnsafePointer<Float>, tokens T: Int, inFeatures K: Int,
                               w: UnsafePointer<Float>, outFeatures N: Int, bias: UnsafePointer<Float>?,
                               y: UnsafeMutablePointer<Float>,
                               xCodes: UnsafeMutablePointer<UInt8>, xScales: UnsafeMutablePointer<Float>,
                               xMask: UnsafeMutablePointer<UInt8>, gemm: GEMMMode = .simulated) throws {
        try check(T, K, N)
        // X·H → X_q (codes + scales + dequantized operand) and m_x.
        let xq = Scratch(T * K)
        let xFinite = QuartetKernels.questRows(x, rows: T, cols: K) { i, b in
            b.xhat.store(xq.pointer + i)
            QuartetKernels.storeCodes(b.codes, xCodes + i / 2)
            xScales[i / block] = b.scale
            QuartetKernels.storeWord(b.mask, xMask + i / 8)
        }
        if !xFinite { try throwNonFiniteInput(x, T, K) }
        let wq = try rotatedWeight(w, N, K)
        if let bias {
            for t in 0..<T { (y + t * N).update(from: bias, count: N) }
        }
        BLAS.gemm(transA: false, transB: true, m: T, n: N, k: K, a: xq.pointer, b: wq.pointer,
                  beta: bias == nil ? 0 : 1, c: y)
        withExtendedLifetime((xq, wq)) {}
    }

    /// The error of a non-finite X·H: the one `Quantizer.quantize` reports (the first
    /// non-finite flat index of the rotated X, and its value).
    static func throwNonFiniteInput(_ x: UnsafePointer<Float>, _ T: Int, _ K: Int) throws {
        let xh = Scratch(T * K)
        let codes = UnsafeMutablePointer<UInt8>.allocate(capacity: Swift.max(forwardQuantizer.codeBytes(count: T * K), 1))
        defer { codes.deallocate() }
        try Hadamard.transform(x, rows: T, cols: K, block: block, into: xh.pointer)
        _ = try forwardQuantizer.quantize(xh.pointer, rows: T, cols: K, codes: codes)
        withExtendedLifetime(xh) {}
        throw FP4Error(.nonFinite, "cannot quantize a non-finite value in x")
    }

    /// The error of a non-finite W·H (names the first non-finite element of W).
    static func nonFiniteWeight(_ w: UnsafePointer<Float>, count: Int) -> FP4Error {
        let i = Quantizer.firstNonFiniteIndex(w, count: count)
        return FP4Error(.nonFinite, "cannot quantize a non-finite weight (\(i >= 0 ? w[i] : .nan)) at flat index \(Swift.max(i, 0))")
    }

    /// W_q = QuEST(W·H) (dequantized), [N, K].
    static func rotatedWeight(_ w: UnsafePointer<Float>, _ N: Int, _ K: Int) throws -> Scratch {
        let wq = Scratch(N * K)
        let finite = QuartetKernels.questRows(w, rows: N, cols: K) { i, b in b.xhat.store(wq.pointer + i) }
        if !finite { throw nonFiniteWeight(w, count: N * K) }
        return wq
    }

    /// Backward. Any of dx, dw, db may be nil to skip it.
    ///
    /// Every operand is built in one pass that reads the source once and writes the padded
    /// GEMM operand once: rotate a 32-group in registers, scale it, round it. The operands
    /// rotated along T (and W_qᵀ, along N) are stored transposed, in the layout of their
    /// source, and the GEMMs take them with transposition flags (OpenBLAS gives the same
    /// bits for either storage: same packing, same kernel), so nothing is transposed in
    /// memory. W_q is never stored: the pass over W writes m_w and Q_b(W_qᵀ·H_b) directly.
    /// The GEMMs write into dx and dw, which the mask and the un-rotation then update in place.
    public static func backward(dy: UnsafePointer<Float>, tokens T: Int, outFeatures N: Int,
                                w: UnsafePointer<Float>, inFeatures K: Int,
                                xCodes: UnsafePointer<UInt8>, xScales: UnsafePointer<Float>, xMask: UnsafePointer<UInt8>,
                                seed: UInt64, call: UInt64,
                                dx: UnsafeMutablePointer<Float>?, dw: UnsafeMutablePointer<Float>?,
                                db: UnsafeMutablePointer<Float>?, gemm: GEMMMode = .simulated) throws {
        try check(T, K, N)
        if dx != nil || dw != nil {
            let d = signs(seed: seed, call: call)
            let sb = d.withUnsafeBufferPointer { Block32($0.baseAddress!) }
            let np = (N + block - 1) / block * block, tp = (T + block - 1) / block * block
            // A [T, Np] then C [N, Tp] share one buffer; B [K, Np] then D [K, Tp] another.
            let big = Scratch(Swift.max(dx != nil ? T * np : 0, dw != nil ? N * tp : 0))
            let mid = Scratch(Swift.max(K * np, dw != nil ? K * tp : 0))
            let mw = UnsafeMutablePointer<UInt8>.allocate(capacity: Swift.max(Quantizer.maskBytes(count: N * K), 1))
            defer { mw.deallocate() }
            // W → W_q = QuEST(W·H) (in tiles, never stored) → m_w and B = Q_b(W_qᵀ·H_b),
            // stored as Bᵀ [Np, K].
            let wSource = QuartetKernels.WeightRows(w: w, rows: N, cols: K, mask: mw)
            let finite = d.withUnsafeBufferPointer { dp in
                QuartetKernels.verticalOperand(wSource, rows: N, cols: K, signs: dp.baseAddress!,
                                               key: CounterRNG.key(seed: key(seed: seed, call: call, 2)), into: mid.pointer)
            }
            if !finite { throw nonFiniteWeight(w, count: N * K) }
            if let dx {
                // A = Q_b(dY·H_b) [T, Np]; G = A·B [T, K] into dx; dx = (G ⊙ m_x)·Hᵀ.
                QuartetKernels.gradientRows(dy, rows: T, cols: N, signs: sb,
                                            key: CounterRNG.key(seed: key(seed: seed, call: call, 1)), into: big.pointer)
                BLAS.gemm(transA: false, transB: false, m: T, n: K, k: np, a: big.pointer, b: mid.pointer, c: dx)
                QuartetKernels.maskAndUnrotate(dx, rows: T, cols: K, mask: xMask)
            }
            if let dw {
                // C = Q_b(dYᵀ·H_b) stored as Cᵀ [Tp, N]; D = Q_b(X_qᵀ·H_b) stored as Dᵀ [Tp, K]
                // (X_q decoded from the saved codes, rotated basis); G = C·Dᵀ [N, K] into dw;
                // dw = (G ⊙ m_w)·Hᵀ.
                d.withUnsafeBufferPointer { dp in
                    _ = QuartetKernels.verticalOperand(QuartetKernels.MatrixRows(a: dy, rows: T, cols: N), rows: T, cols: N,
                                                       signs: dp.baseAddress!, key: CounterRNG.key(seed: key(seed: seed, call: call, 3)),
                                                       into: big.pointer)
                    let table = ElementCodec.of(forwardQuantizer.format).decodeTable
                    table.withUnsafeBufferPointer { tb in
                        _ = QuartetKernels.verticalOperand(
                            QuartetKernels.CodeRows(codes: xCodes, scales: xScales, table: tb.baseAddress!, rows: T, cols: K),
                            rows: T, cols: K, signs: dp.baseAddress!, key: CounterRNG.key(seed: key(seed: seed, call: call, 4)),
                            into: mid.pointer)
                    }
                }
                BLAS.gemm(transA: true, transB: false, m: N, n: K, k: tp, a: big.pointer, b: mid.pointer, c: dw)
                QuartetKernels.maskAndUnrotate(dw, rows: N, cols: K, mask: UnsafePointer(mw))
            }
            withExtendedLifetime((big, mid)) {}
        }
        if let db {
            LinearLayer.columnSums(dy, rows: T, cols: N, into: db)
        }
    }
}
