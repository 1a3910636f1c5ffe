import XCTest
@testable import FP4Core

/// The quest scale rule (numerics.md §2) and the clip mask, against a float64 computation here.
final class QuestTests: XCTestCase {
    /// 2^floor(log2((2.92247856 / 6)·σ + 1e-8)) of one group, σ the population std (float64).
    func questScale(_ g: ArraySlice<Float>) -> Float {
        let n = Double(g.count)
        let mu = g.reduce(0.0) { $0 + Double($1) } / n
        let ms = g.reduce(0.0) { $0 + Double($1) * Double($1) } / n
        let s0 = (2.92247856 / 6) * Swift.max(ms - mu * mu, 0).squareRoot() + 1e-8
        var k = 0
        while pow2d(k) > s0 { k -= 1 }
        while pow2d(k + 1) <= s0 { k += 1 }
        return Float(pow2d(k))
    }

    func testScalesValuesAndMaskMatchReference() throws {
        var (rng, seed) = TestRNG.fresh()
        let rows = 6, cols = 64
        var x = (0..<(rows * cols)).map { _ in Float.random(in: -3...3, using: &rng) * Float(1 << Int.random(in: 0...6, using: &rng)) }
        for i in 0..<32 { x[i] = 0 }                 // all-zero group
        for i in 32..<64 { x[i] = 1.5 }              // constant group: σ = 0, s = 2^-27, everything clips
        let q = Quantizer(format: .e2m1, granularity: .block(32), scaleRule: .quest)
        let (out, _) = try q.fakeQuantize(x, rows: rows, cols: cols)
        var mask = [UInt8](repeating: 0xFF, count: Quantizer.maskBytes(count: x.count))
        let ts = try x.withUnsafeBufferPointer { xp in
            try mask.withUnsafeMutableBufferPointer { mp in try q.clipMask(xp.baseAddress!, rows: rows, cols: cols, into: mp.baseAddress!) }
        }
        let grid: [Float] = [0, 0.5, 1, 1.5, 2, 3, 4, 6]
        for g in 0..<(rows * cols / 32) {
            let seg = x[(g * 32)..<((g + 1) * 32)]
            let zero = seg.allSatisfy { $0 == 0 }
            let s: Float = zero ? 1 : questScale(seg)
            XCTAssertEqual(ts.groups[g].scale, s, "group \(g), seed \(seed)")
            for i in (g * 32)..<((g + 1) * 32) {
                let v = x[i] / s
                let a = Swift.min(abs(v), 6)
                // nearest grid value, ties to the even code (index)
                var best = 0
                for c in 1..<8 where abs(grid[c] - a) < abs(grid[best] - a) || (abs(grid[c] - a) == abs(grid[best] - a) && c % 2 == 0) { best = c }
                let want = zero ? x[i] * 0 : Float(signOf: v, magnitudeOf: grid[best]) * s
                XCTAssertTrue(sameFloat(out[i], want), "i=\(i) x=\(x[i]) got \(out[i]) want \(want), seed \(seed)")
                let bit = (mask[i >> 3] >> UInt8(i & 7)) & 1
                XCTAssertEqual(bit, abs(v) < 6 ? 1 : 0, "mask i=\(i), seed \(seed)")
            }
        }
        XCTAssertEqual(ts.groups[1].scale, exactPow2(-27))
    }

    func testNameAndValidation() {
        XCTAssertEqual(ScaleRule.quest.rawValue, 5)
        XCTAssertEqual(ScaleRule.quest.name, "quest")
        XCTAssertFalse(ScaleRule.quest.neverClips)
        assertThrowsFP4Error(.invalidArgument, try Quantizer(format: .e5m2, granularity: .block(32), scaleRule: .quest).validate())
        XCTAssertNoThrow(try Quantizer(format: .e4m3, granularity: .block(32), scaleRule: .quest).validate())
    }

    func testMaskOfNonFiniteGroupIsZeroAndThreadIndependent() throws {
        var (rng, seed) = TestRNG.fresh()
        let rows = 37, cols = 96
        var x = (0..<(rows * cols)).map { _ in Float.random(in: -1...1, using: &rng) }
        x[100] = .nan
        let q = Quantizer(format: .e2m1, granularity: .block(32), scaleRule: .quest)
        func mask() throws -> [UInt8] {
            var m = [UInt8](repeating: 0xAA, count: Quantizer.maskBytes(count: x.count))
            _ = try x.withUnsafeBufferPointer { xp in
                try m.withUnsafeMutableBufferPointer { mp in try q.clipMask(xp.baseAddress!, rows: rows, cols: cols, into: mp.baseAddress!) }
            }
            return m
        }
        let a = try withThreadCount(1) { try mask() }
        let b = try withThreadCount(5) { try mask() }
        XCTAssertEqual(a, b, "seed \(seed)")
        for i in 96..<128 { XCTAssertEqual((a[i >> 3] >> UInt8(i & 7)) & 1, 0, "NaN group, i=\(i)") }
        XCTAssertEqual(a.last! >> UInt8((rows * cols) % 8 == 0 ? 8 : (rows * cols) % 8) , 0, "padding bits")
    }
}
