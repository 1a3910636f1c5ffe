import XCTest
@testable import FP4Core

/// Blockwise Walsh–Hadamard transform: orthogonality, known vectors, signs, in place.
final class HadamardTests: XCTestCase {
    /// Sylvester–Hadamard entry H[i, j] = (−1)^popcount(i & j), unnormalized (independent of the core).
    func sylvester(_ i: Int, _ j: Int) -> Double { (i & j).nonzeroBitCount % 2 == 0 ? 1 : -1 }

    func rotate(_ x: [Float], rows: Int, cols: Int, block: Int, signs: [Float]? = nil, inverse: Bool = false) throws -> [Float] {
        var out = [Float](repeating: .nan, count: Swift.max(x.count, 1))
        let input = x.isEmpty ? [Float(0)] : x
        try input.withUnsafeBufferPointer { xp in
            try out.withUnsafeMutableBufferPointer { op in
                if let signs {
                    try signs.withUnsafeBufferPointer { sp in
                        try Hadamard.transform(xp.baseAddress!, rows: rows, cols: cols, block: block,
                                               signs: sp.baseAddress!, inverse: inverse, into: op.baseAddress!)
                    }
                } else {
                    try Hadamard.transform(xp.baseAddress!, rows: rows, cols: cols, block: block,
                                           inverse: inverse, into: op.baseAddress!)
                }
            }
        }
        return Array(out.prefix(x.count))
    }

    func testRotatedIdentityIsOrthonormalHadamard() throws {
        for b in [32, 64, 128] {
            var eye = [Float](repeating: 0, count: b * b)
            for i in 0..<b { eye[i * b + i] = 1 }
            let H = try rotate(eye, rows: b, cols: b, block: b)
            let norm = 1 / Double(b).squareRoot()
            for i in 0..<b {
                for j in 0..<b {
                    XCTAssertEqual(Double(H[i * b + j]), sylvester(i, j) * norm, accuracy: 1e-7, "b=\(b) [\(i),\(j)]")
                }
            }
            // H·Hᵀ = I
            for i in 0..<b {
                for j in 0..<b {
                    var s = 0.0
                    for k in 0..<b { s += Double(H[i * b + k]) * Double(H[j * b + k]) }
                    XCTAssertEqual(s, i == j ? 1 : 0, accuracy: 1e-6, "b=\(b) (H·Hᵀ)[\(i),\(j)]")
                }
            }
        }
    }

    func testKnownVector() throws {
        // x = (1, ..., 32): y_j = Σ_i x_i H[i, j] / √32. y_0 = 528/√32; y_1 = −16/√32 (odd minus even).
        let x = (1...32).map { Float($0) }
        let y = try rotate(x, rows: 1, cols: 32, block: 32)
        let r = Double(32).squareRoot()
        XCTAssertEqual(Double(y[0]), 528 / r, accuracy: 1e-4)
        XCTAssertEqual(Double(y[1]), -16 / r, accuracy: 1e-5)
        for j in 0..<32 {
            var s = 0.0
            for i in 0..<32 { s += Double(x[i]) * sylvester(i, j) }
            XCTAssertEqual(Double(y[j]), s / r, accuracy: 1e-4, "j=\(j)")
        }
        // The constant vector goes to √32·e_0.
        let c = try rotate([Float](repeating: 1, count: 32), rows: 1, cols: 32, block: 32)
        XCTAssertEqual(c[0], Float(r), accuracy: 1e-5)
        for j in 1..<32 { XCTAssertEqual(c[j], 0, accuracy: 1e-6) }
    }

    func testSignsAppliedBeforeTransformAndInverse() throws {
        var (rng, seed) = TestRNG.fresh()
        let b = 32, rows = 5, cols = 64
        let x = (0..<(rows * cols)).map { _ in Float.random(in: -4...4, using: &rng) }
        let d = (0..<b).map { _ in Bool.random(using: &rng) ? Float(1) : -1 }
        let y = try rotate(x, rows: rows, cols: cols, block: b, signs: d)
        let norm = 1 / Double(b).squareRoot()
        for r in 0..<rows {
            for seg in 0..<(cols / b) {
                for j in 0..<b {
                    var s = 0.0
                    for i in 0..<b { s += Double(x[r * cols + seg * b + i]) * Double(d[i]) * sylvester(i, j) }
                    XCTAssertEqual(Double(y[r * cols + seg * b + j]), s * norm, accuracy: 1e-5, "seed \(seed)")
                }
            }
        }
        let back = try rotate(y, rows: rows, cols: cols, block: b, signs: d, inverse: true)
        for i in 0..<x.count { XCTAssertEqual(back[i], x[i], accuracy: 1e-5, "seed \(seed) i=\(i)") }
    }

    func testInPlaceEqualsOutOfPlaceAndThreadCountIndependent() throws {
        var (rng, seed) = TestRNG.fresh()
        let rows = 40, cols = 128
        let x = (0..<(rows * cols)).map { _ in Float.random(in: -1...1, using: &rng) }
        let a = try withThreadCount(1) { try rotate(x, rows: rows, cols: cols, block: 64) }
        let b = try withThreadCount(4) { try rotate(x, rows: rows, cols: cols, block: 64) }
        assertBitwiseEqual(a, b, "seed \(seed)")
        var buf = x
        try buf.withUnsafeMutableBufferPointer { p in
            try Hadamard.transform(UnsafePointer(p.baseAddress!), rows: rows, cols: cols, block: 64, into: p.baseAddress!)
        }
        assertBitwiseEqual(buf, a, "in place, seed \(seed)")
    }

    func testBadArguments() {
        let x = [Float](repeating: 1, count: 96)
        XCTAssertThrowsError(try rotate(x, rows: 1, cols: 96, block: 24))
        XCTAssertThrowsError(try rotate(x, rows: 1, cols: 96, block: 64))
        XCTAssertThrowsError(try rotate(Array(x.prefix(32)), rows: 1, cols: 32, block: 32, signs: [Float](repeating: 0.5, count: 32)))
        XCTAssertNoThrow(try rotate([], rows: 0, cols: 32, block: 32))
    }
}
