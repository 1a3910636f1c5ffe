import XCTest
import FP4ISA
@testable import FP4Core

/// `CounterDraws`: the AVX-512 DQ batch kernel gives the bits of `CounterRNG.uniform` for every
/// counter layout the stochastic kernels use (8 lanes, any lane and row steps, wrapping).
final class CounterDrawsTests: XCTestCase {

    func testBatchedDrawsEqualTheScalarGenerator() throws {
        try XCTSkipIf(fp4isa_cpu_has(FP4ISA_AVX512DQ) == 0, "this CPU has no AVX-512 DQ")
        var rng = SystemRandomNumberGenerator()
        let gamma = CounterRNG.gamma
        for trial in 0..<50 {
            let key = CounterRNG.key(seed: UInt64(trial) &* 7919)
            // Counter of (row i, lane l) = key + (first + i·rowStep + l·laneStep + 1)·γ, in the
            // index arithmetic of CounterRNG.uniform; trial 0 starts near the 64-bit wrap.
            let first = trial == 0 ? Int.max - 100 : Int.random(in: 0..<(1 << 40), using: &rng)
            let laneStep = [1, 32, 2048, Int.random(in: 1..<100_000, using: &rng)][trial % 4]
            let rowStep = trial % 2 == 0 ? 8 * laneStep : 1
            let rows = [0, 1, 3, 32, 77][trial % 5]
            var base = SIMD8<UInt64>(repeating: 0)
            for l in 0..<8 { base[l] = key &+ (UInt64(first) &+ UInt64(l * laneStep) &+ 1) &* gamma }
            let step = UInt64(rowStep) &* gamma
            var batched = [Float](repeating: -1, count: 8 * rows + 8), portable = batched
            batched.withUnsafeMutableBufferPointer { CounterDraws.fill($0.baseAddress!, base: base, step: step, rows: rows) }
            portable.withUnsafeMutableBufferPointer { CounterDraws.fillPortable($0.baseAddress!, base: base, step: step, rows: rows) }
            for i in 0..<rows {
                for l in 0..<8 {
                    let index = first &+ i * rowStep &+ l * laneStep
                    let expected = CounterRNG.uniform(key: key, index: index)
                    XCTAssertEqual(batched[8 * i + l].bitPattern, expected.bitPattern, "trial \(trial) row \(i) lane \(l)")
                    XCTAssertEqual(portable[8 * i + l].bitPattern, expected.bitPattern, "trial \(trial) row \(i) lane \(l)")
                }
            }
            // Nothing past the last row is written.
            for k in (8 * rows)..<(8 * rows + 8) { XCTAssertEqual(batched[k], -1) }
        }
    }
}
