import XCTest
import FP4ISA
@testable import FP4Core

/// Every fast kernel of the kernel table (Kernels/KernelTable.swift) against its reference,
/// bit for bit: element kernels on every finite float16 bit pattern (±65504 ... ±2^−24), scaled
/// by powers of two so every binade of the FP4 grids, ties, saturation and subnormal grid
/// steps are hit; decoders on every code; the clamp kernels on rows with signed zeros.
final class KernelParityTests: XCTestCase {
    /// Finite float16 values (both signs), times 2^k for each k.
    static func float16Probe(_ ks: [Int] = [0, -12, 6]) -> [Float] {
        var out: [Float] = []
        for k in ks {
            let s = exactPow2(k)
            for b in 0..<UInt16.max {
                let h = Float(Float16(bitPattern: b))
                if h.isFinite { out.append(h * s) }
            }
        }
        return out
    }

    /// The reference code (sign | magnitude code) and grid value of a grid-scaled v.
    static func reference(_ f: MiniFloatFormat, _ v: Float) -> (code: UInt32, q: Float) {
        let grid = GridParameters(f)
        let a = abs(v)
        let r = f.manBits > 0 ? grid.roundNearestEvenMantissa(a) : grid.roundNearestEvenExponent(a)
        let enc = Quantizer.CodeWriter(grid: grid, signBit: UInt8(f.signBit),
                                       infCode: Int32(f.infMagnitudeCode ?? f.maxFiniteMagnitudeCode))
        return (UInt32(enc.code(v, r)), withSign(of: v, r))
    }

    func testTableRowsMatchTheKernelsTheyName() {
        for f in MiniFloatFormat.all where !f.isScaleOnly {
            let k = FormatKernels.of(f)
            XCTAssertEqual(k.packedNearestEven != .generic, FP4NearestEven(f) != nil, f.name)
            XCTAssertEqual(k.packedNearestEven == .e2m1SIMD8, f == .e2m1, f.name)
            XCTAssertEqual(k.nearestEven == .gridExponent, f.manBits == 0, f.name)
            if f.isFP4 {
                ElementCodec.of(f).decodeTable.withUnsafeBufferPointer {
                    XCTAssertEqual(FP4Decoder($0).isE2M1, k.decode == .e2m1Arithmetic, f.name)
                }
            } else {
                XCTAssertEqual(k.decode, .table, f.name)
            }
        }
        XCTAssertEqual(ScaleRuleKernel.of(.quest), .questRotated32)
        XCTAssertEqual(ScaleRuleKernel.of(.absmaxDiv3), .absmaxDiv3StochasticRotated32)
        for rule in ScaleRule.allCases {
            XCTAssertEqual(rule.neverClips, !rule.canClip, rule.name)
            XCTAssertEqual(rule.needsOnlyGroupAmax, !rule.isTwoLevel && rule != .quest, rule.name)
        }
    }

    func testE2M1ScalarRoundingOnEveryFloat16() {
        let grid = GridParameters(.e2m1)
        var bad = 0
        for v in Self.float16Probe() {
            let a = abs(v)
            if E2M1Kernel.roundMagnitude(a).bitPattern != grid.roundNearestEvenMantissa(a).bitPattern { bad += 1 }
        }
        XCTAssertEqual(bad, 0)
    }

    func testE2M1SIMDAndQuestLanesOnEveryFloat16() {
        var vals = Self.float16Probe()
        while vals.count % 8 != 0 { vals.append(0.75) }
        var bad = 0
        for b in stride(from: 0, to: vals.count, by: 8) {
            var v = SIMD8<Float>()
            for l in 0..<8 { v[l] = vals[b + l] }
            let (code, q) = E2M1Kernel.encode(v)
            let (qs, qc, inside) = QuartetKernels.questLanes(v, SIMD8(repeating: 1))
            for l in 0..<8 {
                let ref = Self.reference(.e2m1, v[l])
                let ok = code[l] == ref.code && q[l].bitPattern == ref.q.bitPattern && qc[l] == ref.code
                    && qs[l].bitPattern == ref.q.bitPattern && inside[l] == (abs(v[l]) < 6 ? 1 : 0)
                if !ok { bad += 1 }
            }
        }
        XCTAssertEqual(bad, 0)
    }

    func testFP4MidpointCodersOnEveryFloat16() throws {
        for f in MiniFloatFormat.all where f.isFP4 {
            let coder = try XCTUnwrap(FP4NearestEven(f))
            var bad = 0
            for v in Self.float16Probe([0, -12, 2]) {
                let (c, q) = coder.encode(v)
                let ref = Self.reference(f, v)
                if c != ref.code || q.bitPattern != ref.q.bitPattern { bad += 1 }
            }
            XCTAssertEqual(bad, 0, f.name)
        }
    }

    func testFP4DecodersOnEveryCode() {
        for f in MiniFloatFormat.all where f.isFP4 {
            ElementCodec.of(f).decodeTable.withUnsafeBufferPointer { tb in
                let d = FP4Decoder(tb)
                for c in UInt32(0)..<16 {
                    XCTAssertEqual(d.value(c).bitPattern, tb[Int(c)].bitPattern, "\(f.name) code \(c)")
                    if d.isE2M1 { XCTAssertEqual(FP4Decoder.valueE2M1(c).bitPattern, tb[Int(c)].bitPattern, "code \(c)") }
                }
            }
        }
    }

    /// The scale functions the quartet kernels call are the rule's own (`groupScale`).
    func testQuartetScalesAreTheRuleScales() {
        for a in Self.float16Probe([0, -20, 20]) where a > 0 {
            let ref = ScaleRule.absmaxDiv3.groupScale(amax: a, format: .e2m1, tensorScale: 1)
            XCTAssertEqual(ScaleRule.absmaxDiv3Scale(amax: a).bitPattern, ref.scale.bitPattern, "amax \(a)")
            let std = Double(a)
            XCTAssertEqual(ScaleRule.questScale(std: std, fmax: 6).bitPattern,
                           ScaleRule.quest.groupScale(amax: 1, format: .e2m1, tensorScale: 1, std: std).scale.bitPattern, "σ \(a)")
        }
    }

    func testClampKernelsAgree() {
        var rng = TestRNG(seed: 77)
        for n in [1, 7, 33, 130] {
            var x = (0..<n).map { _ in Float.random(in: -2..<2, using: &rng) }
            for i in stride(from: 0, to: n, by: 5) { x[i] = i % 2 == 0 ? 0 : -0.0 }
            for (lo, hi) in [(Float(-0.5), Float(0.7)), (0, 0), (-0.0, 0.3), (-1, -0.0)] {
                for useMinMax in [true, false] {
                    var a = [Float](repeating: .nan, count: n), b = a
                    let m = x.withUnsafeBufferPointer { ClampKernel.clampRowAmax($0.baseAddress!, &a, n, lo, hi, useMinMax) }
                    x.withUnsafeBufferPointer { ClampKernel.clampRow($0.baseAddress!, &b, n, lo, hi, useMinMax) }
                    let expect = x.map { useMinMax ? Swift.min(Swift.max($0, lo), hi) : ($0 < lo ? lo : ($0 > hi ? hi : $0)) }
                    XCTAssertEqual(a.map(\.bitPattern), expect.map(\.bitPattern), "n \(n) [\(lo), \(hi)] \(useMinMax)")
                    XCTAssertEqual(b.map(\.bitPattern), expect.map(\.bitPattern))
                    XCTAssertEqual(m, expect.map { $0.bitPattern & 0x7FFF_FFFF }.max() ?? 0)
                }
                var c = [Float](repeating: .nan, count: n)
                let count = x.withUnsafeBufferPointer { ClampKernel.clampCountRow($0.baseAddress!, &c, n, lo, hi) }
                XCTAssertEqual(c.map(\.bitPattern), x.map { ClampKernel.select($0, lo, hi).bitPattern })
                XCTAssertEqual(Int(count), x.filter { $0 < lo || $0 > hi }.count)
            }
        }
    }

    /// nvfp4's block-scale byte: `E4M3ScaleKernel` against the general e4m3 codec on every
    /// float16 pattern (scaled to cover e4m3's range), every e4m3 midpoint ± 2 ulps, saturation.
    func testE4M3ScaleKernelMatchesTheCodec() {
        let codec = ElementCodec.e4m3
        var probe = Self.float16Probe([0, -12, -6, 6]).filter { $0.sign == .plus }
        for c in 0..<126 {  // code 127 is NaN
            let lo = codec.decode(UInt8(c)), hi = codec.decode(UInt8(c + 1))
            let mid = (lo + hi) / 2
            for d in -2...2 { probe.append(Float(bitPattern: UInt32(Int(mid.bitPattern) + d))) }
            probe.append(lo)
        }
        probe += [0, 448, 449, 463.99, 464, 465, 1e30, .infinity, .leastNonzeroMagnitude, .leastNormalMagnitude, 0x1p-10, 0x1p-9]
        var bad = 0
        for t in probe {
            guard let e = E4M3ScaleKernel.nearestEven(t), let ref = codec.encode(t) else { bad += 1; continue }
            if e.code != ref || e.value.bitPattern != codec.decode(ref).bitPattern { bad += 1 }
        }
        XCTAssertEqual(bad, 0)
        XCTAssertNil(E4M3ScaleKernel.nearestEven(.nan))
        XCTAssertNil(E4M3ScaleKernel.nearestEven(-1))
        XCTAssertNil(E4M3ScaleKernel.nearestEven(-0.0))
    }

    /// e2m1 stochastic codes (`StochasticCodeKernel.e2m1SIMD8`) against the general path: every
    /// granularity, divide / two-level / multiply scale rules, odd shapes (groups starting at odd
    /// flat indices), zero groups and signed zeros, several thread counts; draws batched by
    /// `CounterDraws` where the CPU has AVX-512 DQ, and not (FP4SWIFT_GEMM_ISA=avx2).
    func testStochasticE2M1CodesMatchTheGeneralPath() throws {
        try checkStochasticE2M1Codes()
        if GEMMPath.avx2.isSupported {
            setenv(PackedGEMM.pathVariable, "avx2", 1)
            defer { unsetenv(PackedGEMM.pathVariable) }
            XCTAssertFalse(CounterDraws.batched)
            try checkStochasticE2M1Codes()
        }
    }

    /// A row longer than `CounterDraws.maxRowLength` keeps the unbatched draws; same codes.
    func testStochasticE2M1CodesOnALongRow() throws {
        var rng = TestRNG(seed: 17)
        let cols = CounterDraws.maxRowLength + 48
        let x = (0..<cols).map { _ in Float.random(in: -3..<3, using: &rng) }
        let q = Quantizer(format: .e2m1, granularity: .block(16), scaleRule: .nvfp4, rounding: .stochastic, seed: 5)
        var fast = [UInt8](repeating: 0xAA, count: cols / 2), ref = fast
        try x.withUnsafeBufferPointer { xp in
            _ = try q.quantize(xp.baseAddress!, rows: 1, cols: cols, codes: &ref, dequantized: nil, kernels: false)
            _ = try q.quantize(xp.baseAddress!, rows: 1, cols: cols, codes: &fast, dequantized: nil, kernels: true)
        }
        XCTAssertEqual(fast, ref)
    }

    private func checkStochasticE2M1Codes() throws {
        var rng = TestRNG(seed: 91)
        let shapes = [(7, 33), (5, 64), (3, 48), (16, 32), (1, 9), (32, 16)]
        let grans: [Granularity] = [.row, .tensor, .block(16), .block(32), .block2d(16)]
        let rules: [ScaleRule] = [.absmax, .nvfp4, .e8m0, .nvfp4Torchao, .e8m0Ceil, .absmaxDiv3]
        let before = Parallel.threadCount
        defer { Parallel.threadCount = before }
        var checked = 0
        for (rows, cols) in shapes {
            var x = (0..<(rows * cols)).map { _ in Float.random(in: -3..<3, using: &rng) * (Float.random(in: 0..<1, using: &rng) < 0.05 ? 40 : 1) }
            for c in 0..<cols { x[c] = c % 2 == 0 ? 0 : -0.0 }  // a zero first row
            for g in grans where (try? g.layout(rows: rows, cols: cols)) != nil {
                for rule in rules {
                    let q = Quantizer(format: .e2m1, granularity: g, scaleRule: rule, rounding: .stochastic, seed: UInt64(checked))
                    XCTAssertEqual(StochasticCodeKernel.of(q), .e2m1SIMD8)
                    var fast = [UInt8](repeating: 0xAA, count: (rows * cols + 1) / 2), ref = fast
                    try x.withUnsafeBufferPointer { xp in
                        try q.quantize(xp.baseAddress!, rows: rows, cols: cols, codes: &ref, dequantized: nil, kernels: false)
                        for threads in [1, 3] {
                            Parallel.threadCount = threads
                            _ = try q.quantize(xp.baseAddress!, rows: rows, cols: cols, codes: &fast, dequantized: nil, kernels: true)
                            XCTAssertEqual(fast, ref, "\(rows)x\(cols) \(g.name) \(rule.name) threads \(threads)")
                        }
                    }
                    checked += 1
                }
            }
        }
        XCTAssertGreaterThan(checked, 80)
        XCTAssertEqual(StochasticCodeKernel.of(Quantizer(format: .e2m1, rounding: .stochastic, stochasticBits: 8)), .generic)
        XCTAssertEqual(StochasticCodeKernel.of(Quantizer(format: .e1m2, rounding: .stochastic)), .generic)
    }

    /// The layers' transposes: `TransposeKernel.avx2` (where the CPU runs it) equals the generic
    /// loop, including edges and padded output rows (ldb > rows), which stay untouched.
    func testTransposeKernelsAgree() throws {
        var rng = TestRNG(seed: 5)
        let kernels: [TransposeKernel] = fp4isa_cpu_has(FP4ISA_AVX2) != 0 ? [.generic, .avx2] : [.generic]
        for (rows, cols, pad) in [(1, 1, 0), (7, 9, 3), (8, 8, 0), (64, 64, 0), (65, 130, 5), (200, 17, 8), (3, 70, 0)] {
            let a = (0..<(rows * cols)).map { _ in Float.random(in: -1..<1, using: &rng) }
            let ld = rows + pad
            for k in kernels {
                var b = [Float](repeating: .nan, count: cols * ld)
                a.withUnsafeBufferPointer { ap in TransposeKernel.run(ap.baseAddress!, rows: rows, cols: cols, into: &b, ldb: ld, kernel: k) }
                var bad = 0
                for c in 0..<cols {
                    for r in 0..<ld where r < rows ? b[c * ld + r] != a[r * cols + c] : !b[c * ld + r].isNaN { bad += 1 }
                }
                XCTAssertEqual(bad, 0, "\(rows)x\(cols) ldb \(ld) \(k)")
            }
        }
    }
}
