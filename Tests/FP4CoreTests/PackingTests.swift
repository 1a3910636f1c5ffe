import XCTest
@testable import FP4Core

/// Spec §1 packing (two FP4 codes per byte, element 2i in the low nibble, an odd count pads
/// the last high nibble with 0) and the quantize → dequantize round trip.
final class PackingTests: XCTestCase {

    func testNibbleOrderAndOddPadding() throws {
        // pow2, amax 6 -> s = 1. Codes: 1 -> 0010, -2 -> 1100, 6 -> 0111, 0.5 -> 0001, -0 -> 1000.
        let q = Quantizer(format: .e2m1, granularity: .tensor, scaleRule: .pow2)
        let (codes, _) = try q.quantize([1, -2, 6, 0.5, -0.0], rows: 1, cols: 5)
        XCTAssertEqual(q.codeBytes(count: 5), 3)
        XCTAssertEqual(codes, [0xC2, 0x17, 0x08])
    }

    /// Packing runs over the flat index, across row ends (odd cols).
    func testPackingAcrossRowsWithOddColumns() throws {
        let x: [Float] = [6, 4, 3, 2, 1.5, 1, 0.5, 0, -6]
        // Tensor, s = 1: codes 7 6 5 4 3 2 1 0 F.
        let qt = Quantizer(format: .e2m1, granularity: .tensor, scaleRule: .pow2)
        XCTAssertEqual(try qt.quantize(x, rows: 3, cols: 3).codes, [0x67, 0x45, 0x23, 0x01, 0x0F])
        // Row: s = 1, 0.5 (amax 2), 1: codes 7 6 5 | 6 5 4 | 1 0 F.
        let qr = Quantizer(format: .e2m1, granularity: .row, scaleRule: .pow2)
        XCTAssertEqual(try qr.quantize(x, rows: 3, cols: 3).codes, [0x67, 0x65, 0x45, 0x01, 0x0F])
    }

    func testPackAndUnpackHelpers() {
        let codes: [UInt8] = [1, 2, 3, 4, 5]
        var packed = [UInt8](repeating: 0xEE, count: 3)
        packNibbles(codes, count: 5, into: &packed)
        XCTAssertEqual(packed, [0x21, 0x43, 0x05])
        var back = [UInt8](repeating: 0xEE, count: 5)
        unpackNibbles(packed, count: 5, into: &back)
        XCTAssertEqual(back, codes)
        // Only the low nibble of each input code is used.
        var p2 = [UInt8](repeating: 0, count: 1)
        packNibbles([0xF3, 0xA9], count: 2, into: &p2)
        XCTAssertEqual(p2, [0x93])
    }

    /// Random grid values with known codes; many rows, odd cols, several threads: every
    /// byte equals the hand-packed expectation (chunks never share a byte).
    func testPackedCodesMatchHandPackingAcrossThreads() throws {
        var (rng, seed) = TestRNG.fresh()
        let rows = 48_016, cols = 3   // with 4 threads the row grain is odd (3001): packing must still be byte-aligned
        let mags = SpecTable.e2m1
        var codes = (0..<(rows * cols)).map { _ in UInt8.random(in: 0...15, using: &rng) }
        codes[0] = 7  // amax 6 -> s = 1 for tensor pow2
        let x = codes.map { c -> Float in c >= 8 ? -mags[Int(c) - 8] : mags[Int(c)] }
        var want = [UInt8](repeating: 0, count: (codes.count + 1) / 2)
        for i in 0..<codes.count { want[i / 2] |= i % 2 == 0 ? codes[i] : codes[i] << 4 }
        let q = Quantizer(format: .e2m1, granularity: .tensor, scaleRule: .pow2)
        for threads in [1, 2, 4] {
            let got = try withThreadCount(threads) { try q.quantize(x, rows: rows, cols: cols).codes }
            XCTAssertEqual(got.count, want.count)
            if let i = (0..<want.count).first(where: { got[$0] != want[$0] }) {
                XCTFail("threads \(threads): byte \(i) is 0x\(String(got[i], radix: 16)), want 0x\(String(want[i], radix: 16)) (seed \(seed))")
            }
            XCTAssertEqual(unpackByHand(got, count: codes.count), codes, "threads \(threads), seed \(seed)")
        }
    }

    /// quantize + dequantize equals fakeQuantize, bit for bit, for every rule, granularity,
    /// rounding and element format.
    func testQuantizeDequantizeRoundTripEqualsFakeQuantize() throws {
        var (rng, seed) = TestRNG.fresh()
        let rows = 32, cols = 48
        var x = (0..<(rows * cols)).map { _ in Float.random(in: -3...3, using: &rng) * Float(Int.random(in: 1...4, using: &rng)) }
        for i in 0..<16 { x[i] = 0 }                        // an all-zero block(16) in row 0
        x[cols + 3] = -0.0
        x[5 * cols + 7] = 1e-9                                  // tiny value far below the rest
        let grans: [Granularity] = [.tensor, .row, .column, .block(16), .block2d(16)]
        let formats: [MiniFloatFormat] = [.e2m1, .e1m2, .e3m0, .e4m3, .e5m2]
        for f in formats {
            for rule in ScaleRule.allCases where !(rule.isTwoLevel && f != .e2m1) && !(rule == .quest && f == .e5m2) {
                for g in grans {
                    for r in Rounding.allCases {
                        let q = Quantizer(format: f, granularity: g, scaleRule: rule, rounding: r, seed: 7)
                        let label = "\(f.name) \(rule.name) \(g.name) \(r.name), seed \(seed)"
                        let fake = try q.fakeQuantize(x, rows: rows, cols: cols).out
                        let (codes, ts) = try q.quantize(x, rows: rows, cols: cols)
                        XCTAssertEqual(codes.count, f.isFP4 ? rows * cols / 2 : rows * cols, label)
                        let back = try q.dequantize(codes, rows: rows, cols: cols, scales: ts)
                        assertBitwiseEqual(back, fake, label)
                    }
                }
            }
        }
    }

    /// e8m0 and nvfp4 store one byte per scale; the bytes decode to the float scales.
    func testStoredScaleBytes() throws {
        var x = [Float](repeating: 0, count: 64)
        for i in 0..<32 { x[i] = Float(i % 7) - 3 }   // amax 3: e8m0 s = 2^(1-2) = 0.5, byte 126
        for i in 32..<64 { x[i] = Float(i % 5) * 2 }  // amax 8: e8m0 s = 2^(3-2) = 2, byte 128
        let qe = Quantizer(format: .e2m1, granularity: .block(32), scaleRule: .e8m0)
        let te = try qe.quantize(x, rows: 1, cols: 64).scales
        XCTAssertEqual(te.groups.map(\.byte), [126, 128])
        XCTAssertEqual(te.groups.map(\.scale), [0.5, 2])
        let qn = Quantizer(format: .e2m1, granularity: .block(16), scaleRule: .nvfp4)
        let tn = try qn.quantize(x, rows: 1, cols: 64).scales
        // Tensor amax 8 -> S = 2688/8 = 336. Blocks 0, 1: amax 3 -> 3·336/6 = 168, an exact tie between
        // e4m3 160 (1.25·2^7, m = 2, code 0x72) and 176 (m = 3): RNE -> 160. Blocks 2, 3: amax 8 -> 448 (0x7E).
        XCTAssertEqual(tn.tensorScale, 336)
        XCTAssertEqual(tn.groups.map(\.byte), [0x72, 0x72, 0x7E, 0x7E])
        XCTAssertEqual(tn.groups.map(\.scale), [160, 160, 448, 448])
    }
}
