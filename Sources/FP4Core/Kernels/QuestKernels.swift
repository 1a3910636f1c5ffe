/// The fused per-block kernels of `QuartetLinear` (forward: this file; backward:
/// QuartetGradientKernels.swift). Each one does, for one 32-block held in four SIMD8
/// registers, exactly the float32 operations of the general path (`Hadamard.transform`,
/// `Quantizer.scales` / `quantize` / `fakeQuantize` / `clipMask` with e2m1, block(32), quest +
/// RNE or absmax_div3 + stochastic), in the same order, so the bits are the same; only the
/// number of passes over memory differs. Every output element depends on its own block and
/// flat index only, so any chunking gives the same result. `KernelTable` lists them next to
/// their references; QuartetKernelTests and KernelParityTests check them bit for bit.
enum QuartetKernels {
    /// Group size of every Quartet quantizer (`QuartetKernels.block`).
    static let block = 32
    // Constants are computed properties, not `static let`s (those cost a `swift_once` check
    // on every access inside the loops).
    @inline(__always) static var norm: Float { Float(1) / Float(32).squareRoot() }

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

    /// e2m1 RNE of a grid vector v (`E2M1Kernel.encode`): returns (q·s, code, |v| < 6 as 0/1).
    /// (Replacing this function's own binade/round/code copy by `E2M1Kernel.encode`: callgrind,
    /// 256x512x256 quartet forward, 1 thread: 54.8M -> 46.9M instructions.)
    @inline(__always)
    static func questLanes(_ v: SIMD8<Float>, _ s: SIMD8<Float>) -> (SIMD8<Float>, SIMD8<UInt32>, SIMD8<UInt32>) {
        let (code, q) = E2M1Kernel.encode(v)
        let inside = lessMask(bits(magnitude(v)), SIMD8(repeating: fmax.bitPattern)) & 1
        return (q * s, code, inside)
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
    /// `@_transparent` (mandatory inlining): with `@inline(__always)` the optimizer kept it an
    /// out-of-line call inside `questRows` (callgrind, 256x512x256 quartet forward, 1 thread,
    /// 3 calls: 46.9M -> 43.4M instructions once inlined).
    @_transparent
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
        let scale = ScaleRule.questScale(std: std, fmax: 6)
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

    /// Where `questRows(_:rows:cols:into:)` writes the block at flat index i; nil outputs are
    /// skipped.
    struct QuestTargets {
        /// The 16 code bytes at codes + i / 2 (element 2k in the low nibble of byte k).
        var codes: UnsafeMutablePointer<UInt8>? = nil
        /// The scale at scales[i / 32].
        var scales: UnsafeMutablePointer<Float>? = nil
        /// The clip-mask word at mask + i / 8 (little-endian, bit k for element k).
        var mask: UnsafeMutablePointer<UInt8>? = nil
        /// x̂ at xhat + i.
        var xhat: UnsafeMutablePointer<Float>? = nil
    }

    /// QuEST(A·H) of every block of A [rows, cols] (cols a multiple of 32) into `targets`: the
    /// AVX-512 kernel where `wideUnits` (QuartetWideUnits.swift), else the Swift one below (the
    /// reference; both give the same bits). False when some block held NaN or ±inf (that
    /// block's outputs are then unspecified).
    static func questRows(_ a: UnsafePointer<Float>, rows: Int, cols: Int, into t: QuestTargets) -> Bool {
        if wideUnits { return questRowsWide(a, rows: rows, cols: cols, into: t) }
        let b = QuartetKernels.block
        // The forward's target sets get a closure each, so the optimizer specializes `questRows`
        // for each without per-block optional tests (one shared closure: ~8% slower, 1 thread).
        switch (t.codes, t.scales, t.mask, t.xhat) {
        case let (c?, s?, m?, nil):
            return questRows(a, rows: rows, cols: cols) { i, q in
                storeCodes(q.codes, c + i / 2)
                s[i / b] = q.scale
                storeWord(q.mask, m + i / 8)
            }
        case let (c?, s?, nil, nil):
            return questRows(a, rows: rows, cols: cols) { i, q in
                storeCodes(q.codes, c + i / 2)
                s[i / b] = q.scale
            }
        case let (nil, nil, nil, x?):
            return questRows(a, rows: rows, cols: cols) { i, q in q.xhat.store(x + i) }
        default:
            return questRows(a, rows: rows, cols: cols) { i, q in
                if let c = t.codes { storeCodes(q.codes, c + i / 2) }
                if let s = t.scales { s[i / b] = q.scale }
                if let m = t.mask { storeWord(q.mask, m + i / 8) }
                if let x = t.xhat { q.xhat.store(x + i) }
            }
        }
    }

    /// QuEST(A·H) of every block of A [rows, cols] (cols a multiple of 32), handed to
    /// `write(flatIndex, result)`; false when some block held NaN or ±inf (its results are
    /// not written).
    static func questRows(_ a: UnsafePointer<Float>, rows: Int, cols: Int,
                          write: (Int, Quest) -> Void) -> Bool {
        let blocks = rows * cols / QuartetKernels.block
        guard blocks > 0 else { return true }
        return Parallel.allChunks(count: blocks, grain: Parallel.grain(count: blocks, minItems: 512)) { range in
            var ok = true
            var j = range.lowerBound
            while j + 4 <= range.upperBound {
                let i = j * QuartetKernels.block
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
                let i = j * QuartetKernels.block
                let q = quest(Hadamard.rotate32(Block32(a + i), signs: nil, norm: norm))
                if q.finite { write(i, q) } else { ok = false }
                j += 1
            }
            return ok
        }
    }
}
