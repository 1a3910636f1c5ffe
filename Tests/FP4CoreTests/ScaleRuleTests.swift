import XCTest
@testable import FP4Core

/// Spec §2 scale rules on hand-computed group maxima, through `ScaleRule.groupScale` and
/// `ScaleRule.tensorScale`.
final class ScaleRuleTests: XCTestCase {

    private func scale(_ rule: ScaleRule, _ amax: Float, _ f: MiniFloatFormat = .e2m1, S: Float = 1) -> GroupScale {
        rule.groupScale(amax: amax, format: f, tensorScale: S)
    }

    // MARK: absmax: s = amax / fmax

    func testAbsmax() {
        XCTAssertEqual(scale(.absmax, 6).scale, 1)
        XCTAssertEqual(scale(.absmax, 3).scale, 0.5)
        XCTAssertEqual(scale(.absmax, 12).scale, 2)
        XCTAssertEqual(scale(.absmax, 9).scale, 1.5)
        XCTAssertEqual(scale(.absmax, 7).scale, Float(7) / Float(6))  // correctly rounded float32 division
        XCTAssertEqual(scale(.absmax, 7, .e1m2).scale, 2)              // fmax 3.5
        XCTAssertEqual(scale(.absmax, 4, .e3m0).scale, 0.25)           // fmax 16
        XCTAssertEqual(scale(.absmax, 448, .e4m3).scale, 1)
        XCTAssertFalse(scale(.absmax, 7).isZero)
        XCTAssertEqual(scale(.absmax, 7).tensorScale, 1)
    }

    // MARK: pow2: smallest power of two with amax / s <= fmax

    func testPow2() {
        XCTAssertEqual(scale(.pow2, 7).scale, 2)        // 7/6 = 1.17 -> 2^1
        XCTAssertEqual(scale(.pow2, 6).scale, 1)        // exactly fmax: no bump
        XCTAssertEqual(scale(.pow2, Float(6).nextUp).scale, 2)
        XCTAssertEqual(scale(.pow2, 0.3).scale, 0.0625) // 0.3/6 = 0.05 -> 2^-4 (0.3/2^-5 = 9.6 > 6)
        XCTAssertEqual(scale(.pow2, 12).scale, 2)
        XCTAssertEqual(scale(.pow2, Float(12).nextUp).scale, 4)
        XCTAssertEqual(scale(.pow2, 3).scale, 0.5)
        XCTAssertEqual(scale(.pow2, Float(3).nextUp).scale, 1)
        XCTAssertEqual(scale(.pow2, 1).scale, 0.25)     // 1/0.25 = 4 <= 6, 1/0.125 = 8 > 6
        XCTAssertEqual(scale(.pow2, 7, .e1m2).scale, 2) // fmax 3.5: 7/2 = 3.5
        XCTAssertEqual(scale(.pow2, Float(7).nextUp, .e1m2).scale, 4)
        XCTAssertEqual(scale(.pow2, 16, .e3m0).scale, 1)
        XCTAssertEqual(scale(.pow2, 17, .e3m0).scale, 2)
        XCTAssertEqual(scale(.pow2, 1, .e3m0).scale, 0.0625)
        XCTAssertEqual(scale(.pow2, .greatestFiniteMagnitude).scale, 0x1p126)  // (2^128 - ulp)/6 -> 2^126
        XCTAssertFalse(scale(.pow2, 7).isZero)
    }

    /// pow2 property over random amax (exact check in Double): s is a power of two,
    /// amax / s <= fmax and amax / (s/2) > fmax.
    func testPow2PropertyOnRandomAmax() {
        var (rng, seed) = TestRNG.fresh()
        for f in [MiniFloatFormat.e2m1, .e1m2, .e3m0] {
            let fmax = Double(f.maxValue)
            for _ in 0..<3000 {
                let amax = Float(sign: .plus, exponent: Int.random(in: -100...100, using: &rng),
                                 significand: Float.random(in: 1..<2, using: &rng))
                let s = scale(.pow2, amax, f).scale
                XCTAssertEqual(s.significandBitPattern, 0, "not a power of two: \(s) (amax \(amax), seed \(seed))")
                XCTAssertLessThanOrEqual(Double(amax) / Double(s), fmax, "amax \(amax), s \(s), seed \(seed)")
                XCTAssertGreaterThan(Double(amax) / (Double(s) / 2), fmax, "amax \(amax), s \(s), seed \(seed)")
            }
        }
    }

    // MARK: e8m0: s = 2^(floor(log2 amax) - emax), clamped to 2^[-127, 127]

    func testE8M0() {
        var g = scale(.e8m0, 7)                  // floor(log2 7) = 2, emax 2 -> 2^0
        XCTAssertEqual(g.scale, 1); XCTAssertEqual(g.byte, 127); XCTAssertFalse(g.isZero)
        g = scale(.e8m0, 6)
        XCTAssertEqual(g.scale, 1); XCTAssertEqual(g.byte, 127)
        g = scale(.e8m0, 4)
        XCTAssertEqual(g.scale, 1); XCTAssertEqual(g.byte, 127)
        g = scale(.e8m0, Float(4).nextDown)      // floor(log2) = 1 -> 2^-1
        XCTAssertEqual(g.scale, 0.5); XCTAssertEqual(g.byte, 126)
        g = scale(.e8m0, 8)
        XCTAssertEqual(g.scale, 2); XCTAssertEqual(g.byte, 128)
        g = scale(.e8m0, 0.3)                    // floor(log2 0.3) = -2 -> 2^-4
        XCTAssertEqual(g.scale, 0.0625); XCTAssertEqual(g.byte, 123)
        g = scale(.e8m0, 7, .e1m2)               // emax 1 -> 2^1
        XCTAssertEqual(g.scale, 2); XCTAssertEqual(g.byte, 128)
        g = scale(.e8m0, 16, .e3m0)              // emax 4 -> 2^0
        XCTAssertEqual(g.scale, 1); XCTAssertEqual(g.byte, 127)
        // The byte always decodes (as e8m0) to the scale.
        for amax: Float in [7, 0.3, 1e-20, 3e30, 1] {
            let g = scale(.e8m0, amax)
            XCTAssertEqual(ElementCodec(.e8m0).decode(g.byte), g.scale, "amax \(amax)")
        }
    }

    func testE8M0ZeroAndClamping() {
        var g = scale(.e8m0, 0)                  // all-zero group: 2^-127, byte 0, encodes zeros
        XCTAssertEqual(g.scale, Float(bitPattern: 0x0040_0000))
        XCTAssertEqual(g.byte, 0)
        XCTAssertTrue(g.isZero)
        g = scale(.e8m0, .greatestFiniteMagnitude)  // floor(log2) = 127 -> 2^125
        XCTAssertEqual(g.scale, 0x1p125); XCTAssertEqual(g.byte, 252)
        g = scale(.e8m0, 0x1p-126)               // 2^(-126-2) clamps to 2^-127
        XCTAssertEqual(g.scale, Float(bitPattern: 0x0040_0000)); XCTAssertEqual(g.byte, 0); XCTAssertFalse(g.isZero)
        g = scale(.e8m0, 0x1p-149)               // float32 subnormal amax: clamps to 2^-127
        XCTAssertEqual(g.scale, Float(bitPattern: 0x0040_0000)); XCTAssertEqual(g.byte, 0); XCTAssertFalse(g.isZero)
        g = scale(.e8m0, 0x1p-120)               // -122: inside the range
        XCTAssertEqual(g.scale, 0x1p-122); XCTAssertEqual(g.byte, 5)
    }

    // MARK: nvfp4: S = 448·6 / amax_tensor; sb = e4m3_rne(amax_b · S / 6)

    func testNVFP4TensorScale() {
        XCTAssertEqual(ScaleRule.nvfp4.tensorScale(tensorAmax: 6), 448)
        XCTAssertEqual(ScaleRule.nvfp4.tensorScale(tensorAmax: 2688), 1)
        XCTAssertEqual(ScaleRule.nvfp4.tensorScale(tensorAmax: 1), 2688)
        XCTAssertEqual(ScaleRule.nvfp4.tensorScale(tensorAmax: 7), Float(2688) / Float(7))
        XCTAssertEqual(ScaleRule.nvfp4.tensorScale(tensorAmax: 0), 1, "S = 1 for amax 0")
        XCTAssertEqual(ScaleRule.nvfp4.tensorScale(tensorAmax: 0x1p-149), 1, "2688 / 2^-149 overflows: S = 1")
        for rule in [ScaleRule.absmax, .pow2, .e8m0, .absmaxDiv3] {
            XCTAssertEqual(rule.tensorScale(tensorAmax: 6), 1, rule.name)
        }
    }

    func testNVFP4BlockScale() {
        let S: Float = 448  // tensor amax 6
        var g = scale(.nvfp4, 6, S: S)           // 6·448/6 = 448 -> e4m3 0x7E
        XCTAssertEqual(g.scale, 448); XCTAssertEqual(g.byte, 0x7E); XCTAssertEqual(g.tensorScale, 448); XCTAssertFalse(g.isZero)
        g = scale(.nvfp4, 3, S: S)               // 224 = 1.75·2^7 -> 0x76
        XCTAssertEqual(g.scale, 224); XCTAssertEqual(g.byte, 0x76)
        g = scale(.nvfp4, 1, S: S)               // 74.67 -> quantum 8 in [64,128): 72 = 1.125·2^6 -> 0x69
        XCTAssertEqual(g.scale, 72); XCTAssertEqual(g.byte, 0x69)
        g = scale(.nvfp4, 0.01, S: S)            // 0.7467 -> quantum 1/16 in [0.5,1): 0.75 -> 0x34
        XCTAssertEqual(g.scale, 0.75); XCTAssertEqual(g.byte, 0x34)
        g = scale(.nvfp4, 1e-6, S: S)            // 7.5e-5 < 2^-10 (half the smallest subnormal) -> 0
        XCTAssertEqual(g.scale, 0); XCTAssertEqual(g.byte, 0); XCTAssertTrue(g.isZero)
        g = scale(.nvfp4, 0, S: S)
        XCTAssertEqual(g.byte, 0); XCTAssertTrue(g.isZero)
        g = scale(.nvfp4, 0, S: 1)
        XCTAssertTrue(g.isZero)
        // The byte decodes (as e4m3) to the stored scale.
        for amax: Float in [6, 3, 1, 0.01, 2.5, 5.9] {
            let g = scale(.nvfp4, amax, S: S)
            XCTAssertEqual(ElementCodec(.e4m3).decode(g.byte), g.scale, "amax \(amax)")
        }
    }

    // MARK: absmax_div3: s = 2^floor(log2 amax) / 3

    func testAbsmaxDiv3() {
        XCTAssertEqual(scale(.absmaxDiv3, 5).scale, Float(4) / 3)   // spec example: amax 5 -> 4/3
        XCTAssertEqual(scale(.absmaxDiv3, 4).scale, Float(4) / 3)
        XCTAssertEqual(scale(.absmaxDiv3, Float(8).nextDown).scale, Float(4) / 3)
        XCTAssertEqual(scale(.absmaxDiv3, 8).scale, Float(8) / 3)
        XCTAssertEqual(scale(.absmaxDiv3, 1).scale, Float(1) / 3)
        XCTAssertEqual(scale(.absmaxDiv3, 0.3).scale, Float(0.25) / 3)
        XCTAssertFalse(scale(.absmaxDiv3, 5).isZero)
    }

    /// amax / s lies in [3, 6) up to float32 rounding of s: nothing clips.
    func testAbsmaxDiv3NothingClips() {
        var (rng, seed) = TestRNG.fresh()
        for _ in 0..<3000 {
            let amax = Float(sign: .plus, exponent: Int.random(in: -60...60, using: &rng),
                             significand: Float.random(in: 1..<2, using: &rng))
            let r = amax / scale(.absmaxDiv3, amax).scale
            XCTAssertLessThan(r, 6, "amax \(amax), seed \(seed)")
            XCTAssertGreaterThanOrEqual(r, Float(3).nextDown.nextDown, "amax \(amax), seed \(seed)")
        }
    }

    // MARK: All-zero groups

    /// A group whose amax is 0 gets s = 1 (e8m0: 2^-127) and encodes zeros.
    func testAllZeroGroups() {
        for rule in [ScaleRule.absmax, .pow2, .absmaxDiv3] {
            let g = scale(rule, 0)
            XCTAssertTrue(g.isZero, rule.name)
            XCTAssertEqual(g.scale, 1, rule.name)
        }
        XCTAssertTrue(scale(.e8m0, 0).isZero)
        XCTAssertTrue(scale(.nvfp4, 0, S: 448).isZero)
    }

    func testRuleNames() {
        // Existing indices are an ABI contract; later rules are appended (ReferenceRuleTests).
        XCTAssertEqual(Array(ScaleRule.allCases.map(\.name).prefix(6)), ["absmax", "pow2", "e8m0", "nvfp4", "absmax_div3", "quest"])
        XCTAssertTrue(ScaleRule.e8m0.storesScaleBytes)
        XCTAssertTrue(ScaleRule.nvfp4.storesScaleBytes)
        XCTAssertFalse(ScaleRule.absmax.storesScaleBytes)
    }
}
