import XCTest
@testable import FP4Core

/// The fused per-block kernels of the quartet layer (`QuartetKernels`) against the general
/// path they replace (`Hadamard.transform`, then `Quantizer` scales / quantize / fakeQuantize
/// / clipMask), bit for bit, on data with the awkward cases: all-zero and −0 groups,
/// subnormals, groups with one huge outlier (QuEST clips), constant groups (σ = 0), and
/// NaN/inf groups.
final class QuartetKernelTests: XCTestCase {
    /// Rows of 32-groups, each group drawn from a different case.
    func awkward(rows: Int, cols: Int, _ rng: inout TestRNG) -> [Float] {
        var x = [Float](repeating: 0, count: rows * cols)
        for g in 0..<(rows * cols / 32) {
            let kind = Int.random(in: 0..<8, using: &rng)
            for i in 0..<32 {
                let u = Float.random(in: -1...1, using: &rng)
                x[g * 32 + i] = switch kind {
                case 0: 0
                case 1: -0.0
                case 2: u * 0x1p-133  // subnormal
                case 3: i == 5 ? 1e4 : u  // one outlier: clips under QuEST
                case 4: 0.75  // constant: σ = 0 before the rotation
                case 5: u * 1e30
                default: u * Float.random(in: 0.01...10, using: &rng)
                }
            }
        }
        return x
    }

    func bits(_ a: [Float]) -> [UInt32] { a.map(\.bitPattern) }

    func testE2M1ConstantsMatchTheFormat() {
        let g = GridParameters(.e2m1)
        XCTAssertEqual(g.manBits, QuartetKernels.manBits)
        XCTAssertEqual(g.minExponent, QuartetKernels.minExponent)
        XCTAssertEqual(g.maxValue, QuartetKernels.fmax)
        XCTAssertTrue(g.saturates)
        XCTAssertEqual(UInt32(MiniFloatFormat.e2m1.signBit), QuartetKernels.signBit)
        XCTAssertEqual(QuartetKernels.norm, Float(1) / Float(32).squareRoot())
    }

    func testQuestRowsMatchTransformThenQuantize() throws {
        var (rng, seed) = TestRNG.fresh()
        for (rows, cols) in [(7, 64), (9, 160), (1, 32)] {
            let x = awkward(rows: rows, cols: cols, &rng)
            let n = rows * cols
            // General path.
            var xh = [Float](repeating: 0, count: n)
            try Hadamard.transform(x, rows: rows, cols: cols, into: &xh)
            let q = QuartetLinear.forwardQuantizer
            var codes = [UInt8](repeating: 0, count: n / 2), fake = [Float](repeating: 0, count: n)
            var mask = [UInt8](repeating: 0, count: n / 8)
            let ts = try q.quantize(xh, rows: rows, cols: cols, codes: &codes, dequantized: &fake)
            q.clipMask(xh, scales: ts, into: &mask)
            // Fused.
            var codes2 = [UInt8](repeating: 0, count: n / 2), fake2 = [Float](repeating: 0, count: n)
            var mask2 = [UInt8](repeating: 0, count: n / 8), scales2 = [Float](repeating: 0, count: n / 32)
            let finite = codes2.withUnsafeMutableBufferPointer { c in
                fake2.withUnsafeMutableBufferPointer { f in
                    mask2.withUnsafeMutableBufferPointer { m in
                        scales2.withUnsafeMutableBufferPointer { s in
                            QuartetKernels.questRows(x, rows: rows, cols: cols) { i, b in
                                b.xhat.store(f.baseAddress! + i)
                                QuartetKernels.storeCodes(b.codes, c.baseAddress! + i / 2)
                                s[i / 32] = b.scale
                                QuartetKernels.storeWord(b.mask, m.baseAddress! + i / 8)
                            }
                        }
                    }
                }
            }
            XCTAssertTrue(finite)
            XCTAssertEqual(codes2, codes, "seed \(seed)")
            XCTAssertEqual(bits(fake2), bits(fake), "seed \(seed)")
            XCTAssertEqual(mask2, mask, "seed \(seed)")
            XCTAssertEqual(bits(scales2), bits(ts.groups.map(\.scale)), "seed \(seed)")
        }
        // A non-finite group is reported.
        var x = [Float](repeating: 1, count: 64)
        x[40] = .infinity
        XCTAssertFalse(QuartetKernels.questRows(x, rows: 1, cols: 64) { _, _ in })
    }

    /// Q_b(A·H_b) by the general path: zero-pad the columns, rotate with the signs, fake-quantize.
    func reference(_ a: [Float], rows: Int, cols: Int, signs: [Float], seed: UInt64) throws -> [Float] {
        let cp = (cols + 31) / 32 * 32
        let h = try rotatedPadded(a, rows: rows, cols: cols, signs: signs)
        var out = [Float](repeating: 0, count: rows * cp)
        try QuartetLinear.backwardQuantizer(seed: seed).fakeQuantize(h, rows: rows, cols: cp, into: &out, nonFinite: .propagate)
        return out
    }

    func testGradientOperandsMatchTheGeneralPath() throws {
        var (rng, s) = TestRNG.fresh()
        let signs = QuartetLinear.signs(seed: s, call: 3)
        let key = UInt64.random(in: 0...UInt64.max, using: &rng)
        for (rows, cols) in [(5, 64), (37, 45), (3, 7), (33, 96)] {
            var a = awkward(rows: 1, cols: (rows * cols + 31) / 32 * 32, &rng)
            a.removeLast(a.count - rows * cols)
            a[rows * cols / 2] = .nan
            // Along the rows: A [rows, cols] → [rows, colsPadded].
            let ref = try reference(a, rows: rows, cols: cols, signs: signs, seed: key)
            let cp = (cols + 31) / 32 * 32
            var out = [Float](repeating: 0, count: rows * cp)
            let sb = signs.withUnsafeBufferPointer { Block32($0.baseAddress!) }
            QuartetKernels.gradientRows(a, rows: rows, cols: cols, signs: sb, key: CounterRNG.key(seed: key), into: &out)
            XCTAssertEqual(bits(out), bits(ref), "rows, \(rows)x\(cols), seed \(s)")
            // Down the columns: Q_b(Aᵀ·H_b) [cols, rowsPadded], stored transposed [rowsPadded, cols].
            var at = [Float](repeating: 0, count: rows * cols)
            for r in 0..<rows { for c in 0..<cols { at[c * rows + r] = a[r * cols + c] } }
            let refT = try reference(at, rows: cols, cols: rows, signs: signs, seed: key)
            let rp = (rows + 31) / 32 * 32
            var outT = [Float](repeating: 0, count: rp * cols)
            let ok = a.withUnsafeBufferPointer { ap in
                signs.withUnsafeBufferPointer { d in
                    QuartetKernels.verticalOperand(QuartetKernels.MatrixRows(a: ap.baseAddress!, rows: rows, cols: cols),
                                                   rows: rows, cols: cols, signs: d.baseAddress!,
                                                   key: CounterRNG.key(seed: key), into: &outT)
                }
            }
            XCTAssertTrue(ok)
            for c in 0..<cols {
                for t in 0..<rp {
                    XCTAssertEqual(outT[t * cols + c].bitPattern, refT[c * rp + t].bitPattern,
                                   "columns, \(rows)x\(cols) at [\(c), \(t)], seed \(s)")
                }
            }
        }
    }

    func testMaskAndUnrotateMatchesTheGeneralPath() throws {
        var (rng, s) = TestRNG.fresh()
        let rows = 6, cols = 96, n = rows * cols
        let g = (0..<n).map { _ in Float.random(in: -4...4, using: &rng) }
        let mask = (0..<(n / 8)).map { _ in UInt8.random(in: 0...255, using: &rng) }
        var masked = g
        for i in 0..<n where (mask[i >> 3] >> UInt8(i & 7)) & 1 == 0 { masked[i] = 0 }
        var ref = [Float](repeating: 0, count: n)
        try Hadamard.transform(masked, rows: rows, cols: cols, into: &ref)
        var out = g
        QuartetKernels.maskAndUnrotate(&out, rows: rows, cols: cols, mask: mask)
        XCTAssertEqual(bits(out), bits(ref), "seed \(s)")
    }

    /// The rotated, zero-padded operand A·H_b [rows, colsPadded] of the general path.
    func rotatedPadded(_ a: [Float], rows: Int, cols: Int, signs: [Float]) throws -> [Float] {
        let cp = (cols + 31) / 32 * 32
        var p = [Float](repeating: 0, count: rows * cp)
        for r in 0..<rows { for c in 0..<cols { p[r * cp + c] = a[r * cols + c] } }
        var h = [Float](repeating: 0, count: rows * cp)
        try signs.withUnsafeBufferPointer { d in
            try Hadamard.transform(p, rows: rows, cols: cp, signs: d.baseAddress!, into: &h)
        }
        return h
    }

    /// The code outputs (packed GEMM operands) hold the general path's codes and scales
    /// (`Quantizer.quantize` of the rotated operand), and decode to the float outputs bit for
    /// bit; a non-finite group is reported instead.
    func testGradientOperandCodesMatchTheGeneralPathAndTheFloats() throws {
        var (rng, s) = TestRNG.fresh()
        let signs = QuartetLinear.signs(seed: s, call: 5)
        let key = UInt64.random(in: 0...UInt64.max, using: &rng)
        let q = QuartetLinear.backwardQuantizer(seed: key)
        let table = ElementCodec.of(.e2m1).decodeTable
        func decode(_ codes: [UInt8], _ scales: [Float], count: Int) -> [Float] {
            (0..<count).map { i in table[Int(codes[i / 2] >> UInt8(4 * (i & 1))) & 15] * scales[i / 32] }
        }
        for (rows, cols) in [(5, 64), (37, 45), (3, 7), (33, 96), (64, 40)] {
            var a = awkward(rows: 1, cols: (rows * cols + 31) / 32 * 32, &rng)
            a.removeLast(a.count - rows * cols)
            // Along the rows: [rows, colsPadded].
            let cp = (cols + 31) / 32 * 32, n = rows * cp
            let h = try rotatedPadded(a, rows: rows, cols: cols, signs: signs)
            var refCodes = [UInt8](repeating: 0, count: n / 2)
            let ts = try q.quantize(h, rows: rows, cols: cp, codes: &refCodes)
            var codes = [UInt8](repeating: 0xAA, count: n / 2), scales = [Float](repeating: .nan, count: n / 32)
            var floats = [Float](repeating: 0, count: n)
            let sb = signs.withUnsafeBufferPointer { Block32($0.baseAddress!) }
            let ok = codes.withUnsafeMutableBufferPointer { c in
                scales.withUnsafeMutableBufferPointer { sc in
                    QuartetKernels.gradientRows(a, rows: rows, cols: cols, signs: sb, key: CounterRNG.key(seed: key),
                                                output: QuartetKernels.RowsAsCodes(codes: c.baseAddress!, scales: sc.baseAddress!))
                }
            }
            QuartetKernels.gradientRows(a, rows: rows, cols: cols, signs: sb, key: CounterRNG.key(seed: key), into: &floats)
            XCTAssertTrue(ok)
            XCTAssertEqual(codes, refCodes, "rows, \(rows)x\(cols), seed \(s)")
            XCTAssertEqual(bits(scales), bits(ts.groups.map(\.scale)), "rows, \(rows)x\(cols), seed \(s)")
            XCTAssertEqual(bits(decode(codes, scales, count: n)), bits(floats), "rows, \(rows)x\(cols), seed \(s)")
            // Down the columns: Q_b(Aᵀ·H_b) [cols, rowsPadded], row-major codes.
            var at = [Float](repeating: 0, count: rows * cols)
            for r in 0..<rows { for c in 0..<cols { at[c * rows + r] = a[r * cols + c] } }
            let rp = (rows + 31) / 32 * 32, nT = cols * rp
            let hT = try rotatedPadded(at, rows: cols, cols: rows, signs: signs)
            var refT = [UInt8](repeating: 0, count: nT / 2)
            let tsT = try q.quantize(hT, rows: cols, cols: rp, codes: &refT)
            var codesT = [UInt8](repeating: 0x55, count: nT / 2), scalesT = [Float](repeating: .nan, count: nT / 32)
            var floatsT = [Float](repeating: 0, count: nT)
            let okT = a.withUnsafeBufferPointer { ap in
                signs.withUnsafeBufferPointer { d in
                    codesT.withUnsafeMutableBufferPointer { c in
                        scalesT.withUnsafeMutableBufferPointer { sc in
                            QuartetKernels.verticalOperand(QuartetKernels.MatrixRows(a: ap.baseAddress!, rows: rows, cols: cols),
                                                           rows: rows, cols: cols, signs: d.baseAddress!,
                                                           key: CounterRNG.key(seed: key),
                                                           output: QuartetKernels.ColumnsAsCodes(codes: c.baseAddress!,
                                                                                                 scales: sc.baseAddress!))
                        }
                    }
                }
            }
            let okF = a.withUnsafeBufferPointer { ap in
                signs.withUnsafeBufferPointer { d in
                    QuartetKernels.verticalOperand(QuartetKernels.MatrixRows(a: ap.baseAddress!, rows: rows, cols: cols),
                                                   rows: rows, cols: cols, signs: d.baseAddress!,
                                                   key: CounterRNG.key(seed: key), into: &floatsT)
                }
            }
            XCTAssertTrue(okT && okF)
            XCTAssertEqual(codesT, refT, "columns, \(rows)x\(cols), seed \(s)")
            XCTAssertEqual(bits(scalesT), bits(tsT.groups.map(\.scale)), "columns, \(rows)x\(cols), seed \(s)")
            let decodedT = decode(codesT, scalesT, count: nT)
            for c in 0..<cols {
                for t in 0..<rp {
                    XCTAssertEqual(decodedT[c * rp + t].bitPattern, floatsT[t * cols + c].bitPattern,
                                   "columns, \(rows)x\(cols) at [\(c), \(t)], seed \(s)")
                }
            }
            // A non-finite element: both code outputs report it.
            var bad = a
            bad[rows * cols / 2] = .nan
            var scratch = [UInt8](repeating: 0, count: Swift.max(n, nT) / 2), sc = [Float](repeating: 0, count: Swift.max(n, nT) / 32)
            let rowsOK = scratch.withUnsafeMutableBufferPointer { c in
                sc.withUnsafeMutableBufferPointer { scp in
                    QuartetKernels.gradientRows(bad, rows: rows, cols: cols, signs: sb, key: 1,
                                                output: QuartetKernels.RowsAsCodes(codes: c.baseAddress!, scales: scp.baseAddress!))
                }
            }
            let colsOK = bad.withUnsafeBufferPointer { ap in
                signs.withUnsafeBufferPointer { d in
                    scratch.withUnsafeMutableBufferPointer { c in
                        sc.withUnsafeMutableBufferPointer { scp in
                            QuartetKernels.verticalOperand(QuartetKernels.MatrixRows(a: ap.baseAddress!, rows: rows, cols: cols),
                                                           rows: rows, cols: cols, signs: d.baseAddress!, key: 1,
                                                           output: QuartetKernels.ColumnsAsCodes(codes: c.baseAddress!,
                                                                                                 scales: scp.baseAddress!))
                        }
                    }
                }
            }
            XCTAssertFalse(rowsOK)
            XCTAssertFalse(colsOK)
        }
    }
}
