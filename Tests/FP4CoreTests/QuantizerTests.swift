import XCTest
import Foundation
@testable import FP4Core

/// Spec §2: fake quantization (v = x / s, q = round(v), x̂ = q·s) for every granularity,
/// on a small matrix whose outputs are computed by hand in the comments.
final class QuantizerTests: XCTestCase {
    /// numerics.md §1: inside a quantizer e5m2 saturates like every format (the e8m0 floor
    /// scale lets |v| reach (fmax, 2·fmax)); the bare codec keeps IEEE overflow.
    func testE5M2SaturatesInsideQuantizers() throws {
        let q = Quantizer(format: .e5m2, granularity: .row, scaleRule: .e8m0)
        let (out, bad) = try q.fakeQuantize([1.9, 1, -0.5, 0.25], rows: 1, cols: 4)
        XCTAssertEqual(bad, 0)
        XCTAssertEqual(out, [1.75, 1, -0.5, 0.25])
        let tiny = try Quantizer(format: .e5m2, granularity: .tensor, scaleRule: .absmax).fakeQuantize([1.95847e-40], rows: 1, cols: 1)
        XCTAssertTrue(tiny.out[0].isFinite)
        XCTAssertEqual(ElementCodec.of(.e5m2).encode(70000), 0x7C)  // +inf code
    }


    /// 4 × 4, row-major. Every group amax of every granularity below is 6·2^k or 9·2^k,
    /// so every absmax scale (amax / 6) is exact and the ties are exact ties.
    static let x: [Float] = [
        6,    3,     -1.5,   0.2,
        0.5, -12,     1.5,   9,
        1.5,  0.75,  -0.375, 0.3,
        0,   -0.0,    0,     0,
    ]

    private func fq(_ g: Granularity, _ rule: ScaleRule = .absmax, _ rounding: Rounding = .nearestEven,
                    _ x: [Float] = QuantizerTests.x, rows: Int = 4, cols: Int = 4,
                    format: MiniFloatFormat = .e2m1) throws -> [Float] {
        let q = Quantizer(format: format, granularity: g, scaleRule: rule, rounding: rounding)
        let (out, bad) = try q.fakeQuantize(x, rows: rows, cols: cols)
        XCTAssertEqual(bad, 0)
        return out
    }

    func testTensorGranularity() throws {
        // amax 12, s = 2.
        // r0 v = [3, 1.5, -0.75, 0.1]      -> q = [3, 1.5, -1 (tie), 0]
        // r1 v = [0.25, -6, 0.75, 4.5]     -> q = [0 (tie), -6, 1 (tie), 4]
        // r2 v = [0.75, 0.375, -0.1875, .15] -> q = [1 (tie), 0.5, -0, 0]
        assertBitwiseEqual(try fq(.tensor), [
            6,  3,   -2,   0,
            0, -12,   2,   8,
            2,  1,   -0.0, 0,
            0, -0.0,  0,   0,
        ])
    }

    func testRowGranularity() throws {
        // s per row: 1, 2, 0.25, zero group.
        // r1 v = [0.25, -6, 0.75, 4.5] -> [0, -6, 1, 4]; r2 v = [6, 3, -1.5, 1.2] -> [6, 3, -1.5, 1]
        assertBitwiseEqual(try fq(.row), [
            6,    3,     -1.5,   0,
            0,  -12,      2,     8,
            1.5,  0.75,  -0.375, 0.25,
            0,   -0.0,    0,     0,
        ])
    }

    func testColumnGranularity() throws {
        // c0 amax 6 s=1: [6, 0.5, 1.5, 0]
        // c1 amax 12 s=2: v = [1.5, -6, 0.375, -0] -> [1.5, -6, 0.5, -0]
        // c2 amax 1.5 s=0.25: v = [-6, 6, -1.5, 0]
        // c3 amax 9 s=1.5: v = [0.133, 6, 0.2, 0] -> [0, 6, 0, 0]
        assertBitwiseEqual(try fq(.column), [
            6,    3,     -1.5,   0,
            0.5, -12,     1.5,   9,
            1.5,  1,     -0.375, 0,
            0,   -0.0,    0,     0,
        ])
    }

    func testBlockGranularity() throws {
        // Pairs along each row: [6,3] s=1; [-1.5,0.2] s=0.25, v=[-6,0.8] -> [-6,1];
        // [0.5,-12] s=2, v=[0.25,-6] -> [0,-6]; [1.5,9] s=1.5, v=[1,6];
        // [1.5,0.75] s=0.25; [-0.375,0.3] s=0.0625, v=[-6,4.8] -> [-6,4]; zeros.
        assertBitwiseEqual(try fq(.block(2)), [
            6,    3,     -1.5,   0.25,
            0,  -12,      1.5,   9,
            1.5,  0.75,  -0.375, 0.25,
            0,   -0.0,    0,     0,
        ])
        // block(4) on 4 columns is the row granularity.
        assertBitwiseEqual(try fq(.block(4)), try fq(.row))
    }

    func testBlock2DGranularity() throws {
        // Tiles: rows 0-1 × cols 0-1 amax 12 s=2: v = [3, 1.5; 0.25, -6] -> [3, 1.5; 0, -6]
        //        rows 0-1 × cols 2-3 amax 9 s=1.5: v = [-1, 0.133; 1, 6] -> [-1, 0; 1, 6]
        //        rows 2-3 × cols 0-1 amax 1.5 s=0.25: exact
        //        rows 2-3 × cols 2-3 amax 0.375 s=0.0625: v = [-6, 4.8; 0, 0] -> [-6, 4; 0, 0]
        assertBitwiseEqual(try fq(.block2d(2)), [
            6,    3,     -1.5,   0,
            0,  -12,      1.5,   9,
            1.5,  0.75,  -0.375, 0.25,
            0,   -0.0,    0,     0,
        ])
        // block2d(4) on a 4 × 4 matrix is the tensor granularity.
        assertBitwiseEqual(try fq(.block2d(4)), try fq(.tensor))
    }

    func testNearestAwayTensor() throws {
        // As testTensorGranularity, ties away: r1 0.25 -> 0.5 (x̂ 1); 0.75 -> 1; 4.5 -> 4 (no tie).
        assertBitwiseEqual(try fq(.tensor, .absmax, .nearestAway), [
            6,  3,   -2,   0,
            1, -12,   2,   8,
            2,  1,   -0.0, 0,
            0, -0.0,  0,   0,
        ])
    }

    /// A 1-D tensor is one row.
    func testOneDimensionalIsOneRow() throws {
        let v: [Float] = [6, -2.5, 0.75, 7]
        // amax 7, pow2 s = 2: v = [3, -1.25, 0.375, 3.5] -> [3, -1, 0.5, 4] (RNE)
        let q = Quantizer(format: .e2m1, granularity: .row, scaleRule: .pow2)
        assertBitwiseEqual(try q.fakeQuantize(v, rows: 1, cols: 4).out, [6, -2, 1, 8])
    }

    // MARK: Other scale rules inside the quantizer

    func testPow2RowQuantizer() throws {
        // Row 0: amax 7 -> s = 2: v = [3.5, -0.5, 1.25, 2.9] -> [4, -0.5, 1, 3] -> [8, -1, 2, 6]
        // Row 1: amax 0.3 -> s = 0.0625: v = [4.8, -1.6, 0.4, 2.5] -> [4, -1.5, 0.5, 2] (2.5 tie -> 2)
        let x: [Float] = [7, -1, 2.5, 5.8, 0.3, -0.1, 0.025, 0.15625]
        assertBitwiseEqual(try fq(.row, .pow2, .nearestEven, x, rows: 2, cols: 4), [
            8, -1, 2, 6,
            0.25, -0.09375, 0.03125, 0.125,
        ])
    }

    func testE8M0BlockQuantizerSaturatesInsideTheTopBinade() throws {
        // amax 7: s = 2^(2-2) = 1, values in (6, 8) saturate to 6 (intended by the spec).
        // v = [7, 1.1, -0.3, 6.9] -> [6, 1, -0.5, 6]; second block amax 0.7: s = 2^(-1-2) = 1/8,
        // v = [0.7, -0.2, 0.3, 0.05]·8 = [5.6, -1.6, 2.4, 0.4] -> [6, -1.5, 2, 0.5]
        let x: [Float] = [7, 1.1, -0.3, 6.9, 0.7, -0.2, 0.3, 0.05]
        let out = try fq(.block(4), .e8m0, .nearestEven, x, rows: 1, cols: 8)
        assertBitwiseEqual(out, [6, 1, -0.5, 6, 0.75, -0.1875, 0.25, 0.0625])
    }

    func testAbsmaxDiv3Quantizer() throws {
        // amax 5: s = fl(4/3) = 1.3333334. v = fl(x / s), correctly rounded float32:
        // 5 -> 3.75 -> 4; 1 -> 0.75 (the quotient rounds to the exact tie) -> 1 (RNE);
        // -2 -> -1.5; 4 -> 3.
        let s = Float(4) / Float(3)
        let x: [Float] = [5, 1, -2, 4]
        let out = try fq(.row, .absmaxDiv3, .nearestEven, x, rows: 1, cols: 4)
        assertBitwiseEqual(out, [4 * s, 1 * s, -1.5 * s, 3 * s])
    }

    func testNVFP4TwoLevelQuantizer() throws {
        // One row of 32 = two blocks of 16. Tensor amax 6 -> S = 448.
        // Block 0: amax 6 -> sb = 448, v = x · (448/448) = x.
        // Block 1: amax 1 -> sb = e4m3(74.67) = 72, v = x · fl(448/72) = x · 6.2222223:
        //   1 -> 6.22 -> 6; 0.5 -> 3.11 -> 3; 0.25 -> 1.56 -> 1.5; -0.1 -> -0.62 -> -0.5; 0 -> 0.
        //   x̂ = fl(q · 72) / 448.
        var x = [Float](repeating: 0, count: 32)
        x[0] = 6; x[1] = -2.5; x[2] = 0.7; x[3] = 5
        x[16] = 1; x[17] = 0.5; x[18] = 0.25; x[19] = -0.1
        var want = [Float](repeating: 0, count: 32)
        want[0] = 6; want[1] = -2; want[2] = 0.5; want[3] = 4
        want[16] = 432 / 448; want[17] = 216 / 448; want[18] = 108 / 448; want[19] = -36 / 448
        let out = try fq(.block(16), .nvfp4, .nearestEven, x, rows: 1, cols: 32)
        assertBitwiseEqual(out, want)
        XCTAssertEqual(out[16], 0.96428573)
    }

    /// A block whose sb rounds to 0 (far below the tensor amax) encodes zeros, keeping signs.
    func testNVFP4NegligibleBlockEncodesZeros() throws {
        var x = [Float](repeating: 0, count: 32)
        x[0] = 6
        for i in 16..<32 { x[i] = (i % 2 == 0 ? 1 : -1) * 1e-6 }  // sb = e4m3(7.5e-5) = 0
        let out = try fq(.block(16), .nvfp4, .nearestEven, x, rows: 1, cols: 32)
        XCTAssertEqual(out[0], 6)
        for i in 16..<32 {
            XCTAssertEqual(out[i], 0, "index \(i)")
            XCTAssertEqual(out[i].sign, x[i].sign, "sign of zero at \(i)")
        }
    }

    /// An all-zero tensor under every rule: s = 1 (e8m0: 2^-127, byte 0; nvfp4: S = 1,
    /// sb byte 0), outputs are zeros with the input's signs, codes are 0000 / 1000.
    func testAllZeroTensorUnderEveryRule() throws {
        let x: [Float] = [0, -0.0, 0, 0, -0.0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, -0.0]
        for rule in ScaleRule.allCases {
            let q = Quantizer(format: .e2m1, granularity: .block(16), scaleRule: rule)
            assertBitwiseEqual(try q.fakeQuantize(x, rows: 1, cols: 16).out, x, rule.name)
            let (codes, ts) = try q.quantize(x, rows: 1, cols: 16)
            XCTAssertEqual(codes, [0x80, 0x00, 0x08, 0, 0, 0, 0, 0x80], rule.name)  // -0 at 1, 4, 15
            // nvfp4_torchao: P = 1 (torchao's P = 0 would give NaN), sb = clamp(0, 2^-6, 448): a
            // non-zero block scale whose elements still encode signed zeros.
            XCTAssertEqual(ts.groups[0].isZero, rule != .nvfp4Torchao, rule.name)
            XCTAssertEqual(ts.tensorScale, 1, rule.name)
            switch rule {
            case .e8m0, .e8m0Ceil, .e8m0Even, .e8m0Rceil:
                XCTAssertEqual(ts.groups[0].scale, Float(bitPattern: 0x0040_0000), rule.name); XCTAssertEqual(ts.groups[0].byte, 0, rule.name)
            case .nvfp4: XCTAssertEqual(ts.groups[0].byte, 0)
            case .nvfp4Torchao: XCTAssertEqual(ts.groups[0].byte, 0x08); XCTAssertEqual(ts.groups[0].scale, 0x1p-6)
            default: XCTAssertEqual(ts.groups[0].scale, 1, rule.name)
            }
        }
    }

    /// Other formats through the same quantizer: e1m2 and e3m0 grids.
    func testE1M2AndE3M0Quantizers() throws {
        // e1m2, pow2, amax 3.5 -> s = 1: v = [3.5, 1.25, -2.75, 0.3] -> [3.5, 1, -3, 0.5]
        assertBitwiseEqual(try fq(.row, .pow2, .nearestEven, [3.5, 1.25, -2.75, 0.3], rows: 1, cols: 4, format: .e1m2),
                           [3.5, 1, -3, 0.5])
        // e3m0, pow2, amax 16 -> s = 1: v = [16, 6, -3, 0.375, 0.1] -> [16, 8, -2, 0.5, 0]
        assertBitwiseEqual(try fq(.row, .pow2, .nearestEven, [16, 6, -3, 0.375, 0.1], rows: 1, cols: 5, format: .e3m0),
                           [16, 8, -2, 0.5, 0])
    }

    /// Output is idempotent: fake-quantizing a fake-quantized tensor changes nothing
    /// (power-of-two scales, so the group amax and scale are reproduced exactly).
    func testFakeQuantizeIsIdempotentForPow2() throws {
        var (rng, seed) = TestRNG.fresh()
        let rows = 16, cols = 32
        let x = (0..<(rows * cols)).map { _ in Float.random(in: -10...10, using: &rng) }
        for g in [Granularity.tensor, .row, .column, .block(16), .block2d(8)] {
            let q = Quantizer(format: .e2m1, granularity: g, scaleRule: .pow2)
            let once = try q.fakeQuantize(x, rows: rows, cols: cols).out
            let twice = try q.fakeQuantize(once, rows: rows, cols: cols).out
            assertBitwiseEqual(twice, once, "\(g.name), seed \(seed)")
        }
    }

    func testGroupLayouts() throws {
        let L = try Granularity.block2d(2).layout(rows: 4, cols: 6)
        XCTAssertEqual(L.groupCount, 6)
        XCTAssertEqual(L.group(row: 3, col: 5), 5)
        XCTAssertEqual(L.group(row: 1, col: 2), 1)
        XCTAssertEqual(L.group(row: 2, col: 0), 3)
        XCTAssertEqual(try Granularity.tensor.layout(rows: 4, cols: 6).groupCount, 1)
        XCTAssertEqual(try Granularity.row.layout(rows: 4, cols: 6).groupCount, 4)
        XCTAssertEqual(try Granularity.column.layout(rows: 4, cols: 6).groupCount, 6)
        XCTAssertEqual(try Granularity.block(3).layout(rows: 4, cols: 6).groupCount, 8)
    }

    // MARK: - e2m1 SIMD kernel and fused OCC residual

    /// Magnitudes around every e2m1 grid point and midpoint (±3 ulp), subnormals, values
    /// above the max, and a sweep, with both signs.
    private static func e2m1Probe() -> [Float] {
        var a: [Float] = [0, .leastNonzeroMagnitude, .leastNormalMagnitude, 1e-30, 6.5, 7, 8, 1e10, .greatestFiniteMagnitude, .infinity]
        let points: [Float] = [0.25, 0.5, 0.75, 1, 1.25, 1.5, 1.75, 2, 2.5, 3, 3.5, 4, 5, 6]
        for p in points {
            var u = p
            for _ in 0..<3 { u = u.nextDown; a.append(u) }
            u = p
            for _ in 0..<4 { a.append(u); u = u.nextUp }
        }
        var v: Float = 0.001
        while v < 7 { a.append(v); v *= 1.0137 }
        return a + a.map { -$0 }
    }

    func testE2M1KernelMatchesScalarNearestEven() throws {
        let fp4 = try XCTUnwrap(FP4NearestEven(.e2m1))
        let grid = GridParameters(.e2m1)
        var vals = Self.e2m1Probe()
        while vals.count % 8 != 0 { vals.append(0.3) }
        for b in stride(from: 0, to: vals.count, by: 8) {
            var v = SIMD8<Float>()
            for l in 0..<8 { v[l] = vals[b + l] }
            let (code, q) = E2M1Kernel.encode(v)
            let packed = E2M1Kernel.pack(code)
            for l in 0..<8 {
                let (c, r) = fp4.encode(v[l])
                XCTAssertEqual(code[l], c, "code of \(v[l])")
                XCTAssertEqual(q[l].bitPattern, r.bitPattern, "value of \(v[l])")
                XCTAssertEqual((packed >> (4 * UInt32(l))) & 0xF, c, "packed code of \(v[l])")
                let a = abs(v[l])
                XCTAssertEqual(E2M1NearestEvenRounder().round(a, index: 0).bitPattern,
                               grid.roundNearestEvenMantissa(a).bitPattern, "rounder at \(a)")
            }
        }
    }

    func testE2M1DecoderMatchesTable() {
        let table = ElementCodec.of(.e2m1).decodeTable
        table.withUnsafeBufferPointer { tb in
            let d = FP4Decoder(tb)
            XCTAssertTrue(d.isE2M1)
            for c in UInt32(0)..<16 {
                XCTAssertEqual(FP4Decoder.valueE2M1(c).bitPattern, d.value(c).bitPattern, "code \(c)")
            }
        }
        for f in [MiniFloatFormat.e1m2, .e3m0] {
            ElementCodec.of(f).decodeTable.withUnsafeBufferPointer { XCTAssertFalse(FP4Decoder($0).isE2M1, f.name) }
        }
    }

    /// Random rows with outliers, a CSR residual with duplicates, out-of-range columns and
    /// empty rows.
    private static func residualCase(rows: Int, cols: Int, seed: UInt64)
        -> (x: [Float], indptr: [Int64], indices: [Int32], values: [Float]) {
        var g = SplitMix(seed)
        var x = [Float](repeating: 0, count: rows * cols)
        for i in x.indices {
            x[i] = g.normal() * (g.uniform() < 0.03 ? 40 : 1)
            if g.uniform() < 0.02 { x[i] = g.uniform() < 0.5 ? 0 : -0.0 }
        }
        var indptr: [Int64] = [0], indices: [Int32] = [], values: [Float] = []
        for r in 0..<rows {
            let n = r % 4 == 3 ? 0 : Int(g.uniform() * 6)
            for _ in 0..<n {
                let c = g.uniform() < 0.1 ? (g.uniform() < 0.5 ? -1 : cols) : Int(g.uniform() * Float(cols)) % cols
                indices.append(Int32(c))
                values.append(g.normal() * 30)
            }
            if n > 0 && g.uniform() < 0.3, let last = indices.last {  // duplicate entry
                indices.append(last)
                values.append(g.normal())
            }
            indptr.append(Int64(indices.count))
            _ = r
        }
        return (x, indptr, indices, values)
    }

    func testQuantizeClampedResidualMatchesScatterAdd() throws {
        let shapes = [(1, 1), (3, 17), (5, 33), (7, 64), (16, 128), (9, 352), (4, 7)]
        for (si, (rows, cols)) in shapes.enumerated() {
            for (gi, gran) in [Granularity.row, .block(16)].enumerated() {
                let q = Quantizer(format: .e2m1, granularity: gran)
                guard q.clampsWhileQuantizing(rows: rows, cols: cols) else { continue }
                for perRow in [false, true] {
                    for minMax in [false, true] {
                        let c = Self.residualCase(rows: rows, cols: cols, seed: UInt64(si * 100 + gi * 10 + (perRow ? 1 : 0)))
                        var g = SplitMix(UInt64(si + 7))
                        let th: [OCCThresholds] = perRow
                            ? (0..<rows).map { _ in OCCThresholds(lo: -2 - g.uniform() * 3, hi: 2 + g.uniform() * 3) }
                            : [OCCThresholds(lo: -3, hi: 2.5)]
                        let nb = q.codeBytes(count: rows * cols)
                        var codesA = [UInt8](repeating: 0xAA, count: nb), codesB = codesA
                        var deqA = [Float](repeating: .nan, count: rows * cols), deqB = deqA
                        try c.indptr.withUnsafeBufferPointer { ip in
                            try c.indices.withUnsafeBufferPointer { ix in
                                try c.values.withUnsafeBufferPointer { vs in
                                    _ = try q.quantizeClamped(c.x, rows: rows, cols: cols, thresholds: th, perRow: perRow,
                                                              minMax: minMax, codes: &codesA, dequantized: &deqA)
                                    OCC.scatterAdd(indptr: ip.baseAddress!, indices: ix.baseAddress!, values: vs.baseAddress!,
                                                   rows: rows, cols: cols, into: &deqA)
                                    let res = CSRResidual(indptr: ip.baseAddress!, indices: ix.baseAddress!, values: vs.baseAddress!)
                                    _ = try q.quantizeClamped(c.x, rows: rows, cols: cols, thresholds: th, perRow: perRow,
                                                              minMax: minMax, codes: &codesB, dequantized: &deqB, residual: res)
                                    // Without a dequantized buffer the residual is ignored.
                                    var codesC = [UInt8](repeating: 0xAA, count: nb)
                                    _ = try q.quantizeClamped(c.x, rows: rows, cols: cols, thresholds: th, perRow: perRow,
                                                              minMax: minMax, codes: &codesC, dequantized: nil, residual: res)
                                    XCTAssertEqual(codesC, codesA, "codes without x̂, \(rows)x\(cols)")
                                }
                            }
                        }
                        XCTAssertEqual(codesA, codesB, "\(rows)x\(cols) \(gran) perRow \(perRow)")
                        assertBitwiseEqual(deqB, deqA, "\(rows)x\(cols) \(gran) perRow \(perRow) minMax \(minMax)")
                    }
                }
            }
        }
    }

    func testDequantizeResidualMatchesScatterAdd() throws {
        for (si, (rows, cols)) in [(1, 1), (3, 17), (5, 33), (16, 128), (9, 352)].enumerated() {
            for gran in [Granularity.row, .tensor, .column, .block(16)] {
                let q = Quantizer(format: .e2m1, granularity: gran)
                guard (try? gran.layout(rows: rows, cols: cols)) != nil else { continue }
                let c = Self.residualCase(rows: rows, cols: cols, seed: UInt64(si + 50))
                var codes = [UInt8](repeating: 0, count: q.codeBytes(count: rows * cols))
                let ts = try q.quantize(c.x, rows: rows, cols: cols, codes: &codes)
                let scales = ts.groups.map { $0.scale }
                var a = [Float](repeating: .nan, count: rows * cols), b = a
                try c.indptr.withUnsafeBufferPointer { ip in
                    try c.indices.withUnsafeBufferPointer { ix in
                        try c.values.withUnsafeBufferPointer { vs in
                            try q.dequantize(codes: codes, rows: rows, cols: cols, scales: scales, tensorScale: 1, into: &a)
                            OCC.scatterAdd(indptr: ip.baseAddress!, indices: ix.baseAddress!, values: vs.baseAddress!,
                                           rows: rows, cols: cols, into: &a)
                            try q.dequantize(codes: codes, rows: rows, cols: cols, scales: scales, tensorScale: 1, into: &b,
                                             residual: CSRResidual(indptr: ip.baseAddress!, indices: ix.baseAddress!,
                                                                   values: vs.baseAddress!))
                        }
                    }
                }
                assertBitwiseEqual(b, a, "\(rows)x\(cols) \(gran)")
            }
        }
    }
}

/// Small deterministic generator for the tests above.
private struct SplitMix {
    var state: UInt64
    init(_ seed: UInt64) { state = seed &* 0x9E37_79B9_7F4A_7C15 &+ 1 }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        return CounterRNG.mix(state)
    }
    mutating func uniform() -> Float { Float(next() >> 40) * 0x1p-24 }
    mutating func normal() -> Float {
        let u1 = Swift.max(uniform(), 1e-7), u2 = uniform()
        return (-2 * Foundation.log(u1)).squareRoot() * Foundation.cos(2 * .pi * u2)
    }
}
