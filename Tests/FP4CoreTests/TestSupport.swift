import XCTest
@testable import FP4Core

// Shared helpers for the FP4Core tests. Nothing here calls the code under test to produce
// an expected value: the reference tables and the reference rounding below are written
// from numerics.md §1 directly.

// MARK: - Spec §1 tables, written out by hand

/// Magnitudes of codes 0..7 of the three FP4 formats (numerics.md §1 table).
enum SpecTable {
    static let e2m1: [Float] = [0, 0.5, 1, 1.5, 2, 3, 4, 6]
    static let e1m2: [Float] = [0, 0.5, 1, 1.5, 2, 2.5, 3, 3.5]
    static let e3m0: [Float] = [0, 0.25, 0.5, 1, 2, 4, 8, 16]

    static func fp4(_ f: MiniFloatFormat) -> [Float] {
        switch f.name {
        case "e2m1": return e2m1
        case "e1m2": return e1m2
        case "e3m0": return e3m0
        default: fatalError("not an FP4 format: \(f.name)")
        }
    }

    /// e4m3 (OCP "fn"): bias 7, 3 mantissa bits, subnormals m/8 · 2^-6, S.1111.111 is NaN.
    static func e4m3Value(_ code: Int) -> Double {
        let sign: Double = code & 0x80 != 0 ? -1 : 1
        let e = (code >> 3) & 0xF, m = code & 7
        if e == 15 && m == 7 { return .nan }
        if e == 0 { return sign * Double(m) / 8 * Double(sign: .plus, exponent: -6, significand: 1) }
        return sign * (1 + Double(m) / 8) * Double(sign: .plus, exponent: e - 7, significand: 1)
    }

    /// e5m2 (IEEE-like): bias 15, 2 mantissa bits, exponent field 31 is inf (m = 0) or NaN.
    static func e5m2Value(_ code: Int) -> Double {
        let sign: Double = code & 0x80 != 0 ? -1 : 1
        let e = (code >> 2) & 0x1F, m = code & 3
        if e == 31 { return m == 0 ? sign * .infinity : .nan }
        if e == 0 { return sign * Double(m) / 4 * Double(sign: .plus, exponent: -14, significand: 1) }
        return sign * (1 + Double(m) / 4) * Double(sign: .plus, exponent: e - 15, significand: 1)
    }
}

/// Reference element rounding by exhaustive search over an ascending magnitude table
/// (index = magnitude code). Exact in Double: every float32 input, grid value and midpoint
/// is representable. Values above the last entry saturate to it. Returns the magnitude code.
func referenceMagnitudeCode(_ a: Double, table: [Double], mode: Rounding) -> Int {
    precondition(a >= 0)
    if a >= table[table.count - 1] { return table.count - 1 }
    var i = 0
    while !(table[i] <= a && a < table[i + 1]) { i += 1 }
    let dLo = a - table[i], dHi = table[i + 1] - a
    if dLo < dHi { return i }
    if dHi < dLo { return i + 1 }
    switch mode {
    case .nearestEven: return i % 2 == 0 ? i : i + 1
    case .nearestAway: return i + 1
    case .stochastic: fatalError("not a deterministic mode")
    }
}

// MARK: - Random inputs

/// A small seeded generator (SplitMix64) so a failing random test can be replayed from the
/// seed printed in its message. Every run draws a fresh seed.
struct TestRNG: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    static func fresh() -> (TestRNG, UInt64) {
        let s = UInt64.random(in: 0...UInt64.max)
        return (TestRNG(seed: s), s)
    }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

// MARK: - Array wrappers around the pointer API

extension Quantizer {
    /// fakeQuantize on an array; returns the output and the count of non-finite groups.
    func fakeQuantize(_ x: [Float], rows: Int, cols: Int,
                      nonFinite policy: NonFinitePolicy = .propagate) throws -> (out: [Float], bad: Int) {
        precondition(x.count == rows * cols)
        let input = x.isEmpty ? [Float(0)] : x
        var out = [Float](repeating: 0x1.234p5, count: Swift.max(x.count, 1))
        let bad = try input.withUnsafeBufferPointer { xp in
            try out.withUnsafeMutableBufferPointer { op in
                try fakeQuantize(xp.baseAddress!, rows: rows, cols: cols, into: op.baseAddress!, nonFinite: policy)
            }
        }
        return (Array(out.prefix(x.count)), bad)
    }

    /// quantize on an array; returns the packed codes and the scales.
    func quantize(_ x: [Float], rows: Int, cols: Int) throws -> (codes: [UInt8], scales: TensorScales) {
        precondition(x.count == rows * cols)
        let input = x.isEmpty ? [Float(0)] : x
        // 0xAA in every byte, so a byte the kernel forgets to write shows up.
        var codes = [UInt8](repeating: 0xAA, count: Swift.max(codeBytes(count: x.count), 1))
        let ts = try input.withUnsafeBufferPointer { xp in
            try codes.withUnsafeMutableBufferPointer { cp in
                try quantize(xp.baseAddress!, rows: rows, cols: cols, codes: cp.baseAddress!)
            }
        }
        return (Array(codes.prefix(codeBytes(count: x.count))), ts)
    }

    /// dequantize on arrays, with the float scales taken from a TensorScales.
    func dequantize(_ codes: [UInt8], rows: Int, cols: Int, scales ts: TensorScales) throws -> [Float] {
        let c = codes.isEmpty ? [UInt8(0)] : codes
        let s = ts.groups.isEmpty ? [Float(1)] : ts.groups.map(\.scale)
        var out = [Float](repeating: 0x1.234p5, count: Swift.max(rows * cols, 1))
        try c.withUnsafeBufferPointer { cp in
            try s.withUnsafeBufferPointer { sp in
                try out.withUnsafeMutableBufferPointer { op in
                    try dequantize(codes: cp.baseAddress!, rows: rows, cols: cols, scales: sp.baseAddress!,
                                   tensorScale: ts.tensorScale, into: op.baseAddress!)
                }
            }
        }
        return Array(out.prefix(rows * cols))
    }
}

/// Unpacks FP4 codes written by the test itself (element 2i low nibble), independent of
/// the core's unpackNibbles.
func unpackByHand(_ packed: [UInt8], count: Int) -> [UInt8] {
    (0..<count).map { i in i % 2 == 0 ? packed[i / 2] & 0x0F : packed[i / 2] >> 4 }
}

/// Runs `body` with `Parallel.threadCount` set to n, restoring it afterwards.
func withThreadCount<T>(_ n: Int, _ body: () throws -> T) rethrows -> T {
    let saved = Parallel.threadCount
    Parallel.threadCount = n
    defer { Parallel.threadCount = saved }
    return try body()
}

// MARK: - Assertions

/// Same float, bit for bit (so −0 ≠ +0); any NaN equals any NaN.
func sameFloat(_ a: Float, _ b: Float) -> Bool {
    (a.isNaN && b.isNaN) || a.bitPattern == b.bitPattern
}

/// Asserts two float arrays are bitwise equal (NaN matches NaN), naming the first mismatch.
func assertBitwiseEqual(_ actual: [Float], _ expected: [Float], _ message: @autoclosure () -> String = "",
                        file: StaticString = #filePath, line: UInt = #line) {
    guard actual.count == expected.count else {
        XCTFail("count \(actual.count) != expected \(expected.count). \(message())", file: file, line: line)
        return
    }
    var mismatches = 0
    var first = -1
    for i in 0..<actual.count where !sameFloat(actual[i], expected[i]) {
        if first < 0 { first = i }
        mismatches += 1
    }
    if first >= 0 {
        XCTFail("\(mismatches) mismatches; first at index \(first): got \(actual[first]) "
                + "(bits 0x\(String(actual[first].bitPattern, radix: 16))), expected \(expected[first]) "
                + "(bits 0x\(String(expected[first].bitPattern, radix: 16))). \(message())", file: file, line: line)
    }
}

/// Asserts a thrown error is an FP4Error of the given kind; returns it for further checks.
@discardableResult
func assertThrowsFP4Error<T>(_ kind: FP4Error.Kind, _ expression: @autoclosure () throws -> T,
                             _ message: String = "", file: StaticString = #filePath, line: UInt = #line) -> FP4Error? {
    var caught: FP4Error?
    XCTAssertThrowsError(try expression(), message, file: file, line: line) { error in
        guard let e = error as? FP4Error else {
            XCTFail("expected FP4Error, got \(type(of: error)): \(error). \(message)", file: file, line: line)
            return
        }
        XCTAssertEqual(e.kind, kind, "wrong kind; message: \(e.message). \(message)", file: file, line: line)
        XCTAssertFalse(e.message.isEmpty, "error message is empty. \(message)", file: file, line: line)
        caught = e
    }
    return caught
}
