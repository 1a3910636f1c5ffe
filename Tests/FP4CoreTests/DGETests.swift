import XCTest
@testable import FP4Core
#if canImport(Glibc)
import Glibc
#endif

/// Spec §4: the DGE derivative f' and the surrogate f. The reference is the spec's formula
/// written out here in Double over the grid tables of TestSupport's SpecTable.
final class DGETests: XCTestCase {
    /// numerics.md §4: NaN in, NaN out, whatever the payload (the approximate log2/exp2 would
    /// otherwise turn it into a tiny number).
    func testNaNInNaNOut() throws {
        let dge = try DGE(format: .e2m1, k: 5, clamp: 3)
        for bits: UInt32 in [0x7FC0_0000, 0x7FC0_0001, 0xFFC0_0000, 0x7F80_0001, 0x7FFF_FFFF] {
            XCTAssertTrue(dge.derivative(Float(bitPattern: bits)).isNaN, "payload \(bits)")
        }
        XCTAssertFalse(dge.derivative(1.25).isNaN)
    }


    static let formats: [MiniFloatFormat] = [.e2m1, .e1m2, .e3m0]

    // MARK: - Check values

    func testSpecCheckValues() throws {
        let v: [Float] = [-6, -5.375, -4.75, -4.09375, -3.46875, -2.84375, -2.203125, -1.578125, -0.94921875, -0.31640625]
        let want: [Double] = [0.2002, 0.4375, 0.6055, 0.2168, 1.8359, 0.2695, 0.3027, 0.2695, 0.2402, 0.5781]
        let dge = try DGE()  // e2m1, k = 5, C = 3
        XCTAssertEqual(dge.k, 5)
        XCTAssertEqual(dge.clamp, 3)
        for (x, w) in zip(v, want) {
            for s: Float in [1, -1] {
                let got = Double(dge.derivative(s * x))
                XCTAssertLessThanOrEqual(abs(got - w), 1e-2 * w, "f'(\(s * x)) = \(got), spec \(w)")
            }
        }
    }

    // MARK: - Against the Double formula

    func testDerivativeMatchesDoubleFormula() throws {
        for f in Self.formats {
            let table = SpecTable.fp4(f).map(Double.init)
            for k: Float in [0.5, 1, 2, 5, 10] {
                for c: Float in [1.5, 3, 10] {
                    let dge = try DGE(format: f, k: k, clamp: c)
                    var v: [Float] = (0...1400).map { Float(-7 + Double($0) * 0.01) }
                    v += table.flatMap { [Float($0), -Float($0)] }
                    v += zip(table.dropLast(), table.dropFirst()).flatMap { a, b -> [Float] in
                        let m = Float((a + b) / 2)
                        return [m, -m, m.nextUp, m.nextDown, Float(a + (b - a) * 0.3), Float(a + (b - a) * 0.9)]
                    }
                    var bad = 0, first = ""
                    for x in v {
                        let want = referenceDerivative(Double(x), table: table, k: Double(k), clamp: Double(c))
                        let got = Double(dge.derivative(x))
                        if !(abs(got - want) <= 1e-6 * abs(want) + 1e-12) {
                            if bad == 0 { first = "v \(x): got \(got), want \(want)" }
                            bad += 1
                        }
                    }
                    XCTAssertEqual(bad, 0, "\(f.name) k \(k) C \(c): \(bad) points off; first \(first)")
                }
            }
        }
    }

    func testBufferVersionEqualsScalar() throws {
        let dge = try DGE(format: .e2m1, k: 5, clamp: 3)
        let v: [Float] = (0..<3001).map { Float(-7.5 + Double($0) * 0.005) }
        var out = [Float](repeating: .nan, count: v.count)
        v.withUnsafeBufferPointer { vp in
            out.withUnsafeMutableBufferPointer { op in dge.derivatives(vp.baseAddress!, count: v.count, into: op.baseAddress!) }
        }
        assertBitwiseEqual(out, v.map { dge.derivative($0) })
    }

    // MARK: - Grid points, midpoints, clamp, range

    func testGridPointsGiveOneOverKAndMidpointsGiveTheClamp() throws {
        for f in Self.formats {
            let table = SpecTable.fp4(f)
            for (k, c): (Float, Float) in [(5, 3), (2, 10), (10, 1.5)] {
                let dge = try DGE(format: f, k: k, clamp: c)
                for g in table {
                    for x in [g, -g] {
                        XCTAssertEqual(Double(dge.derivative(x)), Double(1 / k), accuracy: 1e-6 / Double(k), "\(f.name) v \(x)")
                    }
                }
                for i in 0..<(table.count - 1) {
                    let m = (table[i] + table[i + 1]) / 2
                    XCTAssertEqual(dge.derivative(m), c, "\(f.name) midpoint \(m)")
                    XCTAssertEqual(dge.derivative(-m), c, "\(f.name) midpoint \(-m)")
                }
            }
        }
    }

    func testClampHolds() throws {
        for f in Self.formats {
            for c: Float in [0.25, 1, 3, 7] {
                let dge = try DGE(format: f, k: 5, clamp: c)
                var maxSeen: Float = 0
                var minSeen: Float = .infinity
                let span = Double(f.maxValue) + 2  // past ±max on both sides
                for i in 0...20_000 {
                    let d = dge.derivative(Float(-span + Double(i) * span / 10_000))
                    minSeen = Swift.min(minSeen, d)
                    maxSeen = Swift.max(maxSeen, d)
                }
                XCTAssertEqual(minSeen, 0, "\(f.name): f' is 0 outside the range and never negative")
                XCTAssertLessThanOrEqual(maxSeen, c, "\(f.name) C \(c)")
                XCTAssertEqual(maxSeen, c, "\(f.name): the clamp is reached near midpoints")
            }
        }
    }

    func testZeroOutsideRange() throws {
        for f in Self.formats {
            let dge = try DGE(format: f, k: 5, clamp: 3)
            let m = SpecTable.fp4(f).last!
            for x in [m.nextUp, m * 1.001, m + 0.5, 7, 17, 1e6, .greatestFiniteMagnitude, .infinity] where x > m {
                XCTAssertEqual(dge.derivative(x), 0, "\(f.name) v \(x)")
                XCTAssertEqual(dge.derivative(-x), 0, "\(f.name) v \(-x)")
            }
            // The last interval is closed: ±max is inside, f' = 1/k.
            XCTAssertEqual(dge.derivative(m), 0.2, accuracy: 1e-7)
            XCTAssertEqual(dge.derivative(-m), 0.2, accuracy: 1e-7)
            XCTAssertEqual(dge.derivative(m.nextDown), 0.2, accuracy: 1e-4)
        }
    }

    func testSymmetric() throws {
        let dge = try DGE(format: .e2m1, k: 5, clamp: 3)
        let asym = (0...7000).map { Float(Double($0) * 0.001) }.filter { dge.derivative($0) != dge.derivative(-$0) }
        XCTAssertEqual(asym, [], "f'(v) != f'(-v)")
    }

    // MARK: - Surrogate

    func testSurrogateMapsGridPointsToThemselvesAndIsMonotone() throws {
        for f in Self.formats {
            let table = SpecTable.fp4(f)
            for k: Float in [2, 5, 10] {
                let dge = try DGE(format: f, k: k, clamp: 3)
                for g in table {
                    XCTAssertEqual(dge.surrogate(g), g, accuracy: 1e-6 * Swift.max(1, g), "\(f.name) k \(k) grid \(g)")
                    XCTAssertEqual(dge.surrogate(-g), -g, accuracy: 1e-6 * Swift.max(1, g))
                }
                var prev = -Float.infinity
                var nonMonotone = 0, off = 0, first = ""
                for i in 0...14_000 {
                    let x = Float(-7 + Double(i) * 0.001)
                    let s = dge.surrogate(x)
                    if s < prev { nonMonotone += 1 }
                    prev = s
                    let want = referenceSurrogate(Double(x), table: table.map(Double.init), k: Double(k))
                    if !(abs(Double(s) - want) <= 2e-6 * Double(table.last!)) {
                        if off == 0 { first = "v \(x): got \(s), want \(want)" }
                        off += 1
                    }
                }
                XCTAssertEqual(nonMonotone, 0, "\(f.name) k \(k): surrogate not monotone")
                XCTAssertEqual(off, 0, "\(f.name) k \(k): \(off) points off the formula; first \(first)")
            }
        }
    }

    // MARK: - Bad parameters

    func testInvalidParametersThrow() {
        for k: Float in [0, -1, -.infinity, .nan, .infinity] {
            assertThrowsFP4Error(.invalidArgument, try DGE(format: .e2m1, k: k, clamp: 3), "k \(k)")
        }
        for c: Float in [0, -3, .nan] {
            assertThrowsFP4Error(.invalidArgument, try DGE(format: .e2m1, k: 5, clamp: c), "clamp \(c)")
        }
        for f in [MiniFloatFormat.e4m3, .e5m2, .e8m0] {
            assertThrowsFP4Error(.invalidArgument, try DGE(format: f, k: 5, clamp: 3), f.name)
        }
    }
}

// MARK: - Double references (numerics.md §4 formulas)

/// Grid interval [a, a+δ) of |v| in an ascending magnitude table; the last one closed.
private func dgeInterval(_ a: Double, table: [Double]) -> (lo: Double, delta: Double) {
    var i = 0
    while i < table.count - 2 && a >= table[i + 1] { i += 1 }
    return (table[i], table[i + 1] - table[i])
}

/// min((1/k)·|2x/δ − 1|^(1/k − 1), C); 0 above max.
private func referenceDerivative(_ v: Double, table: [Double], k: Double, clamp: Double) -> Double {
    let a = abs(v)
    if a > table.last! { return 0 }
    let (lo, d) = dgeInterval(a, table: table)
    let t = abs(2 * (a - lo) / d - 1)
    let e = 1 / k - 1
    let p: Double = t == 0 ? (e < 0 ? .infinity : (e == 0 ? 1 : 0)) : pow(t, e)
    return Swift.min(p / k, clamp)
}

/// sign(v)·(a + (δ/2)(1 + sign(t)|t|^(1/k))), |v| clipped to max.
private func referenceSurrogate(_ v: Double, table: [Double], k: Double) -> Double {
    let a = Swift.min(abs(v), table.last!)
    let (lo, d) = dgeInterval(a, table: table)
    let t = 2 * (a - lo) / d - 1
    let f = (d / 2) * (1 + (t < 0 ? -1 : 1) * pow(abs(t), 1 / k))
    return v < 0 ? -(lo + f) : lo + f
}
