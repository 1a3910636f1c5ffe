import XCTest
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
}
