import XCTest
@testable import FP4Core
#if canImport(Glibc)
import Glibc
#endif

/// Spec §6: LinearLayer.forward / backward on tiny cases against a Double reference written
/// here. The fp32 recipe is checked exactly (integer-valued data makes every float32 GEMM
/// exact); wang2025 takes its quantized operands from the Quantizer's own fakeQuantize (the
/// Python suite has the independent quantizer reference) and does the OCC thresholds (sorted
/// copy), the clamp, the DGE factor (spec formula) and every product in Double.
final class LinearLayerTests: XCTestCase {

    static let e2m1Row = Quantizer(format: .e2m1, granularity: .row, scaleRule: .absmax, rounding: .nearestEven)
    static let fp8Gradient = Quantizer(format: .e5m2, granularity: .tensor, scaleRule: .pow2, rounding: .nearestEven)

    static func wang2025(alpha: Double = 0.99, perRow: Bool = false, compensate: Bool = true, dge: Bool = true,
                         k: Float = 5, clamp: Float = 3, gradFP8: Bool = false,
                         quantizer: Quantizer = e2m1Row) -> LinearRecipe {
        // The built-in recipe (NamedRecipes.swift, the one Python's "wang2025" is checked against), varied.
        var r = LinearRecipe.named("wang2025")!
        r.input = quantizer
        r.weight = quantizer
        r.gradient = gradFP8 ? fp8Gradient : nil
        r.occ = OCCConfig(alpha: alpha, perRow: perRow, compensate: compensate)
        r.dge = dge ? DGEConfig(k: k, clamp: clamp) : nil
        return r
    }

    // MARK: - fp32

    func testFP32RecipeIsExactOnIntegerData() throws {
        var (rng, seed) = TestRNG.fresh()
        let T = 3, K = 5, N = 4
        func ints(_ n: Int) -> [Float] { (0..<n).map { _ in Float(Int.random(in: -4...4, using: &rng)) } }
        let x = ints(T * K), w = ints(N * K), b = ints(N), dy = ints(T * N)
        let r = try runLinear(x: x, T: T, K: K, w: w, N: N, bias: b, dy: dy, recipe: LinearRecipe())
        let ref = referenceLinear(xOp: x.map(Double.init), wOp: w.map(Double.init), bias: b, g: dy.map(Double.init),
                                  dyRaw: dy, T: T, K: K, N: N, dgeFactor: nil)
        // Small integers: every product and sum is exact in float32 and Double alike.
        assertBitwiseEqual(r.y, ref.y.map { Float($0) }, "y seed \(seed)")
        assertBitwiseEqual(r.dx, ref.dx.map { Float($0) }, "dx seed \(seed)")
        assertBitwiseEqual(r.dw, ref.dw.map { Float($0) }, "dw seed \(seed)")
        assertBitwiseEqual(r.db!, ref.db.map { Float($0) }, "db seed \(seed)")
        XCTAssertEqual(r.savedCodes.count, 0)
    }

    func testFP32RecipeOnRandomData() throws {
        var (rng, seed) = TestRNG.fresh()
        let T = 7, K = 9, N = 5
        let x = randomGaussian(T * K, &rng), w = randomGaussian(N * K, &rng), dy = randomGaussian(T * N, &rng)
        let r = try runLinear(x: x, T: T, K: K, w: w, N: N, bias: nil, dy: dy, recipe: LinearRecipe())
        let ref = referenceLinear(xOp: x.map(Double.init), wOp: w.map(Double.init), bias: nil, g: dy.map(Double.init),
                                  dyRaw: dy, T: T, K: K, N: N, dgeFactor: nil)
        assertClose(r.y, ref.y, "y seed \(seed)")
        assertClose(r.dx, ref.dx, "dx seed \(seed)")
        assertClose(r.dw, ref.dw, "dw seed \(seed)")
        XCTAssertNil(r.db)
    }

    // MARK: - wang2025

    func testWang2025AgainstDoubleReference() throws {
        var (rng, seed) = TestRNG.fresh()
        let T = 6, K = 8, N = 3
        for (alpha, perRow) in [(0.9, false), (0.99, false), (0.75, true), (1.0, false)] {
            for compensate in [true, false] {
                for dge in [true, false] {
                    for gradFP8 in [false, true] {
                        var x = randomGaussian(T * K, &rng)
                        x[5] = 40; x[17] = -25  // outliers
                        var w = randomGaussian(N * K, &rng).map { $0 * 0.1 }
                        for j in 0..<K { w[K + j] = 0 }  // an all-zero weight row: f' = 1/k there
                        let b = randomGaussian(N, &rng), dy = randomGaussian(T * N, &rng)
                        let what = "alpha \(alpha) perRow \(perRow) comp \(compensate) dge \(dge) fp8 \(gradFP8) seed \(seed)"
                        let recipe = Self.wang2025(alpha: alpha, perRow: perRow, compensate: compensate, dge: dge, gradFP8: gradFP8)
                        let r = try runLinear(x: x, T: T, K: K, w: w, N: N, bias: b, dy: dy, recipe: recipe)

                        // OCC by a sorted copy and the spec's index formula.
                        let (xc, delta) = referenceOCC(x, T: T, K: K, alpha: alpha, perRow: perRow)
                        let xq = try Self.e2m1Row.fakeQuantize(xc, rows: T, cols: K).out
                        let wq = try Self.e2m1Row.fakeQuantize(w, rows: N, cols: K).out
                        let useDelta = compensate ? delta : [Float](repeating: 0, count: T * K)
                        let xOp = (0..<(T * K)).map { Double(xq[$0]) + Double(useDelta[$0]) }
                        let g = gradFP8 ? try Self.fp8Gradient.fakeQuantize(dy, rows: T, cols: N).out : dy
                        // DGE factor: v = W / s_w in float32, s_w = amax_row / 6 (absmax).
                        var factor: [Double]? = nil
                        if dge {
                            factor = (0..<(N * K)).map { i in
                                let row = i / K
                                let amax = (0..<K).map { abs(w[row * K + $0]) }.max()!
                                let s: Float = amax == 0 ? 1 : amax / 6
                                return referenceDGE(Double(w[i] / s), table: SpecTable.e2m1.map(Double.init), k: 5, clamp: 3)
                            }
                        }
                        let ref = referenceLinear(xOp: xOp, wOp: wq.map(Double.init), bias: b, g: g.map(Double.init),
                                                  dyRaw: dy, T: T, K: K, N: N, dgeFactor: factor)
                        assertClose(r.y, ref.y, "y " + what)
                        assertClose(r.dx, ref.dx, "dx " + what)
                        assertClose(r.dw, ref.dw, "dw " + what)
                        assertClose(r.db!, ref.db, "db " + what)
                        if dge {
                            for j in 0..<K {  // the zero weight row: STE value / k
                                let ste = (0..<T).reduce(0.0) { $0 + Double(g[$1 * N + 1]) * xOp[$1 * K + j] }
                                XCTAssertEqual(Double(r.dw[K + j]), ste / 5, accuracy: 1e-5 * Swift.max(1, abs(ste)), what)
                            }
                        }

                        // Saved state: the codes of X_q (decoded by hand) and the sparse residual.
                        let codes = unpackByHand(r.savedCodes, count: T * K)
                        for t in 0..<T {
                            for j in 0..<K {
                                let c = Int(codes[t * K + j])
                                let mag = SpecTable.e2m1[c & 7]
                                let val = (c & 8 != 0 ? -mag : mag) * r.savedScales[t]
                                XCTAssertEqual(val, xq[t * K + j], "X_q from codes, \(what)")
                            }
                        }
                        let outliers = delta.filter { $0 != 0 }.count
                        XCTAssertEqual(r.residualNNZ, compensate ? outliers : 0, what)
                        if alpha == 0.9 { XCTAssertGreaterThan(outliers, 0) }
                    }
                }
            }
        }
    }

    func testWang2025OtherFormatsAndTensorScaling() throws {
        var (rng, seed) = TestRNG.fresh()
        let T = 4, K = 6, N = 5
        for f in [MiniFloatFormat.e1m2, .e3m0, .e2m1] {
            for gran in [Granularity.row, .tensor] {
                let q = Quantizer(format: f, granularity: gran, scaleRule: .absmax, rounding: .nearestEven)
                let recipe = Self.wang2025(alpha: 0.9, k: 2, clamp: 10, quantizer: q)
                let x = randomGaussian(T * K, &rng), w = randomGaussian(N * K, &rng), dy = randomGaussian(T * N, &rng)
                let r = try runLinear(x: x, T: T, K: K, w: w, N: N, bias: nil, dy: dy, recipe: recipe)
                let (xc, delta) = referenceOCC(x, T: T, K: K, alpha: 0.9, perRow: false)
                let xq = try q.fakeQuantize(xc, rows: T, cols: K).out
                let wq = try q.fakeQuantize(w, rows: N, cols: K).out
                let xOp = (0..<(T * K)).map { Double(xq[$0]) + Double(delta[$0]) }
                let fmax = f.maxValue
                let factor: [Double] = (0..<(N * K)).map { i in
                    let group = gran == .row ? Array(w[(i / K * K)..<(i / K * K + K)]) : w
                    let amax = group.map { abs($0) }.max()!
                    // absmax cannot clip: a |v| just above fmax (e1m2: 3.5000002) is rounding of the scale and counts as fmax.
                    let v = Swift.min(Swift.max(w[i] / (amax / fmax), -fmax), fmax)
                    return referenceDGE(Double(v), table: SpecTable.fp4(f).map(Double.init), k: 2, clamp: 10)
                }
                let ref = referenceLinear(xOp: xOp, wOp: wq.map(Double.init), bias: nil, g: dy.map(Double.init),
                                          dyRaw: dy, T: T, K: K, N: N, dgeFactor: factor)
                let what = "\(f.name) \(gran.name) seed \(seed)"
                assertClose(r.y, ref.y, "y " + what)
                assertClose(r.dx, ref.dx, "dx " + what)
                assertClose(r.dw, ref.dw, "dw " + what)
                XCTAssertEqual(r.savedScales.count, gran == .row ? T : 1, what)
            }
        }
    }

    func testFP4DirectIsSTE() throws {
        var (rng, seed) = TestRNG.fresh()
        let T = 5, K = 7, N = 4
        let q = Quantizer(format: .e2m1, granularity: .tensor, scaleRule: .absmax, rounding: .nearestEven)
        let x = randomGaussian(T * K, &rng), w = randomGaussian(N * K, &rng), b = randomGaussian(N, &rng)
        let dy = randomGaussian(T * N, &rng)
        let r = try runLinear(x: x, T: T, K: K, w: w, N: N, bias: b, dy: dy, recipe: LinearRecipe(input: q, weight: q))
        let xq = try q.fakeQuantize(x, rows: T, cols: K).out
        let wq = try q.fakeQuantize(w, rows: N, cols: K).out
        let ref = referenceLinear(xOp: xq.map(Double.init), wOp: wq.map(Double.init), bias: b, g: dy.map(Double.init),
                                  dyRaw: dy, T: T, K: K, N: N, dgeFactor: nil)
        assertClose(r.y, ref.y, "y seed \(seed)")
        assertClose(r.dx, ref.dx, "dx seed \(seed)")
        assertClose(r.dw, ref.dw, "dw seed \(seed)")
        assertClose(r.db!, ref.db, "db seed \(seed)")
        XCTAssertEqual(r.savedScales.count, 1)
    }

    /// Zhou et al. (numerics.md §7): an FP4 forward (e2m1 block(16)) with FP8 backward GEMMs of their own
    /// (dY e5m2 per tensor; W and X e4m3 per column, from the float32 W and X); the forward saves
    /// the e4m3 codes of X, one byte per element.
    func testOwnBackwardOperands() throws {
        var (rng, seed) = TestRNG.fresh()
        let T = 6, K = 32, N = 5
        let fp4 = Quantizer(format: .e2m1, granularity: .block(16), scaleRule: .absmax, rounding: .nearestEven)
        let fp8 = Quantizer(format: .e4m3, granularity: .column, scaleRule: .absmax, rounding: .nearestEven)
        let x = randomGaussian(T * K, &rng), w = randomGaussian(N * K, &rng), b = randomGaussian(N, &rng)
        let dy = randomGaussian(T * N, &rng)
        let recipe = LinearRecipe(input: fp4, weight: fp4, gradient: Self.fp8Gradient,
                                  backwardWeight: .own(fp8), backwardInput: .own(fp8))
        let r = try runLinear(x: x, T: T, K: K, w: w, N: N, bias: b, dy: dy, recipe: recipe)
        let xq = try fp4.fakeQuantize(x, rows: T, cols: K).out, wq = try fp4.fakeQuantize(w, rows: N, cols: K).out
        let xb = try fp8.fakeQuantize(x, rows: T, cols: K).out, wb = try fp8.fakeQuantize(w, rows: N, cols: K).out
        let g = try Self.fp8Gradient.fakeQuantize(dy, rows: T, cols: N).out.map(Double.init)
        let fwd = referenceLinear(xOp: xq.map(Double.init), wOp: wq.map(Double.init), bias: b, g: g, dyRaw: dy,
                                  T: T, K: K, N: N, dgeFactor: nil)
        let bwd = referenceLinear(xOp: xb.map(Double.init), wOp: wb.map(Double.init), bias: b, g: g, dyRaw: dy,
                                  T: T, K: K, N: N, dgeFactor: nil)
        assertClose(r.y, fwd.y, "y seed \(seed)")
        assertClose(r.dx, bwd.dx, "dx seed \(seed)")
        assertClose(r.dw, bwd.dw, "dw seed \(seed)")
        XCTAssertEqual(r.savedCodes.count, T * K)
        XCTAssertEqual(r.savedScales.count, K)
        XCTAssertEqual(r.residualNNZ, 0)

        // Float32 backward operands: the backward reads the float32 X and W.
        let plain = LinearRecipe(input: fp4, weight: fp4, backwardWeight: .own(nil), backwardInput: .own(nil))
        let p = try runLinear(x: x, T: T, K: K, w: w, N: N, bias: nil, dy: dy, recipe: plain)
        let exact = referenceLinear(xOp: x.map(Double.init), wOp: w.map(Double.init), bias: nil, g: dy.map(Double.init),
                                    dyRaw: dy, T: T, K: K, N: N, dgeFactor: nil)
        assertClose(p.dx, exact.dx, "float32 dx seed \(seed)")
        assertClose(p.dw, exact.dw, "float32 dw seed \(seed)")
        XCTAssertEqual(p.savedCodes.count, 0)

        // OCC's residual belongs to the forward's X_q: it cannot go with an own backward X.
        var bad = Self.wang2025()
        bad.backwardInput = .own(fp8)
        XCTAssertThrowsError(try bad.validate())
    }

    // MARK: - Errors

    /// prepareInput + forwardPrepared (the shared-input path) equal forward bit for bit.
    func testPreparedForwardEqualsForward() throws {
        var rng = TestRNG(seed: 41)
        let e4m3Row = Quantizer(format: .e4m3, granularity: .row, scaleRule: .absmax, rounding: .nearestEven)
        let recipes: [(String, LinearRecipe)] = [
            ("wang2025", Self.wang2025()),
            ("wang2025 per-row OCC, no compensation", Self.wang2025(perRow: true, compensate: false)),
            ("fp32", LinearRecipe(input: nil, weight: nil, gradient: nil, occ: nil, dge: nil)),
            ("fp8 backward X", LinearRecipe(input: Self.e2m1Row, weight: Self.e2m1Row, gradient: Self.fp8Gradient, occ: nil,
                                            dge: nil, backwardInput: .own(e4m3Row))),
        ]
        for (name, recipe) in recipes {
            for (T, K, N) in [(16, 32, 8), (7, 5, 3), (1, 64, 2)] {
                var x = randomGaussian(T * K, &rng)
                x[0] *= 40
                let w = randomGaussian(N * K, &rng), dy = randomGaussian(T * N, &rng)
                let bias = randomGaussian(N, &rng)
                let a = try runLinear(x: x, T: T, K: K, w: w, N: N, bias: bias, dy: dy, recipe: recipe)
                let b = try runLinear(x: x, T: T, K: K, w: w, N: N, bias: bias, dy: dy, recipe: recipe, prepared: true)
                let same = { (u: [Float], v: [Float]) in u.map(\.bitPattern) == v.map(\.bitPattern) }
                XCTAssertTrue(same(a.y, b.y) && same(a.dx, b.dx) && same(a.dw, b.dw), "\(name) \(T)x\(K)x\(N)")
                XCTAssertEqual(a.savedCodes, b.savedCodes, name)
                XCTAssertTrue(same(a.savedScales, b.savedScales), name)
                XCTAssertEqual(a.residualNNZ, b.residualNNZ, name)
            }
        }
    }

    /// zhou2025 saves FP8 X, so its forward's e2m1 codes travel in the operand buffer
    /// (`forwardCodesInOperand`): y is exactly PackedGEMM on X's and W's codes, + b, through both
    /// entry points; the saved state and the backward are the simulated path's, bit for bit.
    func testZhou2025ForwardOnCodesInTheOperand() throws {
        var rng = TestRNG(seed: 43)
        let T = 12, K = 32, N = 6
        let packed = LinearRecipe.named("zhou2025")!
        var simulated = packed
        simulated.gemm = .simulated
        XCTAssertTrue(LinearLayer.forwardCodesInOperand(recipe: packed, tokens: T, inFeatures: K))
        XCTAssertFalse(LinearLayer.forwardCodesInOperand(recipe: simulated, tokens: T, inFeatures: K))
        XCTAssertFalse(LinearLayer.forwardRunsOnCodes(recipe: packed, inFeatures: K))  // not from the saved state
        let x = randomGaussian(T * K, &rng), w = randomGaussian(N * K, &rng), b = randomGaussian(N, &rng)
        let dy = randomGaussian(T * N, &rng)
        let q = packed.input!
        var want = [Float](repeating: 0, count: T * N)
        let xc = try x.withUnsafeBufferPointer { try LinearLayer.CodedOperand($0.baseAddress!, rows: T, cols: K, q) }
        let wc = try w.withUnsafeBufferPointer { try LinearLayer.CodedOperand($0.baseAddress!, rows: N, cols: K, q) }
        try want.withUnsafeMutableBufferPointer { out in
            try xc.withOperand { a in try wc.withOperand { c in try PackedGEMM.multiply(a, c, into: out.baseAddress!) } }
        }
        for t in 0..<T { for j in 0..<N { want[t * N + j] += b[j] } }
        let bits = { (u: [Float]) in u.map(\.bitPattern) }
        let s = try runLinear(x: x, T: T, K: K, w: w, N: N, bias: b, dy: dy, recipe: simulated)
        for prepared in [false, true] {
            let r = try runLinear(x: x, T: T, K: K, w: w, N: N, bias: b, dy: dy, recipe: packed, prepared: prepared)
            XCTAssertEqual(bits(r.y), bits(want), "prepared \(prepared)")
            XCTAssertEqual(r.savedCodes, s.savedCodes)
            XCTAssertEqual(bits(r.savedScales), bits(s.savedScales))
            XCTAssertEqual(bits(r.dx), bits(s.dx))
            XCTAssertEqual(bits(r.dw), bits(s.dw))
        }
        // Where codes and scales would not fit the [T, K] buffer (K = 1, row scales): simulated.
        var row = packed
        row.input = Quantizer(format: .e2m1, granularity: .row, scaleRule: .absmax)
        row.weight = row.input
        XCTAssertFalse(LinearLayer.forwardCodesInOperand(recipe: row, tokens: 9, inFeatures: 1))
        XCTAssertTrue(LinearLayer.forwardCodesInOperand(recipe: row, tokens: 9, inFeatures: 2))
    }

    func testBadRecipesThrow() throws {
        let x = [Float](repeating: 1, count: 8), w = [Float](repeating: 1, count: 8), dy = [Float](repeating: 1, count: 4)
        for a in [0.5, 1.01, -1, .nan] {
            assertThrowsFP4Error(.invalidArgument, try runLinear(x: x, T: 2, K: 4, w: w, N: 2, bias: nil, dy: dy,
                                                                 recipe: Self.wang2025(alpha: a)), "alpha \(a)")
        }
        for k: Float in [0, -1] {
            assertThrowsFP4Error(.invalidArgument, try runLinear(x: x, T: 2, K: 4, w: w, N: 2, bias: nil, dy: dy,
                                                                 recipe: Self.wang2025(k: k)), "k \(k)")
        }
        // OCC without a quantized input; DGE without a quantized weight.
        assertThrowsFP4Error(.invalidArgument, try LinearRecipe(occ: OCCConfig()).validate())
        assertThrowsFP4Error(.invalidArgument, try LinearRecipe(input: Self.e2m1Row, dge: DGEConfig()).validate())
        assertThrowsFP4Error(.invalidArgument, try Self.wang2025(alpha: 2).validate())
    }

    func testNonFiniteInputs() throws {
        let T = 2, K = 4, N = 2
        var x: [Float] = [1, 2, 3, 4, 5, 6, 7, 8]
        let w: [Float] = [1, 0, -1, 2, 0.5, 0.25, -2, 1]
        let dy: [Float] = [1, 1, 1, 1]
        x[6] = .nan
        assertThrowsFP4Error(.nonFinite, try runLinear(x: x, T: T, K: K, w: w, N: N, bias: nil, dy: dy, recipe: Self.wang2025()))
        let q = Quantizer(format: .e2m1, granularity: .tensor)
        assertThrowsFP4Error(.nonFinite, try runLinear(x: x, T: T, K: K, w: w, N: N, bias: nil, dy: dy,
                                                       recipe: LinearRecipe(input: q, weight: q)))
        var wb = w
        wb[3] = .infinity
        assertThrowsFP4Error(.nonFinite, try runLinear(x: [1, 2, 3, 4, 5, 6, 7, 8], T: T, K: K, w: wb, N: N, bias: nil, dy: dy,
                                                       recipe: Self.wang2025()))
        // fp32: NaN propagates to the token's outputs only.
        let r = try runLinear(x: x, T: T, K: K, w: w, N: N, bias: nil, dy: dy, recipe: LinearRecipe())
        XCTAssertFalse(r.y[0].isNaN || r.y[1].isNaN)
        XCTAssertTrue(r.y[2].isNaN && r.y[3].isNaN)
    }

    func testSavedBuffersTooSmallThrow() throws {
        let T = 4, K = 4, N = 2
        let x = (0..<(T * K)).map { Float($0) - 7 }, w = (0..<(N * K)).map { Float($0) * 0.5 - 1 }
        var y = [Float](repeating: 0, count: T * N)
        let sizes = try LinearLayer.savedSizes(tokens: T, inFeatures: K, recipe: Self.wang2025(alpha: 0.9))
        XCTAssertEqual(sizes.xCodes, (T * K + 1) / 2)
        XCTAssertEqual(sizes.xScales, T)
        XCTAssertGreaterThan(sizes.residualCapacity, 0)
        let codes = UnsafeMutablePointer<UInt8>.allocate(capacity: sizes.xCodes)
        let scales = UnsafeMutablePointer<Float>.allocate(capacity: sizes.xScales)
        let indptr = UnsafeMutablePointer<Int64>.allocate(capacity: T + 1)
        let indices = UnsafeMutablePointer<Int32>.allocate(capacity: sizes.residualCapacity)
        let values = UnsafeMutablePointer<Float>.allocate(capacity: sizes.residualCapacity)
        defer { codes.deallocate(); scales.deallocate(); indptr.deallocate(); indices.deallocate(); values.deallocate() }
        // Everything the sizes call asks for, except one code byte.
        var saved = LinearSaved(xCodes: codes, xCodesCount: sizes.xCodes - 1, xScales: scales, xScalesCount: sizes.xScales,
                                residualIndptr: indptr, residualIndices: indices, residualValues: values,
                                residualCapacity: sizes.residualCapacity)
        assertThrowsFP4Error(.invalidArgument, try x.withUnsafeBufferPointer { xp in
            try w.withUnsafeBufferPointer { wp in
                try y.withUnsafeMutableBufferPointer { yp in
                    try LinearLayer.forward(x: xp.baseAddress!, tokens: T, inFeatures: K, w: wp.baseAddress!, outFeatures: N,
                                            bias: nil, recipe: Self.wang2025(alpha: 0.9), y: yp.baseAddress!, saved: &saved)
                }
            }
        })
    }
}

// MARK: - Running the layer on arrays

private struct LinearRun {
    var y: [Float]
    var dx: [Float]
    var dw: [Float]
    var db: [Float]?
    var savedCodes: [UInt8]
    var savedScales: [Float]
    var residualNNZ: Int
}

/// forward then backward with freshly allocated saved-state buffers of the reported sizes.
/// `prepared`: the forward in its two steps (prepareInput, then forwardPrepared).
private func runLinear(x: [Float], T: Int, K: Int, w: [Float], N: Int, bias: [Float]?, dy: [Float],
                       recipe: LinearRecipe, prepared: Bool = false) throws -> LinearRun {
    try recipe.validate()  // the boundary check the C exports do once per call
    let sizes = try LinearLayer.savedSizes(tokens: T, inFeatures: K, recipe: recipe)
    let codes = UnsafeMutablePointer<UInt8>.allocate(capacity: Swift.max(sizes.xCodes, 1))
    let scales = UnsafeMutablePointer<Float>.allocate(capacity: Swift.max(sizes.xScales, 1))
    let scaleBytes = UnsafeMutablePointer<UInt8>.allocate(capacity: Swift.max(sizes.xScaleBytes, 1))
    let indptr = UnsafeMutablePointer<Int64>.allocate(capacity: T + 1)
    let indices = UnsafeMutablePointer<Int32>.allocate(capacity: Swift.max(sizes.residualCapacity, 1))
    let values = UnsafeMutablePointer<Float>.allocate(capacity: Swift.max(sizes.residualCapacity, 1))
    defer {
        codes.deallocate(); scales.deallocate(); scaleBytes.deallocate(); indptr.deallocate(); indices.deallocate()
        values.deallocate()
    }
    let hasResidual = sizes.residualCapacity > 0 || (recipe.occ?.compensate ?? false)
    var saved = LinearSaved(xCodes: sizes.xCodes > 0 ? codes : nil, xCodesCount: sizes.xCodes,
                            xScales: sizes.xScales > 0 ? scales : nil, xScalesCount: sizes.xScales,
                            residualIndptr: hasResidual ? indptr : nil, residualIndices: hasResidual ? indices : nil,
                            residualValues: hasResidual ? values : nil, residualCapacity: sizes.residualCapacity,
                            xScaleBytes: sizes.xScaleBytes > 0 ? scaleBytes : nil, xScaleBytesCount: sizes.xScaleBytes)
    var y = [Float](repeating: .nan, count: T * N)
    var dx = [Float](repeating: .nan, count: T * K)
    var dw = [Float](repeating: .nan, count: N * K)
    var db = [Float](repeating: .nan, count: N)
    let b = bias ?? [0]
    try x.withUnsafeBufferPointer { xp in
        try w.withUnsafeBufferPointer { wp in
            try b.withUnsafeBufferPointer { bp in
                try y.withUnsafeMutableBufferPointer { yp in
                    if prepared {
                        let operand = UnsafeMutablePointer<Float>.allocate(capacity: Swift.max(T * K, 1))
                        defer { operand.deallocate() }
                        try LinearLayer.prepareInput(x: xp.baseAddress!, tokens: T, inFeatures: K, recipe: recipe,
                                                     operand: operand, saved: &saved)
                        try LinearLayer.forwardPrepared(operand: recipe.input == nil ? xp.baseAddress! : UnsafePointer(operand),
                                                        tokens: T, inFeatures: K, w: wp.baseAddress!, outFeatures: N,
                                                        bias: bias == nil ? nil : bp.baseAddress!, recipe: recipe, y: yp.baseAddress!,
                                                        saved: saved)
                    } else {
                        try LinearLayer.forward(x: xp.baseAddress!, tokens: T, inFeatures: K, w: wp.baseAddress!, outFeatures: N,
                                                bias: bias == nil ? nil : bp.baseAddress!, recipe: recipe,
                                                y: yp.baseAddress!, saved: &saved)
                    }
                }
            }
            try dy.withUnsafeBufferPointer { gp in
                try dx.withUnsafeMutableBufferPointer { dxp in
                    try dw.withUnsafeMutableBufferPointer { dwp in
                        try db.withUnsafeMutableBufferPointer { dbp in
                            try LinearLayer.backward(dy: gp.baseAddress!, tokens: T, outFeatures: N,
                                                     x: recipe.savedInput == nil ? xp.baseAddress! : nil, w: wp.baseAddress!,
                                                     inFeatures: K, recipe: recipe, saved: saved,
                                                     dx: dxp.baseAddress!, dw: dwp.baseAddress!,
                                                     db: bias == nil ? nil : dbp.baseAddress!)
                        }
                    }
                }
            }
        }
    }
    return LinearRun(y: y, dx: dx, dw: dw, db: bias == nil ? nil : db,
                     savedCodes: Array(UnsafeBufferPointer(start: codes, count: sizes.xCodes)),
                     savedScales: Array(UnsafeBufferPointer(start: scales, count: sizes.xScales)),
                     residualNNZ: saved.residualNNZ)
}

// MARK: - Double references

private struct LinearReference {
    var y: [Double]
    var dx: [Double]
    var dw: [Double]
    var db: [Double]
}

/// Y = xOp·wOpᵀ + b; dX = g·wOp; dW = (gᵀ·xOp) ⊙ factor; db = Σ_T dY (raw dY), in Double.
private func referenceLinear(xOp: [Double], wOp: [Double], bias: [Float]?, g: [Double], dyRaw: [Float],
                             T: Int, K: Int, N: Int, dgeFactor: [Double]?) -> LinearReference {
    var y = [Double](repeating: 0, count: T * N)
    for t in 0..<T {
        for n in 0..<N {
            var s = bias.map { Double($0[n]) } ?? 0
            for j in 0..<K { s += xOp[t * K + j] * wOp[n * K + j] }
            y[t * N + n] = s
        }
    }
    var dx = [Double](repeating: 0, count: T * K)
    for t in 0..<T {
        for j in 0..<K {
            var s = 0.0
            for n in 0..<N { s += g[t * N + n] * wOp[n * K + j] }
            dx[t * K + j] = s
        }
    }
    var dw = [Double](repeating: 0, count: N * K)
    for n in 0..<N {
        for j in 0..<K {
            var s = 0.0
            for t in 0..<T { s += g[t * N + n] * xOp[t * K + j] }
            dw[n * K + j] = s * (dgeFactor?[n * K + j] ?? 1)
        }
    }
    let db = (0..<N).map { n in (0..<T).reduce(0.0) { $0 + Double(dyRaw[$1 * N + n]) } }
    return LinearReference(y: y, dx: dx, dw: dw, db: db)
}

/// X_c and ΔX = X − X_c (float32) with thresholds from a sorted copy and the spec's indices.
private func referenceOCC(_ x: [Float], T: Int, K: Int, alpha: Double, perRow: Bool) -> ([Float], [Float]) {
    func bounds(_ s: [Float]) -> (Float, Float) {
        let n = s.count
        let lo = Int(floor((1 - alpha) * Double(n)))
        let hi = Swift.min(Int(floor(alpha * Double(n))), n - 1)
        return (s[lo], s[hi])
    }
    let th: [(Float, Float)] = perRow
        ? (0..<T).map { bounds(Array(x[($0 * K)..<($0 * K + K)]).sorted()) }
        : [bounds(x.sorted())]
    var xc = x
    for i in 0..<x.count {
        let (lo, hi) = th[perRow ? i / K : 0]
        if x[i] < lo { xc[i] = lo } else if x[i] > hi { xc[i] = hi }
    }
    return (xc, (0..<x.count).map { x[$0] - xc[$0] })
}

/// Spec §4: min((1/k)·|2x/δ − 1|^(1/k − 1), C) on the grid `table`; 0 above max.
private func referenceDGE(_ v: Double, table: [Double], k: Double, clamp: Double) -> Double {
    let a = abs(v)
    if a > table.last! { return 0 }
    var i = 0
    while i < table.count - 2 && a >= table[i + 1] { i += 1 }
    let lo = table[i], d = table[i + 1] - table[i]
    let t = abs(2 * (a - lo) / d - 1)
    let e = 1 / k - 1
    let p: Double = t == 0 ? (e < 0 ? .infinity : (e == 0 ? 1 : 0)) : pow(t, e)
    return Swift.min(p / k, clamp)
}

private func randomGaussian(_ n: Int, _ rng: inout TestRNG) -> [Float] {
    (0..<n).map { _ in
        let u1 = Double.random(in: Double.leastNormalMagnitude..<1, using: &rng)
        let u2 = Double.random(in: 0..<1, using: &rng)
        return Float((-2 * log(u1)).squareRoot() * cos(2 * Double.pi * u2))
    }
}

/// max|got − want| ≤ 1e-5 · max|want| (absolute 1e-6 when want is all zero).
private func assertClose(_ got: [Float], _ want: [Double], _ message: String,
                         file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertEqual(got.count, want.count, message, file: file, line: line)
    let den = want.map { abs($0) }.max() ?? 0
    let err = zip(got, want).map { abs(Double($0) - $1) }.max() ?? 0
    XCTAssertLessThanOrEqual(err, 1e-5 * Swift.max(den, 0.1), "\(message): max err \(err), max |ref| \(den)",
                             file: file, line: line)
}
