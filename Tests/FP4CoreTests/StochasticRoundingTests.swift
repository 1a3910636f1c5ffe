import XCTest
@testable import FP4Core

/// Spec §1 stochastic rounding: with lo <= |v| <= hi the neighbouring grid magnitudes, round
/// up with probability (|v| − lo)/(hi − lo), so E[q] = v; the draw for element i is a pure
/// function of (seed, i), so results never depend on the thread count or chunking.
final class StochasticRoundingTests: XCTestCase {

    /// Number of standard errors allowed for a sample mean. A correct implementation fails
    /// a 5σ check with probability ~6e-7 per assertion.
    static let zLimit = 5.0

    /// Fake-quantizes n copies of v (plus one `anchor` element fixing the pow2 scale at 1)
    /// with stochastic rounding; checks that every output is lo or hi and that the mean is v
    /// within zLimit standard errors, SE = (hi − lo)·sqrt(p(1 − p)/n).
    private func checkUnbiased(_ v: Float, lo: Float, hi: Float, format: MiniFloatFormat,
                               n: Int = 100_000, seed: UInt64 = 12345,
                               file: StaticString = #filePath, line: UInt = #line) throws {
        let anchor = format.maxValue  // pow2: amax = fmax -> s = 1 exactly
        let x = [anchor] + [Float](repeating: v, count: n)
        let q = Quantizer(format: format, granularity: .tensor, scaleRule: .pow2, rounding: .stochastic, seed: seed)
        let out = try q.fakeQuantize(x, rows: 1, cols: n + 1).out
        XCTAssertEqual(out[0], anchor, file: file, line: line)
        var sum = 0.0, ups = 0
        for y in out.dropFirst() {
            if y == hi { ups += 1 } else if y != lo {
                XCTFail("\(format.name): \(v) rounded to \(y), not to a neighbour \(lo) or \(hi)", file: file, line: line)
                return
            }
            sum += Double(y)
        }
        let p = (Double(v) - Double(lo)) / (Double(hi) - Double(lo))
        let se = abs(Double(hi) - Double(lo)) * (p * (1 - p) / Double(n)).squareRoot()
        let mean = sum / Double(n)
        XCTAssertLessThanOrEqual(abs(mean - Double(v)), Self.zLimit * se,
                                 "\(format.name) v = \(v): mean \(mean), SE \(se), P(up) \(Double(ups) / Double(n)) vs \(p)",
                                 file: file, line: line)
    }

    func testUnbiasedE2M1Interior() throws {
        try checkUnbiased(2.3, lo: 2, hi: 3, format: .e2m1)        // p = 0.3
    }

    func testUnbiasedE2M1SubnormalInterval() throws {
        try checkUnbiased(0.1, lo: 0, hi: 0.5, format: .e2m1)      // p = 0.2
    }

    func testUnbiasedE2M1NegativeTopInterval() throws {
        try checkUnbiased(-4.7, lo: -4, hi: -6, format: .e2m1)     // |v| in [4, 6], p = 0.35
    }

    func testUnbiasedE2M1ExactMidpoint() throws {
        try checkUnbiased(1.25, lo: 1, hi: 1.5, format: .e2m1)     // p = 0.5
    }

    func testUnbiasedE3M0() throws {
        try checkUnbiased(5, lo: 4, hi: 8, format: .e3m0)          // p = 0.25
    }

    func testUnbiasedE1M2() throws {
        try checkUnbiased(1.3, lo: 1, hi: 1.5, format: .e1m2)      // p = 0.6
    }

    /// Mixed random values: the mean error over the tensor is 0 within 5 standard errors,
    /// SE² = Σ δ_i² p_i (1 − p_i) / n² from the spec's per-element probabilities.
    func testMeanErrorOverRandomValuesIsZero() throws {
        var (rng, seed) = TestRNG.fresh()
        let n = 100_000
        var x = (0..<n).map { _ in Float.random(in: -6...6, using: &rng) }
        x[0] = 6  // pow2 tensor scale = 1
        let grid = SpecTable.e2m1
        let q = Quantizer(format: .e2m1, granularity: .tensor, scaleRule: .pow2, rounding: .stochastic, seed: seed)
        let out = try q.fakeQuantize(x, rows: 1, cols: n).out
        var err = 0.0, variance = 0.0
        for i in 0..<n {
            let a = Double(abs(x[i]))
            let j = grid.lastIndex { Double($0) <= a }!
            if j == grid.count - 1 { continue }  // exactly 6: no randomness
            let lo = Double(grid[j]), hi = Double(grid[j + 1]), p = (a - lo) / (hi - lo)
            XCTAssertTrue(Double(abs(out[i])) == lo || Double(abs(out[i])) == hi, "x \(x[i]) -> \(out[i]), seed \(seed)")
            variance += (hi - lo) * (hi - lo) * p * (1 - p)
            err += Double(out[i]) - Double(x[i])
        }
        let se = variance.squareRoot() / Double(n)
        XCTAssertLessThanOrEqual(abs(err / Double(n)), Self.zLimit * se, "mean error \(err / Double(n)), SE \(se), seed \(seed)")
    }

    /// Element-level rule through encode(uniform:): up iff the draw is below the fraction.
    func testRoundsUpExactlyWhenDrawIsBelowTheFraction() {
        let c = ElementCodec(.e2m1)
        // 2.25 lies a quarter of the way from 2 (code 4) to 3 (code 5).
        XCTAssertEqual(c.encode(2.25, rounding: .stochastic, uniform: 0), 5)
        XCTAssertEqual(c.encode(2.25, rounding: .stochastic, uniform: 0.24), 5)
        XCTAssertEqual(c.encode(2.25, rounding: .stochastic, uniform: 0.26), 4)
        XCTAssertEqual(c.encode(2.25, rounding: .stochastic, uniform: 0.99), 4)
        XCTAssertEqual(c.encode(-5.5, rounding: .stochastic, uniform: 0.7), 0b1111)  // 3/4 of [4, 6]
        XCTAssertEqual(c.encode(-5.5, rounding: .stochastic, uniform: 0.8), 0b1110)
        // Grid values never move, whatever the draw.
        for u: Float in [0, 0.3, 0.99999994] {
            XCTAssertEqual(c.encode(3, rounding: .stochastic, uniform: u), 5)
            XCTAssertEqual(c.encode(0, rounding: .stochastic, uniform: u), 0)
        }
        let g = GridParameters(.e3m0)
        XCTAssertEqual(g.roundMagnitude(6, .stochastic, 0.49), 8)  // halfway in [4, 8]
        XCTAssertEqual(g.roundMagnitude(6, .stochastic, 0.51), 4)
    }

    // MARK: Counter-based draws

    func testCounterDrawsAreUniformAndPure() {
        let key = CounterRNG.key(seed: 99)
        var sum = 0.0, sumSq = 0.0
        let n = 100_000
        for i in 0..<n {
            let u = CounterRNG.uniform(key: key, index: i)
            XCTAssert(u >= 0 && u < 1, "draw \(u) at \(i) outside [0, 1)")
            XCTAssertEqual(u, CounterRNG.uniform(key: key, index: i), "draw \(i) is not a pure function")
            sum += Double(u); sumSq += Double(u) * Double(u)
        }
        // Uniform[0,1): mean 1/2 (SD 1/sqrt(12)), E[u²] = 1/3 (SD sqrt(4/45)).
        XCTAssertLessThan(abs(sum / Double(n) - 0.5), 5 * (1.0 / 12).squareRoot() / Double(n).squareRoot())
        XCTAssertLessThan(abs(sumSq / Double(n) - 1.0 / 3), 5 * (4.0 / 45).squareRoot() / Double(n).squareRoot())
    }

    // MARK: Reproducibility

    private static let rows = 4096, cols = 16

    private func randomInput() -> ([Float], UInt64) {
        var (rng, seed) = TestRNG.fresh()
        return ((0..<(Self.rows * Self.cols)).map { _ in Float.random(in: -5...5, using: &rng) }, seed)
    }

    /// Same seed: bit-identical output for 1, 2 and 3 threads, for fakeQuantize and quantize.
    func testIndependentOfThreadCount() throws {
        let (x, dataSeed) = randomInput()
        for g in [Granularity.tensor, .row, .column, .block(16)] {
            let q = Quantizer(format: .e2m1, granularity: g, scaleRule: .absmax, rounding: .stochastic, seed: 2025)
            let ref = try withThreadCount(1) { try q.fakeQuantize(x, rows: Self.rows, cols: Self.cols).out }
            let refCodes = try withThreadCount(1) { try q.quantize(x, rows: Self.rows, cols: Self.cols).codes }
            for t in [2, 3] {
                let out = try withThreadCount(t) { try q.fakeQuantize(x, rows: Self.rows, cols: Self.cols).out }
                assertBitwiseEqual(out, ref, "\(g.name), \(t) threads vs 1, data seed \(dataSeed)")
                let codes = try withThreadCount(t) { try q.quantize(x, rows: Self.rows, cols: Self.cols).codes }
                XCTAssertEqual(codes, refCodes, "\(g.name), \(t) threads vs 1, data seed \(dataSeed)")
            }
        }
    }

    /// The draw belongs to the flat element index, not to a position inside a group or a
    /// chunk: when every group has the same scale, every granularity gives the same output.
    func testDrawDependsOnFlatIndexOnly() throws {
        var (rng, seed) = TestRNG.fresh()
        let rows = 64, cols = 32
        var x = (0..<(rows * cols)).map { _ in Float.random(in: -5.9...5.9, using: &rng) }
        // ±6 in columns 0 and 16 of every row: every row, block(16) and 32×32 tile has amax 6;
        // every other column has amax in (3, 6] (all 64 draws below 3 has probability ~1e-19).
        // So pow2 gives s = 1 in every group of every granularity.
        for r in 0..<rows { x[r * cols] = 6; x[r * cols + 16] = -6 }
        func run(_ g: Granularity) throws -> [Float] {
            try Quantizer(format: .e2m1, granularity: g, scaleRule: .pow2, rounding: .stochastic, seed: 77)
                .fakeQuantize(x, rows: rows, cols: cols).out
        }
        let ref = try run(.tensor)
        for g in [Granularity.row, .column, .block(16), .block2d(32)] {
            assertBitwiseEqual(try run(g), ref, "\(g.name) vs tensor, data seed \(seed)")
        }
    }

    /// Same seed twice: identical; another seed: a different draw for a large share of the
    /// elements that are not on the grid.
    func testSeedDeterminesTheDraws() throws {
        let (x, dataSeed) = randomInput()
        let n = Self.rows * Self.cols
        func run(_ seed: UInt64) throws -> [Float] {
            try Quantizer(format: .e2m1, granularity: .row, scaleRule: .absmax, rounding: .stochastic, seed: seed)
                .fakeQuantize(x, rows: Self.rows, cols: Self.cols).out
        }
        let a = try run(1), b = try run(1), c = try run(2)
        assertBitwiseEqual(b, a, "same seed, data seed \(dataSeed)")
        let differing = (0..<n).filter { a[$0] != c[$0] }.count
        // Each off-grid element differs with probability 2p(1−p), on average about 1/3 here.
        XCTAssertGreaterThan(differing, n / 10, "seeds 1 and 2 give nearly the same rounding, data seed \(dataSeed)")
        // And it is not round-to-nearest in disguise.
        let nearest = try Quantizer(format: .e2m1, granularity: .row, scaleRule: .absmax)
            .fakeQuantize(x, rows: Self.rows, cols: Self.cols).out
        XCTAssertNotEqual(a, nearest, "stochastic rounding must differ from nearest somewhere")
    }
}
