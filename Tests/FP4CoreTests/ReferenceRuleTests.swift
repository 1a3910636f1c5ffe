import XCTest
@testable import FP4Core

/// The reference implementations' scale rules (numerics.md §2: e8m0_ceil, e8m0_even, e8m0_rceil
/// after torchao's ScaleCalculationMode and cuBLAS, nvfp4_torchao after torchao's NVFP4) on
/// hand-computed groups, and r-bit stochastic rounding (numerics.md §1) on hand-computed draws.
/// The bit-for-bit comparison with torchao and gfloat themselves is in python/tests.
final class ReferenceRuleTests: XCTestCase {

    private func scale(_ rule: ScaleRule, _ amax: Float, _ f: MiniFloatFormat = .e2m1, S: Float = 1) -> GroupScale {
        rule.groupScale(amax: amax, format: f, tensorScale: S)
    }

    func testNamesAndIndicesAreAppended() {
        XCTAssertEqual(ScaleRule.allCases.map(\.name), ["absmax", "pow2", "e8m0", "nvfp4", "absmax_div3", "quest",
                                                       "e8m0_ceil", "e8m0_even", "e8m0_rceil", "nvfp4_torchao"])
        XCTAssertEqual(ScaleRule.nvfp4Torchao.rawValue, 9)
        for r in [ScaleRule.e8m0Ceil, .e8m0Even, .e8m0Rceil] {
            XCTAssertTrue(r.isE8M0 && r.storesScaleBytes && r.storesScaleByte && r.isPowerOfTwo && r.needsOnlyGroupAmax, r.name)
        }
        XCTAssertTrue(ScaleRule.nvfp4Torchao.isTwoLevel && !ScaleRule.nvfp4Torchao.dividesByTensorScale)
        XCTAssertTrue(ScaleRule.e8m0Ceil.neverClips && ScaleRule.e8m0Rceil.neverClips)
        XCTAssertTrue(ScaleRule.e8m0Even.canClip && ScaleRule.nvfp4Torchao.canClip)
    }

    // MARK: e8m0_ceil: 2^(exponent field + (mantissa ≠ 0) − 127 − emax)

    func testE8M0Ceil() {
        XCTAssertEqual(scale(.e8m0Ceil, 4).scale, 1)          // 2^2 exactly: 2^(2-2)
        XCTAssertEqual(scale(.e8m0Ceil, 4).byte, 127)
        XCTAssertEqual(scale(.e8m0Ceil, 4.5).scale, 2)        // ceil(log2 4.5) = 3
        XCTAssertEqual(scale(.e8m0Ceil, 7.9).scale, 2)
        XCTAssertEqual(scale(.e8m0Ceil, 448, .e4m3).scale, 2) // 1.75·2^8 -> 2^9 / 2^8
        XCTAssertEqual(scale(.e8m0Ceil, 0.75).scale, 0.25)    // 2^0 / 2^2
        XCTAssertEqual(scale(.e8m0Ceil, .greatestFiniteMagnitude).byte, 254 - 2 + 1)  // 2^(128-2)
    }

    // MARK: e8m0_even: amax rounded to the element's mantissa bits, then floor

    func testE8M0Even() {
        XCTAssertEqual(scale(.e8m0Even, Float(6.96)).scale, 1)   // 1.74·4: stays in 2^2 -> s = 1 (6.96 clips to 6)
        XCTAssertEqual(scale(.e8m0Even, 7).scale, 2)             // 1.75·4 rounds to 2·4 with one mantissa bit
        XCTAssertEqual(scale(.e8m0Even, 5.9).scale, 1)
        XCTAssertEqual(scale(.e8m0Even, Float(1.9375) * 256, .e4m3).scale, 2)  // 3 bits: 1.9375 -> 2
        XCTAssertEqual(scale(.e8m0Even, Float(1.875) * 256, .e4m3).scale, 1)   // 1.875 = 1.111b stays
        XCTAssertEqual(scale(.e8m0Even, Float(1.875) * 32768, .e5m2).scale, 2) // 2 bits: 1.875 -> 2
    }

    // MARK: e8m0_rceil: the e8m0 of fl(amax / fmax) rounded up

    func testE8M0Rceil() {
        XCTAssertEqual(scale(.e8m0Rceil, 6).scale, 1)
        XCTAssertEqual(scale(.e8m0Rceil, 6).byte, 127)
        XCTAssertEqual(scale(.e8m0Rceil, Float(6).nextUp).scale, 2)  // fl(6⁺/6) = 1 + 2^-23
        XCTAssertEqual(scale(.e8m0Rceil, 3).scale, 0.5)
        XCTAssertEqual(scale(.e8m0Rceil, 7).scale, 2)
        XCTAssertEqual(scale(.e8m0Rceil, 448, .e4m3).scale, 1)
        XCTAssertEqual(ScaleRule.e8m0RoundUp(0x1p-128), 0)                    // subnormal ≤ 2^-127
        XCTAssertEqual(ScaleRule.e8m0RoundUp(0x1p-127), 0)
        XCTAssertEqual(ScaleRule.e8m0RoundUp(Float(1.5) * 0x1p-127), 1)       // above 2^-127: 2^-126
        XCTAssertEqual(ScaleRule.e8m0RoundUp(0), 0)
        XCTAssertEqual(ScaleRule.e8m0RoundUp(.greatestFiniteMagnitude), 254)  // satfinite
        // Byte 0: the element multiplier is 1, so the group encodes signed zeros.
        let g = scale(.e8m0Rceil, Float(5) * 0x1p-128)
        XCTAssertTrue(g.isZero)
        XCTAssertEqual(g.byte, 0)
    }

    /// Byte-0 groups of e8m0_ceil / e8m0_even: torchao divides by 2^-126 and decodes with 2^-127.
    func testCeilAndEvenByteZeroGroups() throws {
        for rule in [ScaleRule.e8m0Ceil, .e8m0Even] {
            let g = scale(rule, 0x1p-126)
            XCTAssertEqual(g.byte, 0, rule.name)
            XCTAssertEqual(g.multiplier, 0x1p126, rule.name)
            XCTAssertEqual(g.scale, 0x1p-127, rule.name)
            let q = Quantizer(format: .e2m1, granularity: .block(2), scaleRule: rule)
            // v = [1, -0.5] -> q = [1, -0.5] -> x̂ = q · 2^-127
            assertBitwiseEqual(try q.fakeQuantize([0x1p-126, -0x1p-127], rows: 1, cols: 2).out, [0x1p-127, -0x1p-128], rule.name)
            let (codes, _) = try q.quantize([0x1p-126, -0x1p-127], rows: 1, cols: 2)
            XCTAssertEqual(codes, [0x2 | (0x9 << 4)], rule.name)
        }
        // e8m0 (OCP) keeps 2^-127 for both.
        let e = try Quantizer(format: .e2m1, granularity: .block(2), scaleRule: .e8m0)
            .fakeQuantize([0x1p-126, -0x1p-127], rows: 1, cols: 2).out
        assertBitwiseEqual(e, [0x1p-126, -0x1p-127], "e8m0")
    }

    // MARK: nvfp4_torchao

    func testNVFP4TorchaoScales() throws {
        XCTAssertEqual(ScaleRule.nvfp4Torchao.tensorScale(tensorAmax: 2688), 1)
        XCTAssertEqual(ScaleRule.nvfp4Torchao.tensorScale(tensorAmax: 5376), 2)
        XCTAssertEqual(ScaleRule.nvfp4Torchao.tensorScale(tensorAmax: 0), 1)       // torchao: P = 0, NaN
        XCTAssertEqual(ScaleRule.nvfp4Torchao.tensorScale(tensorAmax: 1e-36), 1)   // 1/P · 64 overflows
        XCTAssertEqual(ScaleRule.nvfp4Torchao.tensorScale(tensorAmax: 1e-30), Float(1e-30) / 2688)
        let g = scale(.nvfp4Torchao, 3, S: 1)          // t = 0.5 -> sb = 0.5
        XCTAssertEqual(g.byte, 0x30)                     // e4m3 0.5: exponent 6, mantissa 0
        XCTAssertEqual(g.multiplier, 2)
        XCTAssertEqual(g.scale, 0.5)
        let z = scale(.nvfp4Torchao, 0, S: 2)            // sb clamped to 2^-6
        XCTAssertEqual(z.byte, 0x08)
        XCTAssertFalse(z.isZero)
        XCTAssertEqual(z.scale, 2 * 0x1p-6)
        XCTAssertEqual(z.multiplier, (1 / Float(2)) / 0x1p-6)
        XCTAssertEqual(scale(.nvfp4Torchao, 1e6, S: 1).byte, 0x7E)  // clamped to 448
        // Elements: v = x · ((1/P)/sb), x̂ = q · (P·sb). One block with amax 2688 (P = 1, sb = 448).
        var x = [Float](repeating: 0, count: 16)
        x[0] = 2688; x[1] = -1000; x[2] = 100
        let q = Quantizer(format: .e2m1, granularity: .block(16), scaleRule: .nvfp4Torchao)
        let out = try q.fakeQuantize(x, rows: 1, cols: 16).out
        let r = (1 / Float(1)) / 448, d = Float(1) * 448
        XCTAssertEqual(out[0], 6 * d)
        XCTAssertEqual(out[1], -E2M1NearestEvenRounder().round(1000 * r, index: 0) * d)
        XCTAssertEqual(out[2], E2M1NearestEvenRounder().round(100 * r, index: 0) * d)
        XCTAssertThrowsError(try Quantizer(format: .e4m3, granularity: .block(16), scaleRule: .nvfp4Torchao).validate())
    }

    // MARK: r-bit stochastic rounding

    func testRBitRoundingOnHandDraws() {
        let g = GridParameters(.e2m1)
        // 1.25: half a step (0.5) above 1. r = 1: F = 1, up iff R ≥ 1. r = 2: F = 2, up iff R ≥ 2.
        XCTAssertEqual(g.roundStochastic(1.25, randomBits: 0, count: 1), 1)
        XCTAssertEqual(g.roundStochastic(1.25, randomBits: 1, count: 1), 1.5)
        XCTAssertEqual(g.roundStochastic(1.25, randomBits: 1, count: 2), 1)
        XCTAssertEqual(g.roundStochastic(1.25, randomBits: 2, count: 2), 1.5)
        // 1.1: 0.2 of a step. r = 2: F = 0, never up (exact rounding would go up 20% of the time).
        for R in 0..<4 { XCTAssertEqual(g.roundStochastic(1.1, randomBits: UInt64(R), count: 2), 1) }
        // r = 8: F = floor(0.2 · 256) = 51: up iff R ≥ 205.
        XCTAssertEqual(g.roundStochastic(1.1, randomBits: 204, count: 8), 1)
        XCTAssertEqual(g.roundStochastic(1.1, randomBits: 205, count: 8), 1.5)
        // On the grid: never up; saturation at 6.
        for R: UInt64 in [0, 255] { XCTAssertEqual(g.roundStochastic(3, randomBits: R, count: 8), 3) }
        XCTAssertEqual(g.roundStochastic(7, randomBits: 255, count: 8), 6)
        XCTAssertEqual(g.roundStochastic(5.5, randomBits: (1 << 32) - 1, count: 32), 6)
        // The draw: the top r bits of the 64-bit output uniform() takes its 24 bits from.
        let key = CounterRNG.key(seed: 9)
        for i in 0..<100 {
            let u = CounterRNG.uniform(key: key, index: i)
            XCTAssertEqual(Float(CounterRNG.bits(key: key, index: i, count: 24)) * 0x1p-24, u)
            XCTAssertEqual(CounterRNG.bits(key: key, index: i, count: 8), CounterRNG.bits(key: key, index: i, count: 24) >> 16)
        }
    }

    func testRBitQuantizerIsPureAndThreadIndependent() throws {
        var (rng, seed) = TestRNG.fresh()
        let rows = 256, cols = 64
        let x = (0..<(rows * cols)).map { _ in Float.random(in: -3...3, using: &rng) }
        let q = Quantizer(format: .e2m1, granularity: .block(32), scaleRule: .e8m0Rceil, rounding: .stochastic,
                          seed: 41, stochasticBits: 8)
        let ref = try withThreadCount(1) { try q.fakeQuantize(x, rows: rows, cols: cols).out }
        for t in [2, 3] {
            assertBitwiseEqual(try withThreadCount(t) { try q.fakeQuantize(x, rows: rows, cols: cols).out }, ref,
                               "\(t) threads, data seed \(seed)")
        }
        var other = q
        other.seed = 42
        XCTAssertNotEqual(try other.fakeQuantize(x, rows: rows, cols: cols).out, ref)
    }

    func testStochasticBitsValidation() {
        XCTAssertThrowsError(try Quantizer(rounding: .nearestEven, stochasticBits: 8).validate())
        XCTAssertThrowsError(try Quantizer(rounding: .stochastic, stochasticBits: 33).validate())
        XCTAssertThrowsError(try Quantizer(rounding: .stochastic, stochasticBits: -1).validate())
        XCTAssertNoThrow(try Quantizer(rounding: .stochastic, stochasticBits: 32).validate())
    }
}
