import XCTest
@testable import FP4Core

/// Spec §1 element rounding: nearest_even and nearest_away ties, saturation, signed zero,
/// through `ElementCodec.encode` and `GridParameters.roundMagnitude`.
final class RoundingTests: XCTestCase {

    /// (input magnitude, expected grid magnitude, expected magnitude code).
    typealias Case = (v: Float, q: Float, code: UInt8)

    /// Checks one case through both entry points and for both signs.
    private func check(_ f: MiniFloatFormat, _ mode: Rounding, _ cases: [Case],
                       file: StaticString = #filePath, line: UInt = #line) {
        let codec = ElementCodec(f)
        let grid = GridParameters(f)
        for (v, q, code) in cases {
            XCTAssertEqual(grid.roundMagnitude(v, mode, 0), q, "\(f.name) \(mode.name) |v| = \(v)", file: file, line: line)
            XCTAssertEqual(codec.encode(v, rounding: mode), code, "\(f.name) \(mode.name) v = \(v)", file: file, line: line)
            XCTAssertEqual(codec.encode(-v, rounding: mode), code | 0b1000,
                           "\(f.name) \(mode.name) v = \(-v)", file: file, line: line)
            XCTAssertEqual(codec.decode(code), q, "\(f.name) decode \(code)", file: file, line: line)
        }
    }

    // MARK: e2m1

    func testE2M1TiesNearestEven() {
        check(.e2m1, .nearestEven, [
            (0.25, 0, 0), (0.75, 1, 2), (1.25, 1, 2), (1.75, 2, 4), (2.5, 2, 4), (3.5, 4, 6), (5, 4, 6),
        ])
    }

    func testE2M1TiesNearestAway() {
        check(.e2m1, .nearestAway, [
            (0.25, 0.5, 1), (0.75, 1, 2), (1.25, 1.5, 3), (1.75, 2, 4), (2.5, 3, 5), (3.5, 4, 6), (5, 6, 7),
        ])
    }

    func testE2M1NonTies() {
        for mode in [Rounding.nearestEven, .nearestAway] {
            check(.e2m1, mode, [
                (0.2, 0, 0), (0.26, 0.5, 1), (0.7, 0.5, 1), (0.8, 1, 2), (2.4, 2, 4), (2.6, 3, 5),
                (3.4, 3, 5), (3.6, 4, 6), (4.9, 4, 6), (5.1, 6, 7), (0x1p-140, 0, 0),
            ])
        }
    }

    func testE2M1Saturation() {
        for mode in [Rounding.nearestEven, .nearestAway, .stochastic] {
            check(.e2m1, mode, [
                (6, 6, 7), (6.5, 6, 7), (7, 6, 7), (100, 6, 7), (1e30, 6, 7), (.greatestFiniteMagnitude, 6, 7),
            ])
        }
    }

    // MARK: e1m2 (uniform grid 0, 0.5, ..., 3.5: ties go to the even code)

    func testE1M2TiesNearestEven() {
        check(.e1m2, .nearestEven, [
            (0.25, 0, 0), (0.75, 1, 2), (1.25, 1, 2), (1.75, 2, 4), (2.25, 2, 4), (2.75, 3, 6), (3.25, 3, 6),
        ])
    }

    func testE1M2TiesNearestAway() {
        check(.e1m2, .nearestAway, [
            (0.25, 0.5, 1), (0.75, 1, 2), (1.25, 1.5, 3), (1.75, 2, 4), (2.25, 2.5, 5), (2.75, 3, 6), (3.25, 3.5, 7),
        ])
    }

    func testE1M2Saturation() {
        for mode in [Rounding.nearestEven, .nearestAway] {
            check(.e1m2, mode, [(3.5, 3.5, 7), (3.75, 3.5, 7), (4, 3.5, 7), (100, 3.5, 7)])
        }
    }

    // MARK: e3m0 (0, 0.25, 0.5, 1, 2, 4, 8, 16: ties go to the even magnitude code)

    func testE3M0TiesNearestEven() {
        check(.e3m0, .nearestEven, [
            (0.125, 0, 0), (0.375, 0.5, 2), (0.75, 0.5, 2), (1.5, 2, 4), (3, 2, 4), (6, 8, 6), (12, 8, 6),
        ])
    }

    func testE3M0TiesNearestAway() {
        check(.e3m0, .nearestAway, [
            (0.125, 0.25, 1), (0.375, 0.5, 2), (0.75, 1, 3), (1.5, 2, 4), (3, 4, 5), (6, 8, 6), (12, 16, 7),
        ])
    }

    func testE3M0NonTiesAndSaturation() {
        for mode in [Rounding.nearestEven, .nearestAway] {
            check(.e3m0, mode, [
                (0.1, 0, 0), (0.2, 0.25, 1), (0.7, 0.5, 2), (0.8, 1, 3), (2.9, 2, 4), (3.1, 4, 5),
                (11.9, 8, 6), (12.1, 16, 7), (16, 16, 7), (20, 16, 7), (1e6, 16, 7),
            ])
        }
    }

    // MARK: Every grid value, every midpoint, for all FP4 formats

    /// Every table value encodes to its own code (both signs) and round-trips.
    func testEveryFP4GridValueEncodesToItsCode() {
        for f in [MiniFloatFormat.e2m1, .e1m2, .e3m0] {
            let codec = ElementCodec(f)
            for mode in [Rounding.nearestEven, .nearestAway, .stochastic] {
                for (c, m) in SpecTable.fp4(f).enumerated() {
                    for u: Float in [0, 0.5, 0.99999994] {
                        XCTAssertEqual(codec.encode(m, rounding: mode, uniform: u), UInt8(c), "\(f.name) \(mode.name) \(m)")
                        XCTAssertEqual(codec.encode(-m, rounding: mode, uniform: u), UInt8(c) | 8, "\(f.name) \(mode.name) \(-m)")
                    }
                }
            }
        }
    }

    /// Every midpoint of every FP4 table: exact tie to the even code (nearest_even) or the
    /// upper neighbour (nearest_away); one ulp either side goes to the nearer value.
    func testEveryFP4MidpointAndItsNeighbours() {
        for f in [MiniFloatFormat.e2m1, .e1m2, .e3m0] {
            let t = SpecTable.fp4(f)
            let codec = ElementCodec(f)
            for i in 0..<(t.count - 1) {
                let mid = (t[i] + t[i + 1]) / 2  // exact: small dyadic values
                let even = UInt8(i % 2 == 0 ? i : i + 1)
                XCTAssertEqual(codec.encode(mid, rounding: .nearestEven), even, "\(f.name) tie \(mid)")
                XCTAssertEqual(codec.encode(mid, rounding: .nearestAway), UInt8(i + 1), "\(f.name) tie \(mid)")
                for mode in [Rounding.nearestEven, .nearestAway] {
                    XCTAssertEqual(codec.encode(mid.nextDown, rounding: mode), UInt8(i), "\(f.name) below \(mid)")
                    XCTAssertEqual(codec.encode(mid.nextUp, rounding: mode), UInt8(i + 1), "\(f.name) above \(mid)")
                    XCTAssertEqual(codec.encode(-mid.nextUp, rounding: mode), UInt8(i + 1) | 8, "\(f.name) below \(-mid)")
                }
            }
        }
    }

    /// nearest_away is "nearest grid value; ties away": a value one ulp below the first
    /// midpoint (between 0 and the smallest non-zero magnitude) is nearer to 0 and must
    /// round to 0 in every mode-agnostic entry point (encode, roundMagnitude, fakeQuantize).
    func testNearestAwayJustBelowTheFirstMidpoint() throws {
        let cases: [(MiniFloatFormat, Float)] = [(.e2m1, 0.25), (.e1m2, 0.25), (.e3m0, 0.125), (.e4m3, 0x1p-10)]
        for (f, mid) in cases {
            let v = mid.nextDown
            XCTAssertEqual(GridParameters(f).roundMagnitude(v, .nearestAway, 0), 0, "\(f.name): |v| = \(v) is nearer 0")
            XCTAssertEqual(ElementCodec(f).encode(v, rounding: .nearestAway), 0, "\(f.name): \(v) -> code 0")
            XCTAssertEqual(ElementCodec(f).encode(-v, rounding: .nearestAway), UInt8(f.signBit), "\(f.name): \(-v) -> -0")
        }
        // Through the quantizer: pow2 with amax 6 gives s = 1, so v = x.
        let q = Quantizer(format: .e2m1, granularity: .tensor, scaleRule: .pow2, rounding: .nearestAway)
        let out = try q.fakeQuantize([6, Float(0.25).nextDown, Float(0.25), Float(0.75).nextDown], rows: 1, cols: 4).out
        assertBitwiseEqual(out, [6, 0, 0.5, 0.5])
    }

    /// Random values against an exhaustive nearest search over the spec table.
    func testFP4RandomValuesMatchReferenceSearch() {
        var (rng, seed) = TestRNG.fresh()
        for f in [MiniFloatFormat.e2m1, .e1m2, .e3m0] {
            let table = SpecTable.fp4(f).map(Double.init)
            let codec = ElementCodec(f)
            let top = Float(table.last!) * 1.25
            for _ in 0..<5000 {
                // Half the draws on the 1/16 lattice, which holds every tie of the three tables.
                let v: Float = Bool.random(using: &rng)
                    ? Float(Int.random(in: -Int(top * 16)...Int(top * 16), using: &rng)) / 16
                    : Float.random(in: -top...top, using: &rng)
                for mode in [Rounding.nearestEven, .nearestAway] {
                    let want = UInt8(referenceMagnitudeCode(Double(abs(v)), table: table, mode: mode))
                        | (v.sign == .minus ? 8 : 0)
                    XCTAssertEqual(codec.encode(v, rounding: mode), want, "\(f.name) \(mode.name) v = \(v), seed \(seed)")
                }
            }
        }
    }

    // MARK: Signed zero and non-finite FP4 input

    func testSignedZeroIsKeptInCodes() {
        let e2m1 = ElementCodec(.e2m1)
        XCTAssertEqual(e2m1.encode(-0.1), 0b1000, "spec: -0.1 in e2m1 encodes as 1000")
        XCTAssertEqual(e2m1.encode(-0.0), 0b1000)
        XCTAssertEqual(e2m1.encode(-0.25), 0b1000)    // tie to the even code 0, sign kept
        XCTAssertEqual(e2m1.encode(-0x1p-149), 0b1000)
        XCTAssertEqual(e2m1.encode(0.0), 0)
        XCTAssertEqual(e2m1.encode(0.1), 0)
        XCTAssertEqual(ElementCodec(.e1m2).encode(-0.1), 0b1000)
        XCTAssertEqual(ElementCodec(.e3m0).encode(-0.1), 0b1000)
        XCTAssertEqual(ElementCodec(.e4m3).encode(-0.0), 0x80)
        XCTAssertEqual(ElementCodec(.e4m3).encode(-0x1p-11), 0x80)
        XCTAssertEqual(ElementCodec(.e5m2).encode(-0.0), 0x80)
        // And the decoded value of a negative value that rounds to zero is -0.0.
        XCTAssertEqual(e2m1.decode(e2m1.encode(-0.1)!).sign, .minus)
    }

    /// FP4 has no NaN or inf: encode reports failure (nil) so the caller can raise.
    func testFP4CannotEncodeNonFinite() {
        for f in [MiniFloatFormat.e2m1, .e1m2, .e3m0] {
            let codec = ElementCodec(f)
            XCTAssertNil(codec.encode(.nan), f.name)
            XCTAssertNil(codec.encode(.infinity), f.name)
            XCTAssertNil(codec.encode(-.infinity), f.name)
        }
    }

    // MARK: FP8

    func testE4M3RoundingAndSaturation() {
        let c = ElementCodec(.e4m3)
        XCTAssertEqual(c.encode(448), 0x7E)
        XCTAssertEqual(c.encode(449), 0x7E)
        XCTAssertEqual(c.encode(464), 0x7E)     // would round to 480 without saturation
        XCTAssertEqual(c.encode(500), 0x7E)
        XCTAssertEqual(c.encode(1e6), 0x7E)
        XCTAssertEqual(c.encode(.greatestFiniteMagnitude), 0x7E)
        XCTAssertEqual(c.encode(-500), 0xFE)
        XCTAssertEqual(c.encode(500, rounding: .nearestAway), 0x7E)
        XCTAssertEqual(c.encode(1), 0x38)
        XCTAssertEqual(c.encode(1.0625), 0x38)  // tie between 1 (m = 0) and 1.125 (m = 1): even
        XCTAssertEqual(c.encode(1.1875), 0x3A)  // tie between 1.125 (m = 1) and 1.25 (m = 2): even
        XCTAssertEqual(c.encode(1.0625, rounding: .nearestAway), 0x39)
        XCTAssertEqual(c.encode(0x1p-9), 0x01)  // smallest subnormal
        XCTAssertEqual(c.encode(0x1p-10), 0x00) // half of it: tie to even (0)
        XCTAssertEqual(c.encode(0x1p-10, rounding: .nearestAway), 0x01)
        XCTAssertEqual(c.encode(3 * 0x1p-10), 0x02)  // tie between codes 1 and 2: even
        XCTAssertEqual(c.encode(72), 0x69)
        XCTAssertEqual(c.encode(74.666664), 0x69)    // 448/6 -> 72
        let nan = c.encode(.nan)
        XCTAssertNotNil(nan)
        if let n = nan { XCTAssertEqual(n & 0x7F, 0x7F, "e4m3 NaN is S.1111.111") }
    }

    func testE5M2RoundingAndOverflowToInfinity() {
        let c = ElementCodec(.e5m2)
        XCTAssertEqual(c.encode(57344), 0x7B)
        XCTAssertEqual(c.encode(60000), 0x7B)
        XCTAssertEqual(c.encode(61439), 0x7B)
        XCTAssertEqual(c.encode(61440), 0x7C)   // midpoint to 2^16: ties to even -> inf (IEEE, ml_dtypes)
        XCTAssertEqual(c.encode(1e6), 0x7C)
        XCTAssertEqual(c.encode(.infinity), 0x7C)
        XCTAssertEqual(c.encode(-.infinity), 0xFC)
        XCTAssertEqual(c.encode(-1e6), 0xFC)
        XCTAssertEqual(c.encode(1), 0x3C)
        XCTAssertEqual(c.encode(1.125), 0x3C)   // tie between 1 and 1.25: even
        XCTAssertEqual(c.encode(1.375), 0x3E)   // tie between 1.25 and 1.5: even
        XCTAssertEqual(c.encode(0x1p-17), 0x00) // half the smallest subnormal: tie to 0
    }

    /// Spec §1: e5m2 has NaN ("inf and NaN exist"), so a NaN input encodes to a NaN code
    /// (ml_dtypes.float8_e5m2 gives 0x7E).
    func testE5M2EncodesNaN() {
        let c = ElementCodec(.e5m2)
        let code = c.encode(.nan)
        XCTAssertNotNil(code, "e5m2 has NaN codes; encode(.nan) must not fail")
        if let code {
            XCTAssertTrue((0x7D...0x7F).contains(code & 0x7F), "got 0x\(String(code, radix: 16)), not a NaN code")
        }
    }

    /// Random values against an exhaustive nearest search over the FP8 value tables built
    /// from the spec's field layout.
    func testFP8RandomValuesMatchReferenceSearch() {
        var (rng, seed) = TestRNG.fresh()
        // e4m3: finite magnitudes, codes 0..0x7E; saturates.
        let e4 = (0...0x7E).map { SpecTable.e4m3Value($0) }
        // e5m2: finite magnitudes 0..0x7B, plus 2^16 standing for the inf code 0x7C, as IEEE
        // rounds (anything at or above the midpoint 61440 goes to inf).
        let e5 = (0...0x7B).map { SpecTable.e5m2Value($0) } + [65536]
        for (f, table) in [(MiniFloatFormat.e4m3, e4), (.e5m2, e5)] {
            let codec = ElementCodec(f)
            for _ in 0..<4000 {
                let e = Int.random(in: -20...17, using: &rng)
                var v = Float(sign: Bool.random(using: &rng) ? .minus : .plus, exponent: e,
                              significand: Float.random(in: 1..<2, using: &rng))
                if Int.random(in: 0..<4, using: &rng) == 0 {
                    // A midpoint of two neighbouring grid values (exact in float32).
                    let i = Int.random(in: 0..<(table.count - 1), using: &rng)
                    v = Float((table[i] + table[i + 1]) / 2)
                }
                for mode in [Rounding.nearestEven, .nearestAway] {
                    var m = referenceMagnitudeCode(Double(abs(v)), table: table, mode: mode)
                    if f == .e5m2 && Double(abs(v)) > 65536 { m = 0x7C }
                    let want = UInt8(m) | (v.sign == .minus ? 0x80 : 0)
                    XCTAssertEqual(codec.encode(v, rounding: mode), want, "\(f.name) \(mode.name) v = \(v), seed \(seed)")
                }
            }
        }
    }
}
