import XCTest
@testable import FP4Core

/// The Quartet layer: forward close to X·Wᵀ, backward deterministic per (seed, call) and close
/// to the exact gradients, padding of T and N, shape errors. (Bitwise references: test_quartet.py.)
final class QuartetLinearTests: XCTestCase {
    func cosine(_ a: [Float], _ b: [Double]) -> Double {
        var ab = 0.0, aa = 0.0, bb = 0.0
        for i in 0..<a.count { ab += Double(a[i]) * b[i]; aa += Double(a[i]) * Double(a[i]); bb += b[i] * b[i] }
        return ab / (aa * bb).squareRoot()
    }

    func run(T: Int, K: Int, N: Int, seed: UInt64, call: UInt64, gemm: GEMMMode = .simulated, _ rng: inout TestRNG)
        throws -> (x: [Float], w: [Float], dy: [Float], y: [Float], dx: [Float], dw: [Float], db: [Float]) {
        let x = (0..<(T * K)).map { _ in Float.random(in: -1...1, using: &rng) }
        let w = (0..<(N * K)).map { _ in Float.random(in: -1...1, using: &rng) }
        let dy = (0..<(T * N)).map { _ in Float.random(in: -1...1, using: &rng) }
        let s = try QuartetLinear.savedSizes(tokens: T, inFeatures: K)
        var codes = [UInt8](repeating: 0, count: s.codes), scales = [Float](repeating: 0, count: s.scales)
        var mask = [UInt8](repeating: 0, count: s.mask)
        var y = [Float](repeating: 0, count: T * N), dx = [Float](repeating: 0, count: T * K)
        var dw = [Float](repeating: 0, count: N * K), db = [Float](repeating: 0, count: N)
        try QuartetLinear.forward(x: x, tokens: T, inFeatures: K, w: w, outFeatures: N, bias: nil, y: &y,
                                  xCodes: &codes, xScales: &scales, xMask: &mask, gemm: gemm)
        try QuartetLinear.backward(dy: dy, tokens: T, outFeatures: N, w: w, inFeatures: K, xCodes: codes, xScales: scales,
                                   xMask: mask, seed: seed, call: call, dx: &dx, dw: &dw, db: &db, gemm: gemm)
        return (x, w, dy, y, dx, dw, db)
    }

    func testForwardAndBackwardApproximateTheExactLayer() throws {
        var (rng, seed) = TestRNG.fresh()
        let T = 40, K = 64, N = 24  // T and N not multiples of 32: zero padding
        let r = try run(T: T, K: K, N: N, seed: 9, call: 3, &rng)
        var y = [Double](repeating: 0, count: T * N), dx = [Double](repeating: 0, count: T * K)
        var dw = [Double](repeating: 0, count: N * K)
        for t in 0..<T { for n in 0..<N { for k in 0..<K {
            y[t * N + n] += Double(r.x[t * K + k]) * Double(r.w[n * K + k])
            dx[t * K + k] += Double(r.dy[t * N + n]) * Double(r.w[n * K + k])
            dw[n * K + k] += Double(r.dy[t * N + n]) * Double(r.x[t * K + k])
        } } }
        XCTAssertGreaterThan(cosine(r.y, y), 0.95, "seed \(seed)")
        XCTAssertGreaterThan(cosine(r.dx, dx), 0.8, "seed \(seed)")
        XCTAssertGreaterThan(cosine(r.dw, dw), 0.8, "seed \(seed)")
        for n in 0..<N {
            var s: Float = 0
            for t in 0..<T { s += r.dy[t * N + n] }
            XCTAssertEqual(r.db[n], s, accuracy: 1e-4)
        }
    }

    func testDrawsArePureFunctionsOfSeedAndCall() throws {
        let (_, seed) = TestRNG.fresh()
        var a = TestRNG(seed: seed), b = TestRNG(seed: seed), c = TestRNG(seed: seed)
        let r1 = try run(T: 32, K: 32, N: 32, seed: 1, call: 7, &a)
        let r2 = try withThreadCount(3) { try run(T: 32, K: 32, N: 32, seed: 1, call: 7, &b) }
        let r3 = try run(T: 32, K: 32, N: 32, seed: 1, call: 8, &c)
        assertBitwiseEqual(r1.dx, r2.dx, "seed \(seed)")
        assertBitwiseEqual(r1.dw, r2.dw, "seed \(seed)")
        XCTAssertNotEqual(r1.dx, r3.dx)
        let d = QuartetLinear.signs(seed: 1, call: 7)
        XCTAssertEqual(d.count, 32)
        XCTAssertTrue(d.allSatisfy { $0 == 1 || $0 == -1 } && d.contains(1) && d.contains(-1))
        XCTAssertNotEqual(d, QuartetLinear.signs(seed: 1, call: 8))
    }

    func testInFeaturesMustBeAMultipleOf32() {
        assertThrowsFP4Error(.invalidArgument, try QuartetLinear.savedSizes(tokens: 4, inFeatures: 48))
    }

    /// The NVFP4 weight-gradient rotation is orthogonal: without quantizers it leaves dW = dYᵀ·X
    /// (T = 21 is padded to 32 with zeros).
    func testWgradHadamardWithoutQuantizersIsExact() throws {
        var (rng, seed) = TestRNG.fresh()
        let T = 21, K = 16, N = 8
        let x = (0..<(T * K)).map { _ in Float.random(in: -1...1, using: &rng) }
        let w = (0..<(N * K)).map { _ in Float.random(in: -1...1, using: &rng) }
        let dy = (0..<(T * N)).map { _ in Float.random(in: -1...1, using: &rng) }
        let recipe = LinearRecipe(wgradHadamard: WgradHadamard(block: 16, seed: seed))
        var saved = LinearSaved(xCodes: nil, xCodesCount: 0, xScales: nil, xScalesCount: 0, residualIndptr: nil,
                                residualIndices: nil, residualValues: nil, residualCapacity: 0)
        var y = [Float](repeating: 0, count: T * N), dw = [Float](repeating: 0, count: N * K)
        try LinearLayer.forward(x: x, tokens: T, inFeatures: K, w: w, outFeatures: N, bias: nil, recipe: recipe, y: &y, saved: &saved)
        try LinearLayer.backward(dy: dy, tokens: T, outFeatures: N, x: x, w: w, inFeatures: K, recipe: recipe, saved: saved,
                                 dx: nil, dw: &dw, db: nil)
        for n in 0..<N { for k in 0..<K {
            var s = 0.0
            for t in 0..<T { s += Double(dy[t * N + n]) * Double(x[t * K + k]) }
            XCTAssertEqual(Double(dw[n * K + k]), s, accuracy: 1e-5, "seed \(seed)")
        } }
        assertThrowsFP4Error(.invalidArgument, try LinearRecipe(wgradHadamard: WgradHadamard(block: 12)).validate())
    }

    /// gemm = .packed: the same layer up to the GEMMs' float rounding (the bounds against the
    /// float64 products of the quantized operands: test_quartet.py), bit-identical for every
    /// GEMM path and thread count.
    func testPackedGEMMsAgreeWithSimulatedAndAreThreadAndPathIndependent() throws {
        let (_, seed) = TestRNG.fresh()
        let T = 40, K = 64, N = 24  // T and N not multiples of 32
        var a = TestRNG(seed: seed)
        let sim = try run(T: T, K: K, N: N, seed: 3, call: 11, gemm: .simulated, &a)
        var outs: [[[Float]]] = []
        defer { unsetenv(PackedGEMM.pathVariable) }
        for threads in [1, 2] {
            for path in GEMMPath.allCases where path.isSupported {
                setenv(PackedGEMM.pathVariable, path.name, 1)
                var b = TestRNG(seed: seed)
                let r = try withThreadCount(threads) { try run(T: T, K: K, N: N, seed: 3, call: 11, gemm: .packed, &b) }
                outs.append([r.y, r.dx, r.dw, r.db])
            }
        }
        for o in outs.dropFirst() {
            for (u, v) in zip(outs[0], o) { assertBitwiseEqual(u, v, "seed \(seed)") }
        }
        // Close to the simulated layer (operands in [-1, 1]: Σ|a·b| is at most a few hundred).
        let packed = outs[0]
        for (p, s) in zip(packed, [sim.y, sim.dx, sim.dw, sim.db]) {
            let scale = s.map { abs($0) }.max() ?? 1
            for i in 0..<p.count { XCTAssertEqual(p[i], s[i], accuracy: 1e-5 * Swift.max(scale, 1), "seed \(seed)") }
        }
        assertBitwiseEqual(packed[3], sim.db, "seed \(seed)")
    }

    /// NaN in dY cannot be coded: the packed backward gives the simulated results.
    func testPackedBackwardWithNaNGradientRunsSimulated() throws {
        let T = 33, K = 32, N = 40
        var x = [Float](repeating: 0.5, count: T * K), w = [Float](repeating: -0.25, count: N * K)
        for i in 0..<x.count { x[i] = Float(i % 7) - 3 }
        for i in 0..<w.count { w[i] = Float(i % 5) * 0.1 }
        var dy = [Float](repeating: 1, count: T * N)
        dy[17] = .nan
        let s = try QuartetLinear.savedSizes(tokens: T, inFeatures: K)
        var codes = [UInt8](repeating: 0, count: s.codes), scales = [Float](repeating: 0, count: s.scales)
        var mask = [UInt8](repeating: 0, count: s.mask), y = [Float](repeating: 0, count: T * N)
        try QuartetLinear.forward(x: x, tokens: T, inFeatures: K, w: w, outFeatures: N, bias: nil, y: &y,
                                  xCodes: &codes, xScales: &scales, xMask: &mask, gemm: .packed)
        var results: [[Float]] = []
        for gemm in [GEMMMode.packed, .simulated] {
            var dx = [Float](repeating: 0, count: T * K), dw = [Float](repeating: 0, count: N * K)
            try QuartetLinear.backward(dy: dy, tokens: T, outFeatures: N, w: w, inFeatures: K, xCodes: codes, xScales: scales,
                                       xMask: mask, seed: 1, call: 2, dx: &dx, dw: &dw, db: nil, gemm: gemm)
            results += [dx, dw]
        }
        assertBitwiseEqual(results[0], results[2])
        assertBitwiseEqual(results[1], results[3])
        XCTAssertTrue(results[0].contains { $0.isNaN })
    }
}
