import XCTest
@testable import FP4Core

/// Spec §1: every code of every format decodes to the table value. Expected values are the
/// spec's table written out, or (FP8) the field formula of the spec's bias and widths.
final class FormatTableTests: XCTestCase {

    // MARK: FP4 formats, all 16 codes each

    /// Codes 0..7 are the table; 8..15 the mirror (sign bit then magnitude code).
    private func fullFP4Table(_ mags: [Float]) -> [Float] { mags + mags.map { -$0 } }

    func testE2M1DecodesEveryCodeToTheSpecTable() {
        let expected: [Float] = [0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6]
        let codec = ElementCodec(.e2m1)
        XCTAssertEqual(codec.decodeTable.count, 16)
        assertBitwiseEqual(codec.decodeTable, expected)
        for c in 0..<16 { XCTAssert(sameFloat(codec.decode(UInt8(c)), expected[c]), "code \(c)") }
    }

    func testE1M2DecodesEveryCodeToTheSpecTable() {
        let expected: [Float] = [0, 0.5, 1, 1.5, 2, 2.5, 3, 3.5, -0.0, -0.5, -1, -1.5, -2, -2.5, -3, -3.5]
        let codec = ElementCodec(.e1m2)
        assertBitwiseEqual(codec.decodeTable, expected)
        for c in 0..<16 { XCTAssert(sameFloat(codec.decode(UInt8(c)), expected[c]), "code \(c)") }
    }

    func testE3M0DecodesEveryCodeToTheSpecTable() {
        let expected: [Float] = [0, 0.25, 0.5, 1, 2, 4, 8, 16, -0.0, -0.25, -0.5, -1, -2, -4, -8, -16]
        let codec = ElementCodec(.e3m0)
        assertBitwiseEqual(codec.decodeTable, expected)
        for c in 0..<16 { XCTAssert(sameFloat(codec.decode(UInt8(c)), expected[c]), "code \(c)") }
    }

    /// Code 1000 is −0 and decodes to −0.0 (the sign bit survives), in every FP4 format.
    func testCode1000IsNegativeZero() {
        for f in [MiniFloatFormat.e2m1, .e1m2, .e3m0] {
            let z = ElementCodec(f).decode(0b1000)
            XCTAssertEqual(z, 0, f.name)
            XCTAssertEqual(z.sign, .minus, "\(f.name): code 1000 must decode to -0.0")
            XCTAssertEqual(z.bitPattern, 0x8000_0000, f.name)
            let p = ElementCodec(f).decode(0b0000)
            XCTAssertEqual(p.bitPattern, 0, "\(f.name): code 0000 is +0.0")
        }
    }

    func testFP4MagnitudeOfCodeMatchesTable() {
        for f in [MiniFloatFormat.e2m1, .e1m2, .e3m0] {
            let mags = SpecTable.fp4(f)
            for c in 0..<8 {
                XCTAssertEqual(f.magnitude(ofCode: c), mags[c], "\(f.name) code \(c)")
            }
            XCTAssertEqual(f.magnitudeCodeCount, 8, f.name)
            XCTAssertEqual(f.bits, 4, f.name)
            XCTAssertEqual(f.signBit, 8, f.name)
            XCTAssertTrue(f.isFP4, f.name)
            assertBitwiseEqual(ElementCodec(f).decodeTable, fullFP4Table(mags), f.name)
        }
    }

    /// Magnitude codes ascend with value (numerics.md §1), in every format (NaN/inf codes excluded).
    func testMagnitudeCodesAscend() {
        for f in MiniFloatFormat.all {
            var last = -Float.infinity
            for c in 0...f.maxFiniteMagnitudeCode {
                let m = f.magnitude(ofCode: c)
                XCTAssertGreaterThan(m, last, "\(f.name) code \(c)")
                last = m
            }
        }
    }

    // MARK: Maxima and emax

    func testFormatMaxima() {
        XCTAssertEqual(MiniFloatFormat.e2m1.maxValue, 6)
        XCTAssertEqual(MiniFloatFormat.e1m2.maxValue, 3.5)
        XCTAssertEqual(MiniFloatFormat.e3m0.maxValue, 16)
        XCTAssertEqual(MiniFloatFormat.e4m3.maxValue, 448)
        XCTAssertEqual(MiniFloatFormat.e5m2.maxValue, 57344)
        XCTAssertEqual(MiniFloatFormat.e8m0.maxValue, 0x1p127)
    }

    /// emax = exponent of the largest binade (used by the e8m0 scale rule): e2m1 6 = 1.5·2^2.
    func testMaxExponent() {
        XCTAssertEqual(MiniFloatFormat.e2m1.maxExponent, 2)
        XCTAssertEqual(MiniFloatFormat.e1m2.maxExponent, 1)   // 3.5 = 1.75·2^1
        XCTAssertEqual(MiniFloatFormat.e3m0.maxExponent, 4)   // 16 = 2^4
        XCTAssertEqual(MiniFloatFormat.e4m3.maxExponent, 8)   // 448 = 1.75·2^8
        XCTAssertEqual(MiniFloatFormat.e5m2.maxExponent, 15)  // 57344 = 1.75·2^15
    }

    func testFormatNamesAndABIOrder() {
        XCTAssertEqual(MiniFloatFormat.all.map(\.name), ["e2m1", "e1m2", "e3m0", "e4m3", "e5m2", "e8m0"])
        for f in MiniFloatFormat.all { XCTAssertEqual(MiniFloatFormat.named(f.name), f) }
        XCTAssertNil(MiniFloatFormat.named("e2m2"))
    }

    // MARK: e4m3

    func testE4M3NamedCodes() {
        let c = ElementCodec(.e4m3)
        XCTAssertEqual(c.decodeTable.count, 256)
        XCTAssertEqual(c.decode(0x7E), 448)           // S.1111.110: max
        XCTAssertEqual(c.decode(0xFE), -448)
        XCTAssertTrue(c.decode(0x7F).isNaN)           // S.1111.111: NaN
        XCTAssertTrue(c.decode(0xFF).isNaN)
        XCTAssertEqual(c.decode(0x38), 1)             // E = 7 (bias), m = 0
        XCTAssertEqual(c.decode(0x08), 0x1p-6)        // smallest normal
        XCTAssertEqual(c.decode(0x07), 7 * 0x1p-9)    // largest subnormal
        XCTAssertEqual(c.decode(0x01), 0x1p-9)        // smallest subnormal
        XCTAssertEqual(c.decode(0x80).bitPattern, 0x8000_0000)  // -0
        XCTAssertEqual(c.decode(0x78), 256)
        XCTAssertEqual(MiniFloatFormat.e4m3.magnitude(ofCode: 0x7E), 448)
        XCTAssertTrue(MiniFloatFormat.e4m3.magnitude(ofCode: 0x7F).isNaN)
    }

    /// No inf in e4m3: no code decodes to an infinity, only 0x7F/0xFF are NaN.
    func testE4M3EveryCode() {
        let c = ElementCodec(.e4m3)
        for code in 0..<256 {
            let want = SpecTable.e4m3Value(code)
            let got = c.decode(UInt8(code))
            XCTAssertFalse(got.isInfinite, "e4m3 has no inf (code \(code))")
            if want.isNaN {
                XCTAssertTrue(got.isNaN, "code \(code)")
            } else {
                XCTAssertEqual(Double(got), want, "code 0x\(String(code, radix: 16))")
                XCTAssertEqual(got.sign, code >= 0x80 ? .minus : .plus, "code \(code)")
            }
        }
    }

    // MARK: e5m2

    func testE5M2MaxAndInfinity() {
        let c = ElementCodec(.e5m2)
        XCTAssertEqual(c.decodeTable.count, 256)
        XCTAssertEqual(c.decode(0x7B), 57344)
        XCTAssertEqual(c.decode(0xFB), -57344)
        XCTAssertEqual(c.decode(0x7C), .infinity)
        XCTAssertEqual(c.decode(0xFC), -.infinity)
        XCTAssertEqual(c.decode(0x3C), 1)             // E = 15 (bias), m = 0
        XCTAssertEqual(c.decode(0x01), 0x1p-16)       // smallest subnormal
        XCTAssertEqual(c.decode(0x04), 0x1p-14)       // smallest normal
        XCTAssertEqual(MiniFloatFormat.e5m2.magnitude(ofCode: 0x7C), .infinity)
    }

    /// Spec §1: e5m2 is "IEEE-like: inf and NaN exist". Exponent field 11111 with a
    /// non-zero mantissa (0x7D, 0x7E, 0x7F and their negatives) is NaN, as in IEEE 754
    /// and ml_dtypes.float8_e5m2.
    func testE5M2NaNCodes() {
        let c = ElementCodec(.e5m2)
        for code: UInt8 in [0x7D, 0x7E, 0x7F, 0xFD, 0xFE, 0xFF] {
            XCTAssertTrue(c.decode(code).isNaN, "e5m2 code 0x\(String(code, radix: 16)) is NaN, got \(c.decode(code))")
        }
        for m in 0x7D...0x7F {
            XCTAssertTrue(MiniFloatFormat.e5m2.magnitude(ofCode: m).isNaN,
                          "magnitude(ofCode: 0x\(String(m, radix: 16))) = \(MiniFloatFormat.e5m2.magnitude(ofCode: m))")
        }
    }

    func testE5M2EveryCode() {
        let c = ElementCodec(.e5m2)
        for code in 0..<256 {
            let want = SpecTable.e5m2Value(code)
            let got = c.decode(UInt8(code))
            if want.isNaN {
                XCTAssertTrue(got.isNaN, "code 0x\(String(code, radix: 16)): expected NaN, got \(got)")
            } else {
                XCTAssertEqual(Double(got), want, "code 0x\(String(code, radix: 16))")
            }
        }
    }

    // MARK: e8m0

    /// Scale only: 2^(b − 127) for b = 0..254, 255 is NaN; no sign, no zero.
    func testE8M0EveryCode() {
        let c = ElementCodec(.e8m0)
        XCTAssertEqual(c.decodeTable.count, 256, "no sign half")
        for b in 0..<255 {
            let got = c.decode(UInt8(b))
            XCTAssertEqual(Double(got), Double(sign: .plus, exponent: b - 127, significand: 1), "b = \(b)")
            XCTAssertGreaterThan(got, 0, "e8m0 has no zero (b = \(b))")
            XCTAssertEqual(MiniFloatFormat.e8m0.magnitude(ofCode: b), got, "b = \(b)")
        }
        XCTAssertTrue(c.decode(255).isNaN)
        XCTAssertTrue(MiniFloatFormat.e8m0.magnitude(ofCode: 255).isNaN)
        XCTAssertEqual(c.decode(127), 1)
        XCTAssertEqual(c.decode(0), Float(bitPattern: 0x0040_0000))  // 2^-127, a float32 subnormal
        XCTAssertEqual(c.decode(254), 0x1p127)
        XCTAssertFalse(MiniFloatFormat.e8m0.hasSign)
    }
}
