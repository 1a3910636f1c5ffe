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
///
/// GEMMs (`gemm`): `.simulated` multiplies float32 x̂ operands with sgemm; `.packed` multiplies
/// the same quantized values as packed e2m1 codes + block(32) scales with `PackedGEMM`
/// (numerics.md §11): X_q [T, K] · W_q [N, K]ᵀ, A [T, Np] · B [K, Np]ᵀ, C [N, Tp] · D [K, Tp]ᵀ,
/// where B, C, D are the operands above in row-major [rows, reduction] layout. The kernels
/// emit codes with the same rounding and draws as x̂, so only the GEMMs' float rounding
/// differs. A backward whose rotated operands hold NaN or ±inf (codes cannot carry them)
/// runs simulated, which propagates them.
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
        if gemm == .packed {
            return try forwardOnCodes(x: x, tokens: T, inFeatures: K, w: w, outFeatures: N, bias: bias, y: y,
                                      xCodes: xCodes, xScales: xScales, xMask: xMask)
        }
        // X·H → X_q (codes + scales + dequantized operand) and m_x.
        let xq = Scratch(T * K)
        let xFinite = QuartetKernels.questRows(x, rows: T, cols: K,
                                               into: .init(codes: xCodes, scales: xScales, mask: xMask, xhat: xq.pointer))
        if !xFinite { try throwNonFiniteInput(x, T, K) }
        let wq = try rotatedWeight(w, N, K)
        if let bias {
            for t in 0..<T { (y + t * N).update(from: bias, count: N) }
        }
        BLAS.gemm(transA: false, transB: true, m: T, n: N, k: K, a: xq.pointer, b: wq.pointer,
                  beta: bias == nil ? 0 : 1, c: y)
        withExtendedLifetime((xq, wq)) {}
    }

    /// The packed forward: X_q and W_q as codes + scales (no float32 operands), Y = X_q·W_qᵀ
    /// by `PackedGEMM`, then + b.
    static func forwardOnCodes(x: UnsafePointer<Float>, tokens T: Int, inFeatures K: Int,
                               w: UnsafePointer<Float>, outFeatures N: Int, bias: UnsafePointer<Float>?,
                               y: UnsafeMutablePointer<Float>,
                               xCodes: UnsafeMutablePointer<UInt8>, xScales: UnsafeMutablePointer<Float>,
                               xMask: UnsafeMutablePointer<UInt8>) throws {
        let xFinite = QuartetKernels.questRows(x, rows: T, cols: K, into: .init(codes: xCodes, scales: xScales, mask: xMask))
        if !xFinite { try throwNonFiniteInput(x, T, K) }
        let wq = CodedOperand(rows: N, cols: K)
        let wFinite = QuartetKernels.questRows(w, rows: N, cols: K, into: .init(codes: wq.codes, scales: wq.scales))
        if !wFinite { throw nonFiniteWeight(w, count: N * K) }
        let xOperand = GEMMOperand(codes: UnsafePointer(xCodes), rows: T, cols: K, format: forwardQuantizer.format,
                                   granularity: forwardQuantizer.granularity, scales: UnsafePointer(xScales))
        try PackedGEMM.multiply(xOperand, wq.operand, into: y)
        if let bias { addBias(bias, rows: T, cols: N, into: y) }
        withExtendedLifetime(wq) {}
    }

    /// Packed e2m1 codes of a [rows, cols] operand (cols a multiple of 32) and one scale per
    /// 32-group along cols, in scratch memory.
    final class CodedOperand {
        let rows: Int, cols: Int
        private let codeBuffer: ByteScratch, scaleBuffer: Scratch
        let codes: UnsafeMutablePointer<UInt8>
        let scales: UnsafeMutablePointer<Float>

        init(rows: Int, cols: Int) {
            self.rows = rows
            self.cols = cols
            codeBuffer = ByteScratch(bytes: Swift.max(rows * cols / 2, 1))
            scaleBuffer = Scratch(Swift.max(rows * cols / QuartetLinear.block, 1))
            codes = codeBuffer.raw.assumingMemoryBound(to: UInt8.self)
            scales = scaleBuffer.pointer
        }

        /// The operand as `PackedGEMM` reads it (valid while self lives).
        var operand: GEMMOperand {
            GEMMOperand(codes: UnsafePointer(codes), rows: rows, cols: cols, format: QuartetLinear.forwardQuantizer.format,
                        granularity: .block(QuartetLinear.block), scales: UnsafePointer(scales))
        }
    }

    /// y[t, :] += bias for every row t.
    static func addBias(_ bias: UnsafePointer<Float>, rows: Int, cols: Int, into y: UnsafeMutablePointer<Float>) {
        guard rows > 0, cols > 0 else { return }
        Parallel.forChunks(count: rows, grain: Parallel.grain(count: rows, minItems: Swift.max(1, 16384 / cols))) { r in
            for t in r {
                let row = y + t * cols
                for j in 0..<cols { row[j] += bias[j] }
            }
        }
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
        let finite = QuartetKernels.questRows(w, rows: N, cols: K, into: .init(xhat: wq.pointer))
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
        if gemm == .packed && (dx != nil || dw != nil) {
            if try backwardOnCodes(dy: dy, tokens: T, outFeatures: N, w: w, inFeatures: K, xCodes: xCodes, xScales: xScales,
                                   xMask: xMask, seed: seed, call: call, dx: dx, dw: dw) {
                if let db { LinearLayer.columnSums(dy, rows: T, cols: N, into: db) }
                return
            }
        }
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

    /// The packed backward: the four operands as codes + scales in one pass each (same draws
    /// as the simulated operands), the two GEMMs by `PackedGEMM`, then mask and un-rotation.
    /// False (dx, dw unspecified) when a rotated operand holds NaN or ±inf or W does: the
    /// caller then runs the simulated backward, which propagates NaN or throws for W.
    static func backwardOnCodes(dy: UnsafePointer<Float>, tokens T: Int, outFeatures N: Int,
                                w: UnsafePointer<Float>, inFeatures K: Int,
                                xCodes: UnsafePointer<UInt8>, xScales: UnsafePointer<Float>, xMask: UnsafePointer<UInt8>,
                                seed: UInt64, call: UInt64,
                                dx: UnsafeMutablePointer<Float>?, dw: UnsafeMutablePointer<Float>?) throws -> Bool {
        let d = signs(seed: seed, call: call)
        let np = (N + block - 1) / block * block, tp = (T + block - 1) / block * block
        let mw = UnsafeMutablePointer<UInt8>.allocate(capacity: Swift.max(Quantizer.maskBytes(count: N * K), 1))
        defer { mw.deallocate() }
        return try d.withUnsafeBufferPointer { dp in
            let signs = dp.baseAddress!
            // B = Q_b(W_qᵀ·H_b) [K, Np] from W_q = QuEST(W·H) (in tiles, never stored), and m_w.
            let bq = CodedOperand(rows: K, cols: np)
            guard QuartetKernels.verticalOperand(QuartetKernels.WeightRows(w: w, rows: N, cols: K, mask: mw), rows: N, cols: K,
                                                 signs: signs, key: CounterRNG.key(seed: key(seed: seed, call: call, 2)),
                                                 output: QuartetKernels.ColumnsAsCodes(codes: bq.codes, scales: bq.scales))
            else { return false }
            if let dx {
                // A = Q_b(dY·H_b) [T, Np]; G = A·Bᵀ [T, K] into dx; dx = (G ⊙ m_x)·Hᵀ.
                let aq = CodedOperand(rows: T, cols: np)
                guard QuartetKernels.gradientRows(dy, rows: T, cols: N, signs: Block32(signs),
                                                  key: CounterRNG.key(seed: key(seed: seed, call: call, 1)),
                                                  output: QuartetKernels.RowsAsCodes(codes: aq.codes, scales: aq.scales))
                else { return false }
                try PackedGEMM.multiply(aq.operand, bq.operand, into: dx)
                QuartetKernels.maskAndUnrotate(dx, rows: T, cols: K, mask: xMask)
                withExtendedLifetime(aq) {}
            }
            withExtendedLifetime(bq) {}
            if let dw {
                // C = Q_b(dYᵀ·H_b) [N, Tp]; D = Q_b(X_qᵀ·H_b) [K, Tp] (X_q decoded from the saved
                // codes, rotated basis); G = C·Dᵀ [N, K] into dw; dw = (G ⊙ m_w)·Hᵀ.
                let cq = CodedOperand(rows: N, cols: tp), dq = CodedOperand(rows: K, cols: tp)
                guard QuartetKernels.verticalOperand(QuartetKernels.MatrixRows(a: dy, rows: T, cols: N), rows: T, cols: N,
                                                     signs: signs, key: CounterRNG.key(seed: key(seed: seed, call: call, 3)),
                                                     output: QuartetKernels.ColumnsAsCodes(codes: cq.codes, scales: cq.scales))
                else { return false }
                let table = ElementCodec.of(forwardQuantizer.format).decodeTable
                let okD = table.withUnsafeBufferPointer { tb in
                    QuartetKernels.verticalOperand(
                        QuartetKernels.CodeRows(codes: xCodes, scales: xScales, table: tb.baseAddress!, rows: T, cols: K),
                        rows: T, cols: K, signs: signs, key: CounterRNG.key(seed: key(seed: seed, call: call, 4)),
                        output: QuartetKernels.ColumnsAsCodes(codes: dq.codes, scales: dq.scales))
                }
                guard okD else { return false }
                try PackedGEMM.multiply(cq.operand, dq.operand, into: dw)
                QuartetKernels.maskAndUnrotate(dw, rows: N, cols: K, mask: UnsafePointer(mw))
                withExtendedLifetime((cq, dq)) {}
            }
            return true
        }
    }
}
