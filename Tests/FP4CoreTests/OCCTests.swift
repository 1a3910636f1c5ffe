import XCTest
@testable import FP4Core

/// Spec §5: OCC thresholds (exact order statistics), clamp + sparse residual, and the sparse
/// products of the compensation path. References are written here: thresholds index a copy
/// sorted with Swift's sort(); products are dense float64 loops.
final class OCCTests: XCTestCase {

    static let alphas: [Double] = [0.51, 0.9, 0.97, 0.99, 0.999, 1.0]

    // MARK: - Quantile indices

    func testQuantileIndicesFollowTheFormula() {
        // Hand values: (1 − 0.99)·100 = 1.0000000000000009 in Double, so lo = 1.
        XCTAssertTrue(OCC.quantileIndices(count: 100, alpha: 0.99) == (1, 99))
        XCTAssertTrue(OCC.quantileIndices(count: 1, alpha: 1) == (0, 0))
        XCTAssertTrue(OCC.quantileIndices(count: 1, alpha: 0.99) == (0, 0))
        XCTAssertTrue(OCC.quantileIndices(count: 2, alpha: 0.51) == (0, 1))
        XCTAssertTrue(OCC.quantileIndices(count: 10, alpha: 0.51) == (4, 5))
        XCTAssertTrue(OCC.quantileIndices(count: 10, alpha: 1) == (0, 9))
        XCTAssertTrue(OCC.quantileIndices(count: 1000, alpha: 0.999) == (1, 999))
        XCTAssertTrue(OCC.quantileIndices(count: 400, alpha: 0.99) == (4, 396))
        for n in [1, 2, 3, 7, 100, 1000, 4096, 100_003, 2_000_000] {
            for a in Self.alphas + [0.75, 0.995, 0.9999] {
                let (lo, hi) = OCC.quantileIndices(count: n, alpha: a)
                XCTAssertEqual(lo, Int(((1 - a) * Double(n)).rounded(.down)), "n \(n) alpha \(a)")
                XCTAssertEqual(hi, Swift.min(Int((a * Double(n)).rounded(.down)), n - 1), "n \(n) alpha \(a)")
                XCTAssertLessThanOrEqual(lo, hi)
            }
        }
    }

    func testResidualCapacityFormula() {
        XCTAssertEqual(OCC.residualCapacity(rows: 4, cols: 100, alpha: 0.99, perRow: true), 4 * (1 + 0))
        XCTAssertEqual(OCC.residualCapacity(rows: 4, cols: 100, alpha: 0.99, perRow: false), 4 + (399 - 396))
        XCTAssertEqual(OCC.residualCapacity(rows: 3, cols: 10, alpha: 1, perRow: true), 0)
        XCTAssertEqual(OCC.residualCapacity(rows: 0, cols: 10, alpha: 0.9, perRow: false), 0)
        XCTAssertEqual(OCC.residualCapacity(rows: 5, cols: 0, alpha: 0.9, perRow: true), 0)
    }

    // MARK: - Thresholds against a sorted copy

    func testThresholdsMatchSortedReferenceOnRandomData() throws {
        var (rng, seed) = TestRNG.fresh()
        for n in [1, 2, 3, 1000, 100_003] {
            let x = (0..<n).map { _ in gaussian(&rng) * 3 }
            let sorted = x.sorted()
            for a in Self.alphas {
                let got = try occThresholds(x, rows: 1, cols: n, alpha: a, perRow: false)
                let want = [referenceFromSorted(sorted, alpha: a)]
                assertSameThresholds(got, want, "tensor n \(n) alpha \(a) seed \(seed)")
                // The same data as one long row, and as a tensor of several rows.
                let r = try occThresholds(x, rows: 1, cols: n, alpha: a, perRow: true)
                assertSameThresholds(r, want, "1 row n \(n) alpha \(a) seed \(seed)")
            }
        }
        let shapes = [(3, 1000), (7, 33), (64, 50), (200, 1), (5, 2), (2, 70_000)]
        for (rows, cols) in shapes {
            let x = (0..<(rows * cols)).map { _ in gaussian(&rng) }
            for a in Self.alphas {
                for perRow in [false, true] {
                    let got = try occThresholds(x, rows: rows, cols: cols, alpha: a, perRow: perRow)
                    let want = referenceThresholds(x, rows: rows, cols: cols, alpha: a, perRow: perRow)
                    XCTAssertEqual(got.count, perRow ? rows : 1)
                    assertSameThresholds(got, want, "\(rows)×\(cols) perRow \(perRow) alpha \(a) seed \(seed)")
                }
            }
        }
    }

    func testThresholdsOnAdversarialData() throws {
        var (rng, seed) = TestRNG.fresh()
        // Sizes on both sides of the parallel-selection cutoff (65_536).
        for n in [1, 2, 5, 47, 48, 49, 300, 4097, 70_001] {
            var cases: [(String, [Float])] = []
            cases.append(("all equal", [Float](repeating: 1.5, count: n)))
            cases.append(("all zero", [Float](repeating: 0, count: n)))
            cases.append(("two values", (0..<n).map { _ in Bool.random(using: &rng) ? -2 : 7 }))
            cases.append(("mostly one value, two outliers",
                          (0..<n).map { i in i == n / 3 ? -1e30 : (i == n / 2 ? 1e30 : 0.25) }))
            cases.append(("few duplicates", (0..<n).map { _ in [-3, -0.5, 0, 0.5, 3][Int.random(in: 0..<5, using: &rng)] }))
            cases.append(("signed zeros", (0..<n).map { _ in Bool.random(using: &rng) ? Float(-0.0) : 0 }))
            cases.append(("signed zeros and tiny",
                          (0..<n).map { _ in [Float(-0.0), 0, .leastNonzeroMagnitude, -.leastNonzeroMagnitude,
                                               .leastNormalMagnitude][Int.random(in: 0..<5, using: &rng)] }))
            cases.append(("huge and tiny magnitudes", (0..<n).map { _ in
                let mags: [Float] = [.greatestFiniteMagnitude, 1e38, 1e-38, .leastNonzeroMagnitude, .leastNormalMagnitude / 37, 1,
                                      .leastNormalMagnitude]
                let m = mags[Int.random(in: 0..<mags.count, using: &rng)]
                return Bool.random(using: &rng) ? -m : m
            }))
            cases.append(("negative only", (0..<n).map { _ in -abs(gaussian(&rng)) - 1e-3 }))
            // All in one top bucket ([1, 1.25)), differing in the middle or only in the last bits.
            cases.append(("one top bucket", (0..<n).map { _ in 1 + Float.random(in: 0..<0.25, using: &rng) }))
            cases.append(("low bits only", (0..<n).map { _ in
                Float(bitPattern: 0x4040_0000 | UInt32.random(in: 0..<1024, using: &rng))
            }))
            cases.append(("low bits negative", (0..<n).map { _ in
                Float(bitPattern: 0xC040_0000 | UInt32.random(in: 0..<64, using: &rng))
            }))
            cases.append(("ascending", (0..<n).map { Float($0) }))
            cases.append(("descending", (0..<n).map { Float(n - $0) * -0.5 }))
            for (name, x) in cases {
                let sorted = x.sorted()
                for a in Self.alphas {
                    let got = try occThresholds(x, rows: 1, cols: n, alpha: a, perRow: false)
                    let want = [referenceFromSorted(sorted, alpha: a)]
                    assertSameThresholds(got, want, "\(name) n \(n) alpha \(a) seed \(seed)")
                }
            }
        }
        // Per row: adversarial rows side by side.
        let cols = 257
        var x: [Float] = []
        x += [Float](repeating: -4, count: cols)
        x += (0..<cols).map { _ in Bool.random(using: &rng) ? Float(-0.0) : 0 }
        x += (0..<cols).map { _ in Bool.random(using: &rng) ? 1 : 2 }
        x += (0..<cols).map { _ in Float(bitPattern: 0x3F80_0000 | UInt32.random(in: 0..<2048, using: &rng)) }
        x += (0..<cols).map { _ in -Float.greatestFiniteMagnitude * Float.random(in: 0.5...1, using: &rng) }
        for a in Self.alphas {
            let got = try occThresholds(x, rows: 5, cols: cols, alpha: a, perRow: true)
            let want = referenceThresholds(x, rows: 5, cols: cols, alpha: a, perRow: true)
            assertSameThresholds(got, want, "adversarial rows alpha \(a) seed \(seed)")
        }
    }

    func testAlphaOutsideRangeThrows() {
        let x: [Float] = [1, 2, 3, 4]
        for a in [0.5, 0.49, 0, -1, 1.0000001, 2, .nan, .infinity, -.infinity] {
            for perRow in [false, true] {
                assertThrowsFP4Error(.invalidArgument, try occThresholds(x, rows: 2, cols: 2, alpha: a, perRow: perRow),
                                     "alpha \(a)")
            }
        }
        // Also for an empty tensor: the argument is checked first.
        assertThrowsFP4Error(.invalidArgument, try occThresholds([], rows: 0, cols: 4, alpha: 0.3, perRow: false))
        assertThrowsFP4Error(.invalidArgument, try occThresholds(x, rows: -1, cols: 2, alpha: 0.9, perRow: false))
    }

    func testNonFiniteThrowsNamingTheFirstFlatIndex() {
        let nanPayload = Float(bitPattern: 0x7F80_0001), negNaN = Float(bitPattern: 0xFFC0_0000)
        for bad in [Float.nan, .infinity, -.infinity, nanPayload, negNaN] {
            for n in [1, 40, 1000, 70_000] {
                var x = (0..<n).map { Float($0 % 13) - 6 }
                let i = n / 2
                x[i] = bad
                if n > 3 { x[n - 1] = .nan }
                for perRow in [false, true] {
                    let e = assertThrowsFP4Error(.nonFinite, try occThresholds(x, rows: 1, cols: n, alpha: 0.99, perRow: perRow),
                                                 "bad \(bad) n \(n)")
                    XCTAssertTrue(e?.message.hasSuffix("flat index \(i)") ?? false, "message: \(e?.message ?? "-")")
                }
            }
        }
        // Per row: the first bad value is in row 2.
        let rows = 6, cols = 50
        var x = (0..<(rows * cols)).map { Float($0 % 7) }
        x[2 * cols + 5] = -.infinity
        x[4 * cols + 1] = .nan
        for perRow in [false, true] {
            let e = assertThrowsFP4Error(.nonFinite, try occThresholds(x, rows: rows, cols: cols, alpha: 0.9, perRow: perRow))
            XCTAssertTrue(e?.message.hasSuffix("flat index \(2 * cols + 5)") ?? false, "message: \(e?.message ?? "-")")
        }
    }

    func testEmptyTensors() throws {
        for (rows, cols) in [(0, 0), (0, 5), (4, 0)] {
            for perRow in [false, true] {
                XCTAssertEqual(try occThresholds([], rows: rows, cols: cols, alpha: 0.99, perRow: perRow), [])
                XCTAssertEqual(OCC.residualCapacity(rows: rows, cols: cols, alpha: 0.99, perRow: perRow), 0)
            }
            let r = try occClamp([], rows: rows, cols: cols, thresholds: [], capacity: 0)
            XCTAssertEqual(r.nnz, 0)
            XCTAssertEqual(r.indptr, [Int64](repeating: 0, count: rows + 1))
        }
    }

    // MARK: - Clamp and residual

    func testClampAndResidualAgainstThresholds() throws {
        var (rng, seed) = TestRNG.fresh()
        for (rows, cols) in [(1, 1), (1, 1000), (16, 100), (37, 129), (300, 64)] {
            var x = (0..<(rows * cols)).map { _ in gaussian(&rng) }
            // Ties at the thresholds and signed zeros.
            for i in stride(from: 0, to: x.count, by: 17) { x[i] = 0 }
            for i in stride(from: 5, to: x.count, by: 23) { x[i] = -0.0 }
            for a in Self.alphas {
                for perRow in [false, true] {
                    let what = "\(rows)×\(cols) perRow \(perRow) alpha \(a) seed \(seed)"
                    let t = try occThresholds(x, rows: rows, cols: cols, alpha: a, perRow: perRow)
                    let cap = OCC.residualCapacity(rows: rows, cols: cols, alpha: a, perRow: perRow)
                    let r = try occClamp(x, rows: rows, cols: cols, thresholds: t, capacity: cap)
                    var expectedNNZ = 0
                    var expectedXc = x
                    for row in 0..<rows {
                        let th = t[perRow ? row : 0]
                        var cols_: [Int32] = []
                        var vals: [Float] = []
                        for c in 0..<cols {
                            let v = x[row * cols + c]
                            if v < th.lo || v > th.hi {
                                let cv = v < th.lo ? th.lo : th.hi
                                expectedXc[row * cols + c] = cv
                                cols_.append(Int32(c))
                                vals.append(v - cv)
                            }
                        }
                        expectedNNZ += cols_.count
                        let a0 = Int(r.indptr[row]), b0 = Int(r.indptr[row + 1])
                        XCTAssertEqual(Array(r.indices[a0..<b0]), cols_, "row \(row) columns, \(what)")
                        assertBitwiseEqual(Array(r.values[a0..<b0]), vals, "row \(row) values, \(what)")
                    }
                    XCTAssertEqual(r.nnz, expectedNNZ, what)
                    XCTAssertLessThanOrEqual(r.nnz, cap, what)
                    XCTAssertEqual(r.indptr.first, 0)
                    XCTAssertEqual(Int(r.indptr.last!), r.nnz)
                    assertBitwiseEqual(r.xc, expectedXc, what)
                    for (i, v) in r.xc.enumerated() {
                        let th = t[perRow ? i / cols : 0]
                        XCTAssertTrue(v >= th.lo && v <= th.hi, "index \(i): \(v) outside thresholds, \(what)")
                    }
                    // Without xc: the same CSR.
                    let s = try occClamp(x, rows: rows, cols: cols, thresholds: t, capacity: cap, withClamped: false)
                    XCTAssertEqual(s.indptr, r.indptr, what)
                    XCTAssertEqual(s.indices, r.indices, what)
                    assertBitwiseEqual(s.values, r.values, what)
                }
            }
        }
    }

    func testClampAndResidualArgumentChecks() throws {
        let x: [Float] = [5, -5, 0, 1, 2, 3]
        let t = [OCCThresholds(lo: -1, hi: 1)]
        // 5, −5, 2, 3 lie outside [−1, 1]: 4 entries.
        XCTAssertEqual(try occClamp(x, rows: 2, cols: 3, thresholds: t, capacity: 4).nnz, 4)
        assertThrowsFP4Error(.invalidArgument, try occClamp(x, rows: 2, cols: 3, thresholds: t, capacity: 3))
        assertThrowsFP4Error(.invalidArgument, try occClamp(x, rows: 2, cols: 3, thresholds: t, capacity: -1))
        // Threshold count neither 1 nor rows.
        assertThrowsFP4Error(.invalidArgument, try occClamp(x, rows: 2, cols: 3, thresholds: t + t + t, capacity: 6))
        assertThrowsFP4Error(.invalidArgument, try occClamp(x, rows: 2, cols: 3, thresholds: [], capacity: 6))
        // lo > hi, NaN thresholds.
        assertThrowsFP4Error(.invalidArgument,
                             try occClamp(x, rows: 2, cols: 3, thresholds: [OCCThresholds(lo: 1, hi: -1)], capacity: 6))
        assertThrowsFP4Error(.invalidArgument,
                             try occClamp(x, rows: 2, cols: 3, thresholds: [OCCThresholds(lo: .nan, hi: 1)], capacity: 6))
        // Per-row thresholds by hand: row 0 [−10, 10] keeps everything, row 1 [1.5, 2.5].
        let r = try occClamp(x, rows: 2, cols: 3, thresholds: [OCCThresholds(lo: -10, hi: 10), OCCThresholds(lo: 1.5, hi: 2.5)],
                             capacity: 2)
        XCTAssertEqual(r.nnz, 2)
        XCTAssertEqual(r.indptr, [0, 0, 2])
        XCTAssertEqual(r.indices, [0, 2])
        XCTAssertEqual(r.values, [-0.5, 0.5])
        XCTAssertEqual(r.xc, [5, -5, 0, 1.5, 2, 2.5])
    }

    // MARK: - Sparse products against dense float64 references

    func testSparseProductsMatchDenseReferences() {
        var (rng, seed) = TestRNG.fresh()
        // (40, 300, 24, 0.01) uses a third of the columns (gathered panels); the others nearly all (transposed).
        for (rows, cols, n, density) in [(1, 1, 1, 1.0), (5, 7, 3, 0.3), (33, 40, 17, 0.1), (64, 96, 600, 0.05), (20, 10, 9, 0.0),
                                         (40, 300, 24, 0.01)] {
            let what = "\(rows)×\(cols)·n \(n) density \(density) seed \(seed)"
            let csr = randomCSR(rows: rows, cols: cols, density: density, &rng)
            let dense = csr.dense(cols: cols)
            let w = (0..<(n * cols)).map { _ in gaussian(&rng) }
            let g = (0..<(rows * n)).map { _ in gaussian(&rng) }
            let y0 = (0..<(rows * n)).map { _ in gaussian(&rng) }
            let out0 = (0..<(n * cols)).map { _ in gaussian(&rng) }
            let x0 = (0..<(rows * cols)).map { _ in gaussian(&rng) }

            // y += R · wᵀ (default panels, and 16-wide panels)
            let y = csrMatmulT(csr, rows: rows, cols: cols, w: w, n: n, y: y0)
            let yNarrow = withPanelFloats(16) { csrMatmulT(csr, rows: rows, cols: cols, w: w, n: n, y: y0) }
            assertBitwiseEqual(yNarrow, y, "narrow panels, \(what)")
            // The exact operations: y + v·w for each stored entry in order, products rounded.
            var seq = y0
            for r in 0..<rows { for k in Int(csr.indptr[r])..<Int(csr.indptr[r + 1]) {
                for j in 0..<n { seq[r * n + j] += csr.values[k] * w[j * cols + Int(csr.indices[k])] }
            } }
            assertBitwiseEqual(y, seq, "entry order, \(what)")
            for r in 0..<rows {
                for j in 0..<n {
                    var s = Double(y0[r * n + j]), mag = abs(s)
                    for c in 0..<cols {
                        let p = Double(dense[r * cols + c]) * Double(w[j * cols + c])
                        s += p; mag += abs(p)
                    }
                    XCTAssertEqual(Double(y[r * n + j]), s, accuracy: 1e-6 * mag + 1e-30, "y[\(r), \(j)], \(what)")
                }
            }
            // x += R
            let x = scatter(csr, rows: rows, cols: cols, x: x0)
            for i in 0..<(rows * cols) {
                XCTAssertEqual(x[i], x0[i] + dense[i], "x[\(i)], \(what)")
            }
        }
    }

    /// Residual round trip: xc + R reproduces x up to the rounding of x − threshold.
    func testClampedPlusResidualReconstructsInput() throws {
        var (rng, seed) = TestRNG.fresh()
        let rows = 40, cols = 77
        let x = (0..<(rows * cols)).map { _ in gaussian(&rng) * 10 }
        for perRow in [false, true] {
            let t = try occThresholds(x, rows: rows, cols: cols, alpha: 0.97, perRow: perRow)
            let cap = OCC.residualCapacity(rows: rows, cols: cols, alpha: 0.97, perRow: perRow)
            let r = try occClamp(x, rows: rows, cols: cols, thresholds: t, capacity: cap)
            XCTAssertGreaterThan(r.nnz, 0)
            let back = scatter(CSR(indptr: r.indptr, indices: r.indices, values: r.values), rows: rows, cols: cols, x: r.xc)
            for i in 0..<x.count {
                XCTAssertEqual(back[i], x[i], accuracy: abs(x[i]) * 2e-7, "index \(i), perRow \(perRow), seed \(seed)")
            }
        }
    }

    // MARK: - Thread-count independence

    func testResultsDoNotDependOnThreadCount() throws {
        var (rng, seed) = TestRNG.fresh()
        let what = "seed \(seed)"
        // Tensor selection above the parallel cutoff, per-row selection over many rows.
        let big = (0..<90_000).map { _ in gaussian(&rng) }
        let rows = 150, cols = 300
        let x = (0..<(rows * cols)).map { _ in gaussian(&rng) }
        let n = 530
        let w = (0..<(n * cols)).map { _ in gaussian(&rng) }
        let g = (0..<(rows * n)).map { _ in gaussian(&rng) }
        let y0 = (0..<(rows * n)).map { _ in gaussian(&rng) }
        let out0 = (0..<(n * cols)).map { _ in gaussian(&rng) }

        func run() throws -> [[Float]] {
            var results: [[Float]] = []
            for a in [0.9, 0.99] {
                for t in try occThresholds(big, rows: 1, cols: big.count, alpha: a, perRow: false) { results.append([t.lo, t.hi]) }
                for t in try occThresholds(big, rows: 3, cols: 30_000, alpha: a, perRow: true) { results.append([t.lo, t.hi]) }
                let tr = try occThresholds(x, rows: rows, cols: cols, alpha: a, perRow: true)
                results.append(tr.flatMap { [$0.lo, $0.hi] })
                let cap = OCC.residualCapacity(rows: rows, cols: cols, alpha: a, perRow: true)
                let r = try occClamp(x, rows: rows, cols: cols, thresholds: tr, capacity: cap)
                results.append(r.xc)
                results.append(r.values)
                results.append(r.indices.map { Float($0) })
                results.append(r.indptr.map { Float($0) })
                let csr = CSR(indptr: r.indptr, indices: r.indices, values: r.values)
                // One wide panel (with row / column blocks), then many 16-wide panels.
                for panel in [1 << 20, 1 << 8] {
                    withPanelFloats(panel) {
                        results.append(csrMatmulT(csr, rows: rows, cols: cols, w: w, n: n, y: y0))
                    }
                }
                results.append(scatter(csr, rows: rows, cols: cols, x: x))
            }
            return results
        }
        let one = try withThreadCount(1) { try run() }
        // The panel split does not change any sum either.
        // Per alpha, 12 results: 0 tensor, 1–3 rows, 4 row thresholds, 5–8 clamp + CSR,
        // 9 y wide, 10 y narrow, 11 scatter.
        XCTAssertEqual(one.count, 24)
        for k in stride(from: 0, to: one.count, by: 12) {
            assertBitwiseEqual(one[k + 9], one[k + 10], "y, wide vs narrow panels, \(what)")
        }
        for threads in [2, 3, 8] {
            let many = try withThreadCount(threads) { try run() }
            XCTAssertEqual(one.count, many.count)
            for (k, (a, b)) in zip(one, many).enumerated() {
                assertBitwiseEqual(b, a, "result \(k), threads \(threads), \(what)")
            }
        }
    }

    // MARK: - Helpers

    struct CSR {
        var indptr: [Int64]
        var indices: [Int32]
        var values: [Float]

        func dense(cols: Int) -> [Float] {
            let rows = indptr.count - 1
            var d = [Float](repeating: 0, count: rows * cols)
            for r in 0..<rows {
                for k in Int(indptr[r])..<Int(indptr[r + 1]) { d[r * cols + Int(indices[k])] += values[k] }
            }
            return d
        }
    }

    // MARK: - Tail select and short-row tails (the fast paths, against sorted keys)

    /// Data kinds for the fast paths: typical activations (where they must decide) and inputs
    /// built to defeat the sample (where they may decline but must never be wrong).
    static func tailCases(_ n: Int, _ rng: inout TestRNG) -> [(String, [Float], Bool)] {
        let g = (0..<n).map { _ in gaussian(&rng) }
        var chan = g
        for i in stride(from: 0, to: n, by: 37) { chan[i] *= 50 }
        return [
            ("gaussian", g, true),
            ("outlier channels", chan, true),
            ("ascending", g.sorted(), true),
            ("descending", Array(g.sorted().reversed()), true),
            ("ties", (0..<n).map { _ in Float(Int.random(in: -3...3, using: &rng)) }, false),
            ("signed zeros", (0..<n).map { _ in Bool.random(using: &rng) ? Float(-0.0) : 0 }, false),
            ("zeros and a few values", (0..<n).map { i in i % 97 == 5 ? gaussian(&rng) : (i % 2 == 0 ? -0.0 : 0) }, false),
            ("constant with two outliers", (0..<n).map { i in i == 3 ? -1e30 : (i == n - 2 ? 1e30 : 1.5) }, false),
            ("clumped extremes", (0..<n).map { i in i < 40 ? -1e9 : (i >= n - 40 ? 1e9 : g[i]) }, false),
            ("huge and tiny", (0..<n).map { _ in
                [Float.greatestFiniteMagnitude, -.greatestFiniteMagnitude, .leastNonzeroMagnitude, -0.0, 1e-38, -1][Int.random(in: 0..<6, using: &rng)]
            }, false),
        ]
    }

    func testTailSelectIsExactOrDeclines() {
        var (rng, seed) = TestRNG.fresh()
        var typical = 0, decided = 0  // typical data: the sample should almost always be right
        for n in [4096, 4097, 9000] {
            for (name, x, mustDecide) in Self.tailCases(n, &rng) {
                let keys = x.map { OrderStatistics.orderKey($0.bitPattern) }.sorted()
                for a in [0.97, 0.99, 0.999, 1.0] {
                    let (ra, rb) = OCC.quantileIndices(count: n, alpha: a)
                    let what = "\(name) n \(n) alpha \(a) seed \(seed)"
                    switch x.withUnsafeBufferPointer({ OrderStatistics.selectTails($0.baseAddress!, n, ra, rb) }) {
                    case .keys(let ka, let kb):
                        XCTAssertEqual(ka, keys[ra], what)
                        XCTAssertEqual(kb, keys[rb], what)
                    case .nonFinite: XCTFail("finite data reported non-finite: \(what)")
                    case .undecided: break
                    }
                    if mustDecide {
                        typical += 1
                        if case .keys = x.withUnsafeBufferPointer({ OrderStatistics.selectTails($0.baseAddress!, n, ra, rb) }) { decided += 1 }
                    }
                    // A NaN or ±inf anywhere: never keys.
                    for bad in [Float.nan, .infinity, -.infinity] {
                        var y = x
                        y[Int.random(in: 0..<n, using: &rng)] = bad
                        if case .keys = y.withUnsafeBufferPointer({ OrderStatistics.selectTails($0.baseAddress!, n, ra, rb) }) {
                            XCTFail("non-finite \(bad) not caught: \(what)")
                        }
                    }
                }
            }
        }
        XCTAssertGreaterThanOrEqual(decided * 10, typical * 9, "fast path declined \(typical - decided) of \(typical), seed \(seed)")
        // Wide tails are left to the radix select.
        let x = (0..<5000).map { _ in gaussian(&rng) }
        let (ra, rb) = OCC.quantileIndices(count: 5000, alpha: 0.9)
        if case .undecided = x.withUnsafeBufferPointer({ OrderStatistics.selectTails($0.baseAddress!, 5000, ra, rb) }) {} else {
            XCTFail("tails of 10% should be declined")
        }
    }

    func testShortRowTailsMatchSortedKeys() {
        var (rng, seed) = TestRNG.fresh()
        for n in [2, 3, 17, 49, 128, 352, 1000] {
            for (name, x, _) in Self.tailCases(n, &rng) {
                let keys = x.map { OrderStatistics.orderKey($0.bitPattern) }.sorted()
                let scratch = UnsafeMutablePointer<UInt32>.allocate(capacity: n)
                defer { scratch.deallocate() }
                for _ in 0..<6 {
                    let k1 = Int.random(in: 1...Swift.min(OrderStatistics.tailKeep, n - 1), using: &rng)
                    let k2 = Int.random(in: 1...Swift.min(OrderStatistics.tailKeep, n - k1), using: &rng)
                    let what = "\(name) n \(n) k1 \(k1) k2 \(k2) seed \(seed)"
                    let got = x.withUnsafeBufferPointer { OrderStatistics.selectSmallTails($0.baseAddress!, n, k1, k2, keys: scratch) }
                    XCTAssertEqual(got?.0, keys[k1 - 1], what)
                    XCTAssertEqual(got?.1, keys[n - k2], what)
                    var y = x
                    y[Int.random(in: 0..<n, using: &rng)] = [Float.nan, .infinity, -.infinity][Int.random(in: 0..<3, using: &rng)]
                    XCTAssertNil(y.withUnsafeBufferPointer { OrderStatistics.selectSmallTails($0.baseAddress!, n, k1, k2, keys: scratch) }, what)
                }
            }
        }
    }

    func randomCSR(rows: Int, cols: Int, density: Double, _ rng: inout TestRNG) -> CSR {
        var csr = CSR(indptr: [0], indices: [], values: [])
        for r in 0..<rows {
            // Leave some rows empty on purpose.
            if r % 4 != 3 {
                for c in 0..<cols where Double.random(in: 0..<1, using: &rng) < density {
                    csr.indices.append(Int32(c))
                    csr.values.append(gaussian(&rng))
                }
            }
            csr.indptr.append(Int64(csr.indices.count))
        }
        return csr
    }
}

// MARK: - Array wrappers around the pointer API

/// Runs `body` with the sparse products' panel size set to `floats`, restoring it afterwards.
private func withPanelFloats<T>(_ floats: Int, _ body: () throws -> T) rethrows -> T {
    let saved = OCC.panelFloats
    OCC.panelFloats = floats
    defer { OCC.panelFloats = saved }
    return try body()
}

private func gaussian(_ rng: inout TestRNG) -> Float {
    let u1 = Double.random(in: Double.leastNormalMagnitude..<1, using: &rng)
    let u2 = Double.random(in: 0..<1, using: &rng)
    return Float((-2 * log(u1)).squareRoot() * cos(2 * Double.pi * u2))
}

private func occThresholds(_ x: [Float], rows: Int, cols: Int, alpha: Double, perRow: Bool) throws -> [OCCThresholds] {
    let input = x.isEmpty ? [Float(0)] : x
    return try input.withUnsafeBufferPointer {
        try OCC.thresholds($0.baseAddress!, rows: rows, cols: cols, alpha: alpha, perRow: perRow)
    }
}

/// Sorted-copy reference with the spec's index formula written out again here.
private func referenceThresholds(_ x: [Float], rows: Int, cols: Int, alpha: Double, perRow: Bool) -> [OCCThresholds] {
    if !perRow { return [referenceFromSorted(x.sorted(), alpha: alpha)] }
    return (0..<rows).map { r in referenceFromSorted(x[(r * cols)..<((r + 1) * cols)].sorted(), alpha: alpha) }
}

/// sorted[floor((1 − α)·n)] and sorted[min(floor(α·n), n − 1)] of an ascending array.
private func referenceFromSorted(_ s: [Float], alpha: Double) -> OCCThresholds {
    let n = s.count
    let lo = Int(floor((1 - alpha) * Double(n)))
    let hi = Swift.min(Int(floor(alpha * Double(n))), n - 1)
    return OCCThresholds(lo: s[lo], hi: s[hi])
}

/// Thresholds compare by value: −0 and +0 are the same order statistic.
private func assertSameThresholds(_ got: [OCCThresholds], _ want: [OCCThresholds], _ what: String,
                                  file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertEqual(got.count, want.count, what, file: file, line: line)
    var failures = 0
    for (i, (g, w)) in zip(got, want).enumerated() where !(g.lo == w.lo && g.hi == w.hi) {
        failures += 1
        if failures <= 3 {
            XCTFail("group \(i): got (\(g.lo), \(g.hi)), expected (\(w.lo), \(w.hi)); \(what)", file: file, line: line)
        }
    }
}

private struct ClampResult {
    var xc: [Float]
    var indptr: [Int64]
    var indices: [Int32]
    var values: [Float]
    var nnz: Int
}

private func occClamp(_ x: [Float], rows: Int, cols: Int, thresholds: [OCCThresholds], capacity: Int,
                      withClamped: Bool = true) throws -> ClampResult {
    let input = x.isEmpty ? [Float(0)] : x
    var xc = [Float](repeating: 0x1.234p5, count: Swift.max(x.count, 1))
    var indptr = [Int64](repeating: -7, count: Swift.max(rows + 1, 1))
    var indices = [Int32](repeating: -7, count: Swift.max(capacity, 1))
    var values = [Float](repeating: 0x1.234p5, count: Swift.max(capacity, 1))
    let nnz = try input.withUnsafeBufferPointer { xp in
        try xc.withUnsafeMutableBufferPointer { cp in
            try indptr.withUnsafeMutableBufferPointer { ip in
                try indices.withUnsafeMutableBufferPointer { jp in
                    try values.withUnsafeMutableBufferPointer { vp in
                        try OCC.clampAndResidual(xp.baseAddress!, rows: rows, cols: cols, thresholds: thresholds,
                                                 clamped: withClamped ? cp.baseAddress! : nil,
                                                 indptr: ip.baseAddress!, indices: jp.baseAddress!,
                                                 values: vp.baseAddress!, capacity: capacity)
                    }
                }
            }
        }
    }
    return ClampResult(xc: Array(xc.prefix(x.count)), indptr: Array(indptr.prefix(rows + 1)),
                       indices: Array(indices.prefix(nnz)), values: Array(values.prefix(nnz)), nnz: nnz)
}

private func withCSR<T>(_ csr: OCCTests.CSR,
                        _ body: (UnsafePointer<Int64>, UnsafePointer<Int32>, UnsafePointer<Float>) -> T) -> T {
    let ind = csr.indices.isEmpty ? [Int32(0)] : csr.indices
    let val = csr.values.isEmpty ? [Float(0)] : csr.values
    return csr.indptr.withUnsafeBufferPointer { ip in
        ind.withUnsafeBufferPointer { jp in
            val.withUnsafeBufferPointer { vp in body(ip.baseAddress!, jp.baseAddress!, vp.baseAddress!) }
        }
    }
}

private func csrMatmulT(_ csr: OCCTests.CSR, rows: Int, cols: Int, w: [Float], n: Int, y: [Float]) -> [Float] {
    var y = y
    withCSR(csr) { ip, jp, vp in
        w.withUnsafeBufferPointer { wp in
            y.withUnsafeMutableBufferPointer { yp in
                OCC.csrMatmulTransposed(indptr: ip, indices: jp, values: vp, rows: rows, cols: cols,
                                        w: wp.baseAddress!, n: n, into: yp.baseAddress!)
            }
        }
    }
    return y
}

private func scatter(_ csr: OCCTests.CSR, rows: Int, cols: Int, x: [Float]) -> [Float] {
    var x = x
    withCSR(csr) { ip, jp, vp in
        x.withUnsafeMutableBufferPointer { xp in
            OCC.scatterAdd(indptr: ip, indices: jp, values: vp, rows: rows, cols: cols, into: xp.baseAddress!)
        }
    }
    return x
}
