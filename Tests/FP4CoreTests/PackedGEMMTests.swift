import XCTest
@testable import FP4Core

/// The packed GEMM (numerics.md §11) against a Double product of the dequantized operands,
/// on every path this CPU runs; paths must agree bit for bit.
final class PackedGEMMTests: XCTestCase {
    struct Quantized {
        var codes: [UInt8]
        var scales: [Float]
        var tensorScale: Float
        var dequantized: [Float]
        let rows: Int, cols: Int, q: Quantizer
    }

    func quantized(_ x: [Float], rows: Int, cols: Int, _ q: Quantizer) throws -> Quantized {
        var codes = [UInt8](repeating: 0, count: (rows * cols + 1) / 2)
        var deq = [Float](repeating: 0, count: rows * cols)
        let ts = try x.withUnsafeBufferPointer { xp in
            try codes.withUnsafeMutableBufferPointer { cp in
                try deq.withUnsafeMutableBufferPointer { dp in
                    try q.quantize(xp.baseAddress!, rows: rows, cols: cols, codes: cp.baseAddress!, dequantized: dp.baseAddress!)
                }
            }
        }
        return Quantized(codes: codes, scales: ts.groups.map(\.scale), tensorScale: ts.tensorScale,
                         dequantized: deq, rows: rows, cols: cols, q: q)
    }

    func multiply(_ a: Quantized, _ b: Quantized, path: GEMMPath) throws -> [Float] {
        var c = [Float](repeating: .nan, count: a.rows * b.rows)
        try a.codes.withUnsafeBufferPointer { ac in
            try b.codes.withUnsafeBufferPointer { bc in
                try a.scales.withUnsafeBufferPointer { asc in
                    try b.scales.withUnsafeBufferPointer { bsc in
                        try c.withUnsafeMutableBufferPointer { cp in
                            let A = GEMMOperand(codes: ac.baseAddress!, rows: a.rows, cols: a.cols, format: a.q.format,
                                                granularity: a.q.granularity, scales: asc.baseAddress!, tensorScale: a.tensorScale)
                            let B = GEMMOperand(codes: bc.baseAddress!, rows: b.rows, cols: b.cols, format: b.q.format,
                                                granularity: b.q.granularity, scales: bsc.baseAddress!, tensorScale: b.tensorScale)
                            try PackedGEMM.multiply(A, B, into: cp.baseAddress!, path: path)
                        }
                    }
                }
            }
        }
        return c
    }

    /// |C − C64| ≤ (G + 5)·2⁻²⁴·Σ|â·b̂| (+ a subnormal-sized slack).
    func checkBound(_ c: [Float], _ a: Quantized, _ b: Quantized, groups G: Int, file: StaticString = #filePath, line: UInt = #line) {
        let K = a.cols
        for i in 0..<a.rows {
            for j in 0..<b.rows {
                var ref = 0.0, mag = 0.0
                for k in 0..<K {
                    let p = Double(a.dequantized[i * K + k]) * Double(b.dequantized[j * K + k])
                    ref += p
                    mag += abs(p)
                }
                let bound = Double(G + 5) * 0x1p-24 * mag + 1e-44
                XCTAssertLessThanOrEqual(abs(Double(c[i * b.rows + j]) - ref), bound, "C[\(i), \(j)]", file: file, line: line)
            }
        }
    }

    /// Uniform values in (−1, 1) with 5% outliers ×20: a spread of scales and codes.
    func randomMatrix(_ rows: Int, _ cols: Int, seed: UInt64) -> [Float] {
        var rng = TestRNG(seed: seed)
        return (0..<(rows * cols)).map { _ in
            Float.random(in: -1..<1, using: &rng) * (Float.random(in: 0..<1, using: &rng) < 0.05 ? 20 : 1)
        }
    }

    let supported = GEMMPath.allCases.filter(\.isSupported)

    func testLayoutsFormatsAndPathsAgree() throws {
        let cases: [(MiniFloatFormat, Granularity, ScaleRule, Int, Int, Int, Int)] = [
            // format, granularity, rule, M, N, K, groups along K
            (.e2m1, .row, .absmax, 7, 19, 37, 1),
            (.e1m2, .tensor, .pow2, 5, 3, 64, 1),
            (.e3m0, .row, .absmax, 9, 33, 40, 1),
            (.e2m1, .block(32), .e8m0, 13, 17, 96, 3),
            (.e2m1, .block(16), .nvfp4, 6, 35, 64, 4),
            (.e2m1, .block(32), .absmaxDiv3, 3, 40, 64, 2),
        ]
        for (n, (f, g, rule, M, N, K, G)) in cases.enumerated() {
            let q = Quantizer(format: f, granularity: g, scaleRule: rule)
            let a = try quantized(randomMatrix(M, K, seed: UInt64(2 * n)), rows: M, cols: K, q)
            let b = try quantized(randomMatrix(N, K, seed: UInt64(2 * n + 1)), rows: N, cols: K, q)
            let reference = try multiply(a, b, path: .generic)
            checkBound(reference, a, b, groups: G)
            for p in supported {
                let c = try multiply(a, b, path: p)
                XCTAssertEqual(c.map(\.bitPattern), reference.map(\.bitPattern), "\(p.name) differs from generic, case \(n)")
            }
        }
    }

    func testIntegerGrids() {
        XCTAssertEqual(IntegerGrid(.e2m1).values[0..<8].map { Int($0) }, [0, 1, 2, 3, 4, 6, 8, 12])
        XCTAssertEqual(IntegerGrid(.e2m1).values[8..<16].map { Int($0) }, [0, -1, -2, -3, -4, -6, -8, -12])
        XCTAssertEqual(IntegerGrid(.e1m2).values[0..<8].map { Int($0) }, [0, 1, 2, 3, 4, 5, 6, 7])
        XCTAssertEqual(IntegerGrid(.e3m0).values[0..<8].map { Int($0) }, [0, 1, 2, 4, 8, 16, 32, 64])
        XCTAssertEqual(IntegerGrid(.e2m1).stepExponent, -1)
        XCTAssertEqual(IntegerGrid(.e3m0).stepExponent, -2)
    }

    func testBadOperandsThrow() throws {
        let x = randomMatrix(4, 32, seed: 9)
        let a = try quantized(x, rows: 4, cols: 32, Quantizer())
        var b = try quantized(randomMatrix(4, 16, seed: 8), rows: 4, cols: 16, Quantizer())
        XCTAssertThrowsError(try multiply(a, b, path: .generic))  // K differs
        b = try quantized(randomMatrix(4, 32, seed: 8), rows: 4, cols: 32, Quantizer(granularity: .column))
        XCTAssertThrowsError(try multiply(a, b, path: .generic))  // column scales
        let b48 = try quantized(randomMatrix(2, 96, seed: 1), rows: 2, cols: 96, Quantizer(granularity: .block(48)))
        let b32 = try quantized(randomMatrix(2, 96, seed: 2), rows: 2, cols: 96, Quantizer(granularity: .block(32)))
        XCTAssertThrowsError(try multiply(b48, b32, path: .generic))  // groups do not nest
        XCTAssertThrowsError(try PackedGEMM.checkGroupLength(1 << 24, IntegerGrid(.e3m0), IntegerGrid(.e3m0)))
        XCTAssertNoThrow(try PackedGEMM.checkGroupLength(65536, IntegerGrid(.e3m0), IntegerGrid(.e3m0)))
    }
}
