import XCTest
import FP4ISA
import Glibc
@testable import FP4Core

/// The AVX-512 QuEST kernel (`fp4isa_quest_blocks_avx512`) against the Swift `QuartetKernels.quest`
/// of `Hadamard.rotate32`, bit for bit: codes, scale, clip mask, x̂ and the non-finite report, per
/// block over the awkward kinds (magnitudes from subnormal to near overflow, constant, zero and
/// −0 blocks, NaN and ±inf, blocks built so that x / s lands on the e2m1 rounding ties and on
/// either side of the clip boundary |x / s| = 6), for counts that leave partial batches, strided sources and
/// inputs that end at an unmapped page; then through the public kernels (`questRows(into:)`,
/// `WeightRows.fill`) with the wide kernel on (default path) and off (FP4SWIFT_GEMM_ISA=avx2).
final class QuestWideTests: XCTestCase {
    let norm = QuartetKernels.norm

    /// One block's outputs, as bit patterns.
    struct Out: Equatable {
        var codes: [UInt8], scale: UInt32, mask: UInt32, xhat: [UInt32], finite: Bool
    }

    /// The Swift reference of one block.
    func reference(_ x: UnsafePointer<Float>) -> Out {
        let q = QuartetKernels.quest(Hadamard.rotate32(Block32(x), signs: nil, norm: norm))
        var codes = [UInt8](repeating: 0, count: 16)
        codes.withUnsafeMutableBufferPointer { QuartetKernels.storeCodes(q.codes, $0.baseAddress!) }
        var xhat = [Float](repeating: 0, count: 32)
        xhat.withUnsafeMutableBufferPointer { q.xhat.store($0.baseAddress!) }
        return Out(codes: codes, scale: q.scale.bitPattern, mask: q.mask, xhat: xhat.map(\.bitPattern), finite: q.finite)
    }

    /// The rotated block and its x / s (the reference's scale): where the rounding decides.
    func grid(_ x: UnsafePointer<Float>) -> [Float] {
        let q = QuartetKernels.quest(Hadamard.rotate32(Block32(x), signs: nil, norm: norm))
        var r = [Float](repeating: 0, count: 32)
        r.withUnsafeMutableBufferPointer { Hadamard.rotate32(Block32(x), signs: nil, norm: norm).store($0.baseAddress!) }
        return r.map { $0 / q.scale }
    }

    /// c with fl(c · norm) == target, if the search finds one.
    func preimage(_ target: Float) -> Float? {
        var c = target / norm
        for _ in 0..<16 where c * norm != target { c = c * norm < target ? c.nextUp : c.nextDown }
        return c * norm == target ? c : nil
    }

    /// A block of the given kind (see the cases).
    func block(kind: Int, _ rng: inout TestRNG) -> [Float] {
        var b = [Float](repeating: 0, count: 32)
        let p = Int.random(in: -100...100, using: &rng)  // a power of two that moves the tie constructions exactly
        let sign: Float = Bool.random(using: &rng) ? 1 : -1
        switch kind {
        case 0: break  // +0
        case 1: b = b.map { _ in -0.0 }
        case 2: b = b.map { _ in Bool.random(using: &rng) ? 0 : -0.0 }
        case 3:  // constant
            let c = Float.random(in: -1...1, using: &rng) * Float(sign: .plus, exponent: Int.random(in: -140...120, using: &rng),
                                                                   significand: 1)
            b = b.map { _ in c }
        case 4: b = b.map { _ in Float.random(in: -1...1, using: &rng) * 0x1p-140 }  // subnormal
        case 5:  // σ near 1e-8, where the + 1e-8 of the scale matters
            b = b.map { _ in Float.random(in: -1...1, using: &rng) * 3e-8 }
        case 6:  // near overflow: some rotations overflow to ±inf (non-finite), some do not
            b = b.map { _ in Float.random(in: -1...1, using: &rng) * [3e38, 1e38, 1e37][Int.random(in: 0..<3, using: &rng)] }
        case 7:  // one huge value (the largest scales)
            b[Int.random(in: 0..<32, using: &rng)] = sign * Float.random(in: 1e38...Float.greatestFiniteMagnitude, using: &rng)
        case 8:  // NaN or ±inf somewhere
            b = b.map { _ in Float.random(in: -1...1, using: &rng) }
            b[Int.random(in: 0..<32, using: &rng)] = [Float.nan, .infinity, -.infinity][Int.random(in: 0..<3, using: &rng)]
        case 9:  // one value: all 32 rotated magnitudes X, σ = X, x / s = t in [2, 4) (ties 2.5, 3.5)
            let t: Float = [2.5, 3.5, 2.25, 2.75, 3, 3.25, 3.75][Int.random(in: 0..<7, using: &rng)]
            if let c = preimage(t * Float(sign: .plus, exponent: p, significand: 1)) { b[Int.random(in: 1..<32, using: &rng)] = sign * c }
        case 10:  // x0 = x1: 16 rotated values A, 16 zeros, σ = A / 2, x / s = t in [4, 8) (tie 5, either
            // side of the clip boundary 6, which no rotated value reaches: see testClipBoundary)
            let t: Float = [5, Float(6).nextDown, Float(6).nextUp, 7, 4.5, 5.5, 6.5, 7.5][Int.random(in: 0..<8, using: &rng)]
            if let c = preimage(t * Float(sign: .plus, exponent: p, significand: 1)) {
                b[0] = sign * c / 2
                b[1] = b[0]
            }
        case 11:  // as 10 with t = 5 plus x2 = d: 16 rotated values ±d·norm = ±t'·s (ties 0.25 ... 1.75)
            let t: Float = [0.25, 0.75, 1.25, 1.75, 0.5, 1, 1.5][Int.random(in: 0..<7, using: &rng)]
            let s = Float(sign: .plus, exponent: p, significand: 1)
            if let c = preimage(5 * s), let d = preimage(t * s) {
                b[0] = sign * c / 2
                b[1] = b[0]
                b[2] = Bool.random(using: &rng) ? d : -d
            }
        case 12:  // many equal magnitudes on a coarse grid
            let s = Float(sign: .plus, exponent: Int.random(in: -30...30, using: &rng), significand: 1)
            b = b.map { _ in Float(Int.random(in: -8...8, using: &rng)) * 0.25 * s }
        default:  // Gaussian-ish, random magnitude, sometimes an outlier
            let s = Float(sign: .plus, exponent: Int.random(in: -126...100, using: &rng), significand: 1)
            b = b.map { _ in (Float.random(in: -1...1, using: &rng) + Float.random(in: -1...1, using: &rng)) * s }
            if Bool.random(using: &rng) { b[Int.random(in: 0..<32, using: &rng)] *= 50 }
        }
        return b
    }

    /// `bytes` of memory whose end touches an unmapped page (reads or writes past it crash).
    final class Guarded {
        let base: UnsafeMutableRawPointer, length: Int, start: UnsafeMutableRawPointer
        init(bytes: Int) {
            let page = Int(sysconf(Int32(_SC_PAGESIZE)))
            let data = (bytes + page - 1) / page * page
            length = data + page
            let p = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
            precondition(p != nil && p != UnsafeMutableRawPointer(bitPattern: -1))
            base = p!
            precondition(mprotect(base + data, page, PROT_NONE) == 0)
            start = base + (data - bytes)
        }
        deinit { munmap(base, length) }
        func floats() -> UnsafeMutablePointer<Float> { start.assumingMemoryBound(to: Float.self) }
        func bytes() -> UnsafeMutablePointer<UInt8> { start.assumingMemoryBound(to: UInt8.self) }
    }

    func testBlocksEqualTheSwiftKernel() throws {
        try XCTSkipIf(fp4isa_cpu_has(FP4ISA_AVX512DQ) == 0, "this CPU has no AVX-512 DQ")
        var (rng, seed) = TestRNG.fresh()
        var ties = 0, boundary = 0, nonFinite = 0, zeros = 0, checked = 0
        let tiePoints: Set<Float> = [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5]
        for trial in 0..<400 {
            let count = [1, 7, 8, 9, 16, 17, 31, Int.random(in: 1...40, using: &rng)][trial % 8]
            let stride = 32 * [1, 1, 2, 3][trial % 4]  // block k at 32 · k or a row stride apart
            let f = (count - 1) * stride + 32  // floats spanned (the last block ends the buffer)
            let src = Guarded(bytes: 4 * f)
            let s = src.floats()
            for i in 0..<f { s[i] = .nan }  // gaps of a strided source are never read as data
            var kinds: [Int] = []
            for k in 0..<count {
                let kind = trial % 5 == 0 ? Int.random(in: 0..<3, using: &rng) : Int.random(in: 0..<18, using: &rng)
                kinds.append(kind)
                let b = block(kind: kind, &rng)
                for i in 0..<32 { s[k * stride + i] = b[i] }
            }
            // Outputs at their flat indices (codes f/2, scales f/32, mask f/8), x̂ 32 per block;
            // each ends its buffer, sentinel-filled.
            let codes = Guarded(bytes: f / 2), scales = Guarded(bytes: 4 * (f / 32)), mask = Guarded(bytes: f / 8)
            let xhat = Guarded(bytes: 4 * 32 * count)
            for i in 0..<(f / 2) { codes.bytes()[i] = 0xA5 }
            for i in 0..<(f / 32) { scales.floats()[i] = Float(bitPattern: 0x7FC0_1234) }
            for i in 0..<(f / 8) { mask.bytes()[i] = 0x5A }
            for i in 0..<(32 * count) { xhat.floats()[i] = Float(bitPattern: 0x7FC0_4321) }
            let bad = fp4isa_quest_blocks_avx512(s, Int64(stride), Int64(count), norm, codes.bytes(), scales.floats(),
                                                 mask.bytes(), xhat.floats(), 32)
            var expectBad: UInt32 = 0
            for k in 0..<count {
                let r = reference(s + k * stride)
                let o = k * stride
                let got = Out(codes: (0..<16).map { codes.bytes()[o / 2 + $0] }, scale: scales.floats()[o / 32].bitPattern,
                              mask: (0..<4).reduce(UInt32(0)) { $0 | UInt32(mask.bytes()[o / 8 + $1]) << (8 * $1) },
                              xhat: (0..<32).map { xhat.floats()[32 * k + $0].bitPattern }, finite: r.finite)
                let what = "trial \(trial), block \(k) of \(count), kind \(kinds[k]), stride \(stride), seed \(seed)"
                if r.finite {
                    XCTAssertEqual(got, r, what)
                    checked += 1
                    if r.scale == Float(1).bitPattern && r.mask == .max && r.xhat.allSatisfy({ $0 & 0x7FFF_FFFF == 0 }) { zeros += 1 }
                    let v = grid(s + k * stride)
                    ties += v.filter { tiePoints.contains(abs($0)) }.count
                    boundary += v.filter { abs($0) == Float(6).nextDown || abs($0) == Float(6).nextUp }.count
                } else {
                    // Nothing written but a zero x̂.
                    expectBad += 1
                    XCTAssertEqual(got.codes, [UInt8](repeating: 0xA5, count: 16), what)
                    XCTAssertEqual(got.scale, 0x7FC0_1234, what)
                    XCTAssertEqual(got.mask, 0x5A5A_5A5A, what)
                    XCTAssertEqual(got.xhat, [UInt32](repeating: 0, count: 32), what)
                }
            }
            XCTAssertEqual(bad, expectBad, "trial \(trial), seed \(seed)")
            nonFinite += Int(expectBad)
            // The gaps between strided blocks' outputs stay untouched.
            for k in 0..<count where stride > 32 {
                let o = k * stride
                for i in (o / 2 + 16)..<((o + stride) / 2) where i < f / 2 { XCTAssertEqual(codes.bytes()[i], 0xA5) }
                for i in (o / 8 + 4)..<((o + stride) / 8) where i < f / 8 { XCTAssertEqual(mask.bytes()[i], 0x5A) }
            }
            // NULL outputs are skipped: x̂ alone.
            let bad2 = fp4isa_quest_blocks_avx512(s, Int64(stride), Int64(count), norm, nil, nil, nil, xhat.floats(), 32)
            XCTAssertEqual(bad2, expectBad)
        }
        XCTAssertGreaterThan(checked, 3000)
        XCTAssertGreaterThan(ties, 300, "the tie blocks produced too few ties")
        XCTAssertGreaterThan(boundary, 100, "too few values next to |x / s| = 6")
        XCTAssertGreaterThan(nonFinite, 100)
        XCTAssertGreaterThan(zeros, 100)
    }

    /// |x / s| = 6 exactly never happens: s is a power of two and every rotated value is
    /// fl(h · norm) for a float h, which is never 1.5 · 2^k (the spacing of h · norm there is
    /// 1.41 ulps of the product and skips it). The closest values, 6 ∓ 1 ulp, are in the block
    /// test; this checks the claim over all h that come near.
    func testClipBoundary() {
        let c = Float(6) / norm
        var h = c
        for _ in 0..<64 { h = h.nextDown }
        var below = false, above = false
        for _ in 0..<128 {
            let x = h * norm
            XCTAssertNotEqual(x, 6)
            if x == Float(6).nextDown { below = true }
            if x == Float(6).nextUp { above = true }
            h = h.nextUp
        }
        XCTAssertTrue(below && above)
    }

    /// A matrix of blocks of the kinds above; non-finite ones only where `nonFinite`.
    func matrix(rows: Int, cols: Int, nonFinite: Bool, _ rng: inout TestRNG) -> [Float] {
        var a = [Float](repeating: 0, count: rows * cols)
        for j in 0..<(rows * cols / 32) {
            var kind = Int.random(in: 0..<18, using: &rng)
            if !nonFinite && (kind == 6 || kind == 8) { kind = 13 }
            let b = block(kind: kind, &rng)
            for i in 0..<32 { a[32 * j + i] = b[i] }
        }
        return a
    }

    /// `questRows(into:)` and `WeightRows.fill` with the wide kernel on or off.
    func publicKernels(wide: Bool, a: [Float], rows: Int, cols: Int) -> [[UInt32]] {
        if wide { unsetenv(PackedGEMM.pathVariable) } else { setenv(PackedGEMM.pathVariable, "avx2", 1) }
        defer { unsetenv(PackedGEMM.pathVariable) }
        XCTAssertEqual(QuartetKernels.wideUnits, wide)
        let n = rows * cols
        var codes = [UInt8](repeating: 0xA5, count: n / 2), scales = [Float](repeating: .nan, count: n / 32)
        var mask = [UInt8](repeating: 0x5A, count: n / 8), xhat = [Float](repeating: 7, count: n)
        let ok = a.withUnsafeBufferPointer { ap in
            codes.withUnsafeMutableBufferPointer { c in
                scales.withUnsafeMutableBufferPointer { s in
                    mask.withUnsafeMutableBufferPointer { m in
                        xhat.withUnsafeMutableBufferPointer { x in
                            QuartetKernels.questRows(ap.baseAddress!, rows: rows, cols: cols,
                                                     into: .init(codes: c.baseAddress!, scales: s.baseAddress!,
                                                                 mask: m.baseAddress!, xhat: x.baseAddress!))
                        }
                    }
                }
            }
        }
        // Codes + scales only, then x̂ only (the forward's other target sets).
        var codes2 = [UInt8](repeating: 0xA5, count: n / 2), scales2 = [Float](repeating: .nan, count: n / 32)
        var xhat2 = [Float](repeating: 7, count: n)
        let ok2 = a.withUnsafeBufferPointer { ap in
            codes2.withUnsafeMutableBufferPointer { c in
                scales2.withUnsafeMutableBufferPointer { s in
                    QuartetKernels.questRows(ap.baseAddress!, rows: rows, cols: cols,
                                             into: .init(codes: c.baseAddress!, scales: s.baseAddress!))
                }
            }
        }
        let ok3 = a.withUnsafeBufferPointer { ap in
            xhat2.withUnsafeMutableBufferPointer { x in
                QuartetKernels.questRows(ap.baseAddress!, rows: rows, cols: cols, into: .init(xhat: x.baseAddress!))
            }
        }
        // WeightRows: every 32 × 32 tile.
        var tiles: [UInt32] = [], fillOK: [UInt32] = []
        var wmask = [UInt8](repeating: 0x5A, count: n / 8)
        var stage = [Float](repeating: 7, count: 32 * 32)
        a.withUnsafeBufferPointer { ap in
            wmask.withUnsafeMutableBufferPointer { m in
                let src = QuartetKernels.WeightRows(w: ap.baseAddress!, rows: rows, cols: cols, mask: m.baseAddress!)
                XCTAssertEqual(src.wide, wide)
                for band in 0..<((rows + 31) / 32) {
                    for c0 in stride(from: 0, to: cols, by: 32) {
                        let ok = stage.withUnsafeMutableBufferPointer { src.fill($0.baseAddress!, band: band, c0: c0) }
                        tiles += stage.map(\.bitPattern)
                        fillOK.append(ok ? 1 : 0)
                    }
                }
            }
        }
        return [codes.map { UInt32($0) }, scales.map(\.bitPattern), mask.map { UInt32($0) }, xhat.map(\.bitPattern),
                [ok ? 1 : 0, ok2 ? 1 : 0, ok3 ? 1 : 0], codes2.map { UInt32($0) }, scales2.map(\.bitPattern),
                xhat2.map(\.bitPattern), tiles, fillOK, wmask.map { UInt32($0) }]
    }

    func testPublicKernelsEqualTheSwiftPath() throws {
        try XCTSkipIf(fp4isa_cpu_has(FP4ISA_AVX512DQ) == 0 || !GEMMPath.avx512vnni.isSupported,
                      "this CPU runs no AVX-512 units")
        try XCTSkipIf(getenv(PackedGEMM.pathVariable) != nil, "FP4SWIFT_GEMM_ISA is set")
        var (rng, seed) = TestRNG.fresh()
        // Block counts that leave partial batches of 8, row counts that leave partial bands of 32,
        // and enough blocks for several parallel chunks.
        for (rows, cols) in [(1, 32), (3, 32), (5, 96), (33, 64), (7, 160), (70, 96), (40, 1024), (600, 64)] {
            for nonFinite in [false, true] {
                let a = matrix(rows: rows, cols: cols, nonFinite: nonFinite, &rng)
                let swift = publicKernels(wide: false, a: a, rows: rows, cols: cols)
                let wide = publicKernels(wide: true, a: a, rows: rows, cols: cols)
                XCTAssertEqual(swift.count, wide.count)
                // With non-finite blocks, questRows leaves their x̂ unspecified (the wide kernel
                // zeros it, the Swift one leaves it): compare x̂ only for all-finite inputs.
                for (k, (u, v)) in zip(swift, wide).enumerated() where !(nonFinite && (k == 3 || k == 7)) {
                    XCTAssertEqual(u, v, "output \(k), \(rows)x\(cols), non-finite \(nonFinite), seed \(seed)")
                }
                if !nonFinite { XCTAssertEqual(swift[4], [1, 1, 1]) }
            }
        }
    }
}
