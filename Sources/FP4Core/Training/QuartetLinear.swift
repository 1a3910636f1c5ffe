#if canImport(Glibc)
import Glibc
#endif

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
    ///
    /// One pass over X and one over W (rows split across workers): each 32-block is rotated,
    /// its QuEST scale computed and the block quantized while it sits in registers.
    public static func forward(x: UnsafePointer<Float>, tokens T: Int, inFeatures K: Int,
                               w: UnsafePointer<Float>, outFeatures N: Int, bias: UnsafePointer<Float>?,
                               y: UnsafeMutablePointer<Float>,
                               xCodes: UnsafeMutablePointer<UInt8>, xScales: UnsafeMutablePointer<Float>,
                               xMask: UnsafeMutablePointer<UInt8>) throws {
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
                                db: UnsafeMutablePointer<Float>?) throws {
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

/// The fused per-block kernels of `QuartetLinear`. Each one does, for one 32-block held in
/// four SIMD8 registers, exactly the float32 operations of the general path
/// (`Hadamard.transform`, `Quantizer.scales` / `quantize` / `fakeQuantize` / `clipMask` with
/// e2m1, block(32), quest + RNE or absmax_div3 + stochastic), in the same order, so the bits
/// are the same; only the number of passes over memory differs. Every output element depends
/// on its own block and flat index only, so any chunking gives the same result.
enum QuartetKernels {
    // Constants are computed properties, not `static let`s (those cost a `swift_once` check
    // on every access inside the loops).
    @inline(__always) static var norm: Float { Float(1) / Float(32).squareRoot() }

    // e2m1 grid (spec §1): 1 mantissa bit, smallest binade exponent 0 (quantum 0.5), max 6,
    // sign bit 8 in codes. QuartetKernelTests checks these against GridParameters(.e2m1).
    static let manBits: Int32 = 1
    static let minExponent: Int32 = 0
    static let fmax: Float = 6
    static let signBit: UInt32 = 8

    /// QuEST of one rotated block.
    struct Quest {
        /// x̂ = q·s (the GEMM operand).
        var xhat: Block32
        /// 32 codes packed two per byte (element 2i low nibble), as four little-endian words.
        var codes: SIMD4<UInt32>
        /// Clip mask, bit i for element i (LSB first).
        var mask: UInt32
        var scale: Float
        /// False when the block held NaN or ±inf (the rest is then meaningless).
        var finite: Bool
    }

    // Lane helpers, written with SIMD operators only (arithmetic, bitwise, shifts,
    // conversions: each one LLVM instruction). Swift's SIMD comparisons,
    // `replacing(with:where:)`, `pointwiseMin` and lane loops (`r[i] = ...`) do compile to
    // vector code in a small function, but inside these large inlined kernels they stayed
    // per-lane loops through the stack, 5-10x slower. Comparisons are therefore done on bit
    // patterns: for floats ≥ +0 (including +inf) the bit patterns order like the values,
    // and every difference below fits in an Int32.
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

    /// e2m1 RNE of a grid vector v (`roundNearestEvenMantissa` on |v|): returns (q·s, code, |v| < 6 as 0/1).
    @inline(__always)
    static func questLanes(_ v: SIMD8<Float>, _ s: SIMD8<Float>) -> (SIMD8<Float>, SIMD8<UInt32>, SIMD8<UInt32>) {
        let av = magnitude(v)
        let a = minNonNegative(av, fmax)
        let e = binade(a)
        // a ≤ 6 and e = max(floor(log2 a), 0), so a·2^(1−e) < 4: roundEven applies.
        let r = roundEven(a * toUnits(e)) * toValue(e)
        // GridParameters.magnitudeCode (r ≤ fmax: never the inf code):
        // m = smallInteger(min(r, fmax)·2^(manBits−e2)); code = m < 2^manBits ? m : normal.
        let e2 = binade(r)
        let f = minNonNegative(r, fmax) * toUnits(e2)
        let m = int(bits(f + SIMD8(repeating: 0x1p23)) & 0x7F_FFFF)
        let implicit = SIMD8<Int32>(repeating: 1 << manBits)
        let normal = ((e2 &- minExponent &+ 1) &<< manBits) &+ (m &- implicit)
        let small = int(lessMask(uint(m), uint(implicit)))
        let mag = (m & small) | (normal & ~small)
        let code = uint(mag) | ((bits(v) &>> 31) &* signBit)
        let inside = lessMask(bits(av), SIMD8(repeating: fmax.bitPattern)) & 1
        return (withSign(v, r) * s, code, inside)
    }

    /// QuEST (quest scale, e2m1 RNE) of one rotated block.
    @inline(__always)
    static func quest(_ x: Block32) -> Quest {
        // Population std in float64, sums in element order (Quantizer.groupStds).
        var sum = 0.0, sq = 0.0
        for l in 0..<8 { let v = Double(x.v0[l]); sum += v; sq += v * v }
        for l in 0..<8 { let v = Double(x.v1[l]); sum += v; sq += v * v }
        for l in 0..<8 { let v = Double(x.v2[l]); sum += v; sq += v * v }
        for l in 0..<8 { let v = Double(x.v3[l]); sum += v; sq += v * v }
        return quest(x, std: std(sum, sq))
    }

    /// QuEST of four blocks: the float64 sums of the four run side by side (four independent
    /// dependency chains per sum instead of one), each still in element order.
    @inline(__always)
    static func quest4(_ a: Block32, _ b: Block32, _ c: Block32, _ d: Block32) -> (Quest, Quest, Quest, Quest) {
        var sum = SIMD4<Double>(), sq = SIMD4<Double>()
        @inline(__always) func add(_ x: SIMD8<Float>, _ y: SIMD8<Float>, _ z: SIMD8<Float>, _ t: SIMD8<Float>) {
            for l in 0..<8 {
                let v = SIMD4<Double>(Double(x[l]), Double(y[l]), Double(z[l]), Double(t[l]))
                sum += v
                sq += v * v
            }
        }
        add(a.v0, b.v0, c.v0, d.v0)
        add(a.v1, b.v1, c.v1, d.v1)
        add(a.v2, b.v2, c.v2, d.v2)
        add(a.v3, b.v3, c.v3, d.v3)
        return (quest(a, std: std(sum[0], sq[0])), quest(b, std: std(sum[1], sq[1])),
                quest(c, std: std(sum[2], sq[2])), quest(d, std: std(sum[3], sq[3])))
    }

    /// σ = sqrt(max(E[x²] − μ², 0)) from the sums over one group of 32.
    @inline(__always)
    static func std(_ sum: Double, _ sq: Double) -> Double {
        let n = Double(32), mu = sum / n
        return Swift.max(sq / n - mu * mu, 0).squareRoot()
    }

    /// QuEST of one rotated block with its σ.
    @inline(__always)
    static func quest(_ x: Block32, std: Double) -> Quest {
        let amax = amaxBits(x)
        if amax >= 0x7F80_0000 {
            return Quest(xhat: x, codes: .zero, mask: 0, scale: 1, finite: false)
        }
        if amax == 0 {
            // All-zero group: scale 1, signed zeros, codes of ±0, mask all ones.
            let z = SIMD8<Float>(repeating: 0)
            let sign = { (v: SIMD8<Float>) -> UInt32 in packLanes((bits(v) &>> 31) &* signBit, step: 4) }
            return Quest(xhat: Block32(x.v0 * z, x.v1 * z, x.v2 * z, x.v3 * z),
                         codes: SIMD4(sign(x.v0), sign(x.v1), sign(x.v2), sign(x.v3)), mask: .max, scale: 1, finite: true)
        }
        let scale = questScale(std: std)
        let s = SIMD8<Float>(repeating: scale)
        let (q0, c0, m0) = questLanes(x.v0 / s, s)
        let (q1, c1, m1) = questLanes(x.v1 / s, s)
        let (q2, c2, m2) = questLanes(x.v2 / s, s)
        let (q3, c3, m3) = questLanes(x.v3 / s, s)
        let codes = SIMD4(packLanes(c0, step: 4), packLanes(c1, step: 4), packLanes(c2, step: 4), packLanes(c3, step: 4))
        let mask = packLanes(m0, step: 1) | (packLanes(m1, step: 1) << 8) | (packLanes(m2, step: 1) << 16)
            | (packLanes(m3, step: 1) << 24)
        return Quest(xhat: Block32(q0, q1, q2, q3), codes: codes, mask: mask, scale: scale, finite: true)
    }

    /// `ScaleRule.questScale(std:format: .e2m1)` without the format lookups:
    /// s = 2^floor(log2 s0), s0 = (2.92247856 / 6)·σ + 1e-8, at most 2^127.
    @inline(__always)
    static func questScale(std: Double) -> Float {
        let s0 = (2.92247856 / Double(6)) * std + 1e-8
        guard s0.isFinite else { return exactPow2(127) }
        // s0 ≥ 1e-8 is a normal double: its exponent is the biased field − 1023.
        let e = Int((s0.bitPattern >> 52) & 0x7FF) - 1023
        return exactPow2(Swift.min(e, 127))
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

    /// QuEST(A·H) of every block of A [rows, cols] (cols a multiple of 32), handed to
    /// `write(flatIndex, result)`; false when some block held NaN or ±inf (its results are
    /// not written).
    static func questRows(_ a: UnsafePointer<Float>, rows: Int, cols: Int,
                          write: (Int, Quest) -> Void) -> Bool {
        let blocks = rows * cols / QuartetLinear.block
        guard blocks > 0 else { return true }
        let grain = Parallel.grain(count: blocks, minItems: 512)
        let chunks = (blocks + grain - 1) / grain
        let bad = UnsafeMutablePointer<Bool>.allocate(capacity: chunks)
        bad.initialize(repeating: false, count: chunks)
        defer { bad.deallocate() }
        Parallel.forChunks(count: blocks, grain: grain) { range in
            var ok = true
            var j = range.lowerBound
            while j + 4 <= range.upperBound {
                let i = j * QuartetLinear.block
                let q = quest4(Hadamard.rotate32(Block32(a + i), signs: nil, norm: norm),
                               Hadamard.rotate32(Block32(a + i + 32), signs: nil, norm: norm),
                               Hadamard.rotate32(Block32(a + i + 64), signs: nil, norm: norm),
                               Hadamard.rotate32(Block32(a + i + 96), signs: nil, norm: norm))
                if q.0.finite { write(i, q.0) } else { ok = false }
                if q.1.finite { write(i + 32, q.1) } else { ok = false }
                if q.2.finite { write(i + 64, q.2) } else { ok = false }
                if q.3.finite { write(i + 96, q.3) } else { ok = false }
                j += 4
            }
            while j < range.upperBound {
                let i = j * QuartetLinear.block
                let q = quest(Hadamard.rotate32(Block32(a + i), signs: nil, norm: norm))
                if q.finite { write(i, q) } else { ok = false }
                j += 1
            }
            bad[range.lowerBound / grain] = !ok
        }
        for c in 0..<chunks where bad[c] { return false }
        return true
    }

    @inline(__always) static var gamma: UInt64 { CounterRNG.gamma }

    /// CounterRNG.uniform for the 8 counters base + (k + l)·γ, l = 0..<8.
    @inline(__always)
    static func uniforms(_ base: UInt64, _ k: UInt64) -> SIMD8<Float> {
        uniformsFromCounters(SIMD8<UInt64>(repeating: base) &+ (SIMD8<UInt64>(0, 1, 2, 3, 4, 5, 6, 7) &+ k) &* gamma)
    }

    /// e2m1 stochastic rounding of v = x / s (`roundStochastic`), back to x̂ = q·s.
    @inline(__always)
    static func stochasticLanes(_ x: SIMD8<Float>, _ s: SIMD8<Float>, _ u: SIMD8<Float>) -> SIMD8<Float> {
        let v = x / s
        let a = minNonNegative(magnitude(v), fmax)
        let e = binade(a)
        let q = a * toUnits(e)  // < 4
        let fl = floorNonNegative(q)
        // fl + (q − fl > u ? 1 : 0); q − fl and u lie in [0, 1).
        let up = float(lessMask(bits(u), bits(q - fl)) & Float(1).bitPattern)
        return withSign(v, (fl + up) * toValue(e)) * s
    }

    /// Q_b (e2m1, absmax_div3, stochastic with the draws of flat indices index ..< index + 32
    /// under `key`, NaN for a non-finite group) of one rotated block.
    @inline(__always)
    static func quantizeGradient(_ x: Block32, key: UInt64, index: Int) -> Block32 {
        let amax = amaxBits(x)
        if amax >= 0x7F80_0000 {
            let nan = SIMD8<Float>(repeating: .nan)
            return Block32(nan, nan, nan, nan)
        }
        // ScaleRule.absmaxDiv3: s = 2^floor(log2 amax) / 3; amax 0 or s 0: a zero group.
        let scale = amax == 0 ? 0 : exactPow2(exponentFloor(Float(bitPattern: amax))) / 3
        if !(scale > 0) {
            let z = SIMD8<Float>(repeating: 0)
            return Block32(x.v0 * z, x.v1 * z, x.v2 * z, x.v3 * z)
        }
        let s = SIMD8<Float>(repeating: scale)
        let base = key &+ (UInt64(bitPattern: Int64(index)) &+ 1) &* gamma
        return Block32(stochasticLanes(x.v0, s, uniforms(base, 0)), stochasticLanes(x.v1, s, uniforms(base, 8)),
                       stochasticLanes(x.v2, s, uniforms(base, 16)), stochasticLanes(x.v3, s, uniforms(base, 24)))
    }

    /// Q_b(A·H_b) for A [rows, cols] into out [rows, colsPadded] (zero columns up to a
    /// multiple of 32; draw index = flat index in out).
    static func gradientRows(_ a: UnsafePointer<Float>, rows: Int, cols: Int, signs: Block32, key: UInt64,
                             into out: UnsafeMutablePointer<Float>) {
        let b = QuartetLinear.block
        let cp = (cols + b - 1) / b * b, full = cols / b
        guard rows > 0, cp > 0 else { return }
        let grain = Parallel.grain(count: rows, minItems: Swift.max(1, 16384 / cp))
        Parallel.forChunks(count: rows, grain: grain) { range in
            var tail = Block32(.zero, .zero, .zero, .zero)
            for r in range {
                let src = a + r * cols, dst = out + r * cp
                for j in 0..<full {
                    quantizeGradient(Hadamard.rotate32(Block32(src + j * b), signs: signs, norm: norm),
                                     key: key, index: r * cp + j * b).store(dst + j * b)
                }
                if full * b < cols {
                    withUnsafeMutableBytes(of: &tail) { raw in
                        let t = raw.baseAddress!.assumingMemoryBound(to: Float.self)
                        t.initialize(repeating: 0, count: b)
                        t.update(from: src + full * b, count: cols - full * b)
                    }
                    quantizeGradient(Hadamard.rotate32(tail, signs: signs, norm: norm),
                                     key: key, index: r * cp + full * b).store(dst + full * b)
                }
            }
        }
    }

    @inline(__always)
    static func load8(_ p: UnsafePointer<Float>) -> SIMD8<Float> { UnsafeRawPointer(p).loadUnaligned(as: SIMD8<Float>.self) }

    /// A source matrix S [rows, cols] handed out in 32×32 row-major tiles (the layout of S).
    protocol RowTiles {
        /// stage[i·32 + c] = S[32·band + i, c0 + c] for i, c < 32 (0 past the last row or
        /// column); false when a non-finite value made the tile invalid.
        func fill(_ stage: UnsafeMutablePointer<Float>, band: Int, c0: Int) -> Bool
    }

    /// A float32 matrix.
    struct MatrixRows: RowTiles {
        let a: UnsafePointer<Float>, rows: Int, cols: Int
        @inline(__always)
        func fill(_ stage: UnsafeMutablePointer<Float>, band: Int, c0: Int) -> Bool {
            let b = QuartetLinear.block, width = Swift.min(b, cols - c0)
            for i in 0..<b {
                let r = band * b + i, dst = stage + i * b
                if r < rows && width == b {
                    Block32(a + r * cols + c0).store(dst)
                } else {
                    dst.initialize(repeating: 0, count: b)
                    if r < rows { dst.update(from: a + r * cols + c0, count: width) }
                }
            }
            return true
        }
    }

    /// X_q from its packed e2m1 codes and per-block scales (`Quantizer.dequantize`); cols a
    /// multiple of 32.
    struct CodeRows: RowTiles {
        let codes: UnsafePointer<UInt8>, scales: UnsafePointer<Float>, table: UnsafePointer<Float>, rows: Int, cols: Int
        @inline(__always)
        func fill(_ stage: UnsafeMutablePointer<Float>, band: Int, c0: Int) -> Bool {
            let b = QuartetLinear.block
            for i in 0..<b {
                let r = band * b + i, dst = stage + i * b
                if r < rows {
                    let start = r * cols + c0, s = scales[start / b]
                    let p = codes + start / 2
                    for c in 0..<(b / 2) {
                        let byte = p[c]
                        dst[2 * c] = table[Int(byte & 0xF)] * s
                        dst[2 * c + 1] = table[Int(byte >> 4)] * s
                    }
                } else {
                    dst.initialize(repeating: 0, count: b)
                }
            }
            return true
        }
    }

    /// W_q = QuEST(W·H) computed block by block (cols a multiple of 32); writes the clip
    /// mask m_w on the way.
    struct WeightRows: RowTiles {
        let w: UnsafePointer<Float>, rows: Int, cols: Int, mask: UnsafeMutablePointer<UInt8>
        @inline(__always)
        func fill(_ stage: UnsafeMutablePointer<Float>, band: Int, c0: Int) -> Bool {
            let b = QuartetLinear.block
            var ok = true
            let r0 = band * b, valid = Swift.max(0, Swift.min(b, rows - r0))
            var i = 0
            while i + 4 <= valid {
                let s = (r0 + i) * cols + c0
                let q = quest4(Hadamard.rotate32(Block32(w + s), signs: nil, norm: norm),
                               Hadamard.rotate32(Block32(w + s + cols), signs: nil, norm: norm),
                               Hadamard.rotate32(Block32(w + s + 2 * cols), signs: nil, norm: norm),
                               Hadamard.rotate32(Block32(w + s + 3 * cols), signs: nil, norm: norm))
                for k in 0..<4 {
                    let qk = k == 0 ? q.0 : k == 1 ? q.1 : k == 2 ? q.2 : q.3
                    if qk.finite {
                        storeWord(qk.mask, mask + (s + k * cols) / 8)
                        qk.xhat.store(stage + (i + k) * b)
                    } else {
                        ok = false
                        (stage + (i + k) * b).initialize(repeating: 0, count: b)
                    }
                }
                i += 4
            }
            while i < valid {
                let s = (r0 + i) * cols + c0
                let q = quest(Hadamard.rotate32(Block32(w + s), signs: nil, norm: norm))
                if q.finite {
                    storeWord(q.mask, mask + s / 8)
                    q.xhat.store(stage + i * b)
                } else {
                    ok = false
                    (stage + i * b).initialize(repeating: 0, count: b)
                }
                i += 1
            }
            if valid < b { (stage + valid * b).initialize(repeating: 0, count: (b - valid) * b) }
            return ok
        }
    }

    /// Q_b(Sᵀ·H_b) for S [rows, cols], stored transposed: out[t, n] = Q_b(Sᵀ·H_b)[n, t], out
    /// [rowsPadded, cols] (the layout of S, rows zero-padded to a multiple of 32); the draw
    /// index is still the flat index n·rowsPadded + t of the operand Q_b(Sᵀ·H_b).
    ///
    /// No transpose: the rotation runs down the columns, 8 columns at a time (SIMD lanes are 8
    /// different groups): the same butterflies as `Hadamard.rotate32` (stage h pairs rows
    /// j, j + h into (a + c, a − c); the in-register form computes c + a and a + (−c), the same
    /// IEEE results), then a per-lane scale and per-lane draws. Chunks are 32-row bands.
    static func verticalOperand<S: RowTiles>(_ src: S, rows: Int, cols: Int, signs: UnsafePointer<Float>, key: UInt64,
                                             into out: UnsafeMutablePointer<Float>) -> Bool {
        let b = QuartetLinear.block
        let rp = (rows + b - 1) / b * b, bands = rp / b
        guard bands > 0, cols > 0 else { return true }
        let grain = Parallel.grain(count: bands, minItems: 1)
        let chunks = (bands + grain - 1) / grain
        let bad = UnsafeMutablePointer<Bool>.allocate(capacity: chunks)
        bad.initialize(repeating: false, count: chunks)
        defer { bad.deallocate() }
        Parallel.forChunks(count: bands, grain: grain) { range in
            let stage = UnsafeMutablePointer<Float>.allocate(capacity: b * b + b * 8 + 3 * 8)
            defer { stage.deallocate() }
            let v = stage + b * b, lane = v + b * 8
            var ok = true
            for band in range {
                var c0 = 0
                while c0 < cols {
                    if !src.fill(stage, band: band, c0: c0) { ok = false }
                    let width = Swift.min(b, cols - c0)
                    var u = 0
                    while u < width {
                        verticalUnit(stage + u, signs: signs, key: key, rp: rp, n0: c0 + u, t0: band * b,
                                     valid: Swift.min(8, width - u), v: v, lane: lane, out: out, ldOut: cols)
                        u += 8
                    }
                    c0 += b
                }
            }
            bad[range.lowerBound / grain] = !ok
        }
        for c in 0..<chunks where bad[c] { return false }
        return true
    }

    /// One 32-row × 8-column unit of `verticalOperand`: rows of `src` (stride 32), rotated down
    /// the column, quantized per column group, stored to out[(t0 + i)·ldOut + n0 + l].
    @inline(__always)
    static func verticalUnit(_ src: UnsafePointer<Float>, signs d: UnsafePointer<Float>, key: UInt64, rp: Int,
                             n0: Int, t0: Int, valid: Int, v: UnsafeMutablePointer<Float>,
                             lane: UnsafeMutablePointer<Float>, out: UnsafeMutablePointer<Float>, ldOut: Int) {
        let b = QuartetLinear.block
        @inline(__always) func row(_ i: Int) -> SIMD8<Float> { load8(v + 8 * i) }
        @inline(__always) func set(_ i: Int, _ x: SIMD8<Float>) { Hadamard.store8(x, v + 8 * i) }
        for i in 0..<b { set(i, load8(src + i * b) * SIMD8(repeating: d[i])) }
        var h = 1
        while h < b {
            var j = 0
            while j < b {
                for k in j..<(j + h) {
                    let a = row(k), c = row(k + h)
                    set(k, a + c)
                    set(k + h, a - c)
                }
                j += 2 * h
            }
            h *= 2
        }
        let n = SIMD8<Float>(repeating: norm)
        var m = SIMD8<UInt32>(repeating: 0)
        for i in 0..<b {
            let x = row(i) * n
            set(i, x)
            let a = bits(x) & 0x7FFF_FFFF
            m = m ^ ((m ^ a) & lessMask(m, a))
        }
        // Per-lane scale (ScaleRule.absmaxDiv3) and group kind, in scalar code.
        let scales = lane, zero = lane + 8, nan = lane + 16
        for l in 0..<8 {
            let amax = m[l]
            let scale = amax == 0 || amax >= 0x7F80_0000 ? 0 : exactPow2(exponentFloor(Float(bitPattern: amax))) / 3
            let isNaN = amax >= 0x7F80_0000, isZero = !isNaN && !(scale > 0)
            scales[l] = scale > 0 ? scale : 1
            zero[l] = Float(bitPattern: isZero ? UInt32.max : 0)
            nan[l] = Float(bitPattern: isNaN ? UInt32.max : 0)
        }
        let s = load8(scales), zm = bits(load8(zero)), nm = bits(load8(nan))
        let keep = ~(zm | nm), nanBits = SIMD8<UInt32>(repeating: Float.nan.bitPattern) & nm
        // Counter of lane l, row i: key + ((n0 + l)·rp + t0 + i + 1)·γ.
        let col = SIMD8<UInt64>(repeating: UInt64(n0)) &+ SIMD8<UInt64>(0, 1, 2, 3, 4, 5, 6, 7)
        let base = SIMD8<UInt64>(repeating: key) &+ (col &* UInt64(rp) &+ UInt64(t0 + 1)) &* gamma
        for i in 0..<b {
            let x = row(i)
            let q = stochasticLanes(x, s, uniformsFromCounters(base &+ UInt64(i) &* gamma))
            let y = float((bits(q) & keep) | (bits(x * 0) & zm) | nanBits)
            let dst = out + (t0 + i) * ldOut + n0
            if valid == 8 {
                Hadamard.store8(y, dst)
            } else {
                for l in 0..<valid { dst[l] = y[l] }
            }
        }
    }

    /// CounterRNG.uniform for 8 given counters (key + (index + 1)·γ). The last xor-shift of
    /// `mix` (z ^ z >> 31) leaves the top 24 bits, the only ones used, alone.
    @inline(__always)
    static func uniformsFromCounters(_ c: SIMD8<UInt64>) -> SIMD8<Float> {
        var z = c
        z = (z ^ (z &>> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z &>> 27)) &* 0x94D0_49BB_1331_11EB
        let top = SIMD8<Int32>(truncatingIfNeeded: z &>> 40)
        return SIMD8<Float>(top) * SIMD8<Float>(repeating: 0x1p-24)
    }

    /// g = (g ⊙ m)·Hᵀ in place (m packed bits, H symmetric so Hᵀ = H); cols a multiple of 32.
    static func maskAndUnrotate(_ g: UnsafeMutablePointer<Float>, rows: Int, cols: Int, mask: UnsafePointer<UInt8>) {
        let blocks = rows * cols / QuartetLinear.block
        guard blocks > 0 else { return }
        /// v where bit i of m is set, +0 where it is clear.
        @inline(__always) func keep(_ v: SIMD8<Float>, _ m: UInt32) -> SIMD8<Float> {
            let bit = (SIMD8<UInt32>(repeating: m) &>> SIMD8<UInt32>(0, 1, 2, 3, 4, 5, 6, 7)) & 1
            return float(bits(v) & (SIMD8<UInt32>(repeating: 0) &- bit))
        }
        Parallel.forChunks(count: blocks, grain: Parallel.grain(count: blocks, minItems: 512)) { range in
            for j in range {
                let i = j * QuartetLinear.block
                let m = loadWord(mask + i / 8)
                let x = Block32(g + i)
                let y = Block32(keep(x.v0, m), keep(x.v1, m >> 8), keep(x.v2, m >> 16), keep(x.v3, m >> 24))
                Hadamard.rotate32(y, signs: nil, norm: norm).store(g + i)
            }
        }
    }
}

