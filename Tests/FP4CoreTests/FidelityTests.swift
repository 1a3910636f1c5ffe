import XCTest
@testable import FP4Core

/// Spec §5 metrics between x and x̂: cosine similarity, MSE = mean((x − x̂)²),
/// SNR = 10·log10(Σx² / Σ(x − x̂)²) dB. Expected values are computed by hand in comments.
final class FidelityTests: XCTestCase {

    private func measure(_ x: [Float], _ y: [Float]) -> Fidelity {
        precondition(x.count == y.count)
        let a = x.isEmpty ? [Float(0)] : x, b = y.isEmpty ? [Float(0)] : y
        return Fidelity.measure(a, b, count: x.count)
    }

    func testSmallHandComputedExample() {
        // x = [1, 2, 3], x̂ = [1, 2, 2]: Σx² = 14, Σx̂² = 9, Σxx̂ = 11, Σe² = 1.
        // cosine = 11/sqrt(14·9) = 11/sqrt(126) = 0.97995788701222...
        // mse = 1/3; snr = 10·log10(14) = 11.4612803567824 dB.
        let m = measure([1, 2, 3], [1, 2, 2])
        XCTAssertEqual(m.cosine, 0.9799578870122228, accuracy: 1e-12)
        XCTAssertEqual(m.mse, 1.0 / 3.0, accuracy: 1e-15)
        XCTAssertEqual(m.snrDB, 11.46128035678238, accuracy: 1e-10)
    }

    func testQuantizationExample() {
        // x = [6, 3, -1.2, 0.2] and its e2m1 fake quantization (s = 1) [6, 3, -1, 0]:
        // e = [0, 0, -0.2, 0.2] (in float32: 1.2f = 1.2000000477, 0.2f = 0.2000000030).
        // Σx² = 36 + 9 + 1.44 + 0.04 = 46.48; Σe² = 0.08; mse = 0.02;
        // snr = 10·log10(46.48/0.08) = 10·log10(581) = 27.6417 dB;
        // cosine = (36 + 9 + 1.2)/sqrt(46.48 · 46) = 46.2/46.2400... = 0.99913...
        let x: [Float] = [6, 3, -1.2, 0.2], y: [Float] = [6, 3, -1, 0]
        let m = measure(x, y)
        XCTAssertEqual(m.mse, 0.02, accuracy: 1e-8)
        XCTAssertEqual(m.snrDB, 27.641761323903307, accuracy: 1e-5)
        XCTAssertEqual(m.cosine, 46.2 / (46.48 * 46.0).squareRoot(), accuracy: 1e-7)
    }

    func testExactReconstruction() {
        let x: [Float] = [0.5, -2, 3, 1e-3]
        let m = measure(x, x)
        XCTAssertEqual(m.cosine, 1, accuracy: 1e-15)
        XCTAssertEqual(m.mse, 0)
        XCTAssertEqual(m.snrDB, .infinity, "exact reconstruction: SNR is +inf")
    }

    func testNegatedAndScaledReconstructions() {
        let x: [Float] = [1, -2, 2, 4]   // Σx² = 25, mean x² = 6.25
        let neg = measure(x, x.map { -$0 })
        // e = 2x: Σe² = 100, mse = 25, snr = 10·log10(25/100) = -6.0206 dB, cosine -1.
        XCTAssertEqual(neg.cosine, -1, accuracy: 1e-15)
        XCTAssertEqual(neg.mse, 25)
        XCTAssertEqual(neg.snrDB, -6.020599913279624, accuracy: 1e-12)
        let half = measure(x, x.map { $0 / 2 })
        // e = x/2: Σe² = 6.25, mse = 1.5625, snr = 10·log10(4) = 6.0206 dB, cosine 1.
        XCTAssertEqual(half.cosine, 1, accuracy: 1e-15)
        XCTAssertEqual(half.mse, 1.5625)
        XCTAssertEqual(half.snrDB, 6.020599913279624, accuracy: 1e-12)
    }

    func testZeroReconstruction() {
        // x̂ = 0: Σe² = Σx², snr = 0 dB; mse = mean x² = (9 + 16)/2 = 12.5.
        let m = measure([3, -4], [0, 0])
        XCTAssertEqual(m.snrDB, 0, accuracy: 1e-15)
        XCTAssertEqual(m.mse, 12.5)
        XCTAssertEqual(m.cosine, 0)
    }

    func testEmptyInput() {
        let m = measure([], [])
        XCTAssertEqual(m.mse, 0)
        XCTAssertFalse(m.mse.isNaN)
        XCTAssertFalse(m.cosine.isNaN)
    }

    /// Float64 accumulation over fixed chunks: bit-identical for any thread count, and
    /// accurate on a sum far beyond float32 precision.
    func testIndependentOfThreadCountAndAccurate() {
        let n = 3 * 65_536 + 5
        // x_i = 1, x̂_i = 1 + (i odd ? 2^-10 : -2^-10): Σe² = n·2^-20, Σx² = n,
        // mse = 2^-20, snr = 10·log10(2^20) = 60.20599913279624 dB.
        let x = [Float](repeating: 1, count: n)
        let y = (0..<n).map { i -> Float in i % 2 == 1 ? 1 + 0x1p-10 : 1 - 0x1p-10 }
        let one = withThreadCount(1) { measure(x, y) }
        XCTAssertEqual(one.mse, 0x1p-20, accuracy: 1e-18)
        XCTAssertEqual(one.snrDB, 60.20599913279624, accuracy: 1e-9)
        // cosine = Σx̂ / sqrt(n · Σx̂²) with Σx̂ = n - 2^-10 (n odd: one extra "-" term), Σx̂² = n(1 + 2^-20) - 2^-9.
        let sy = Double(n) - 0x1p-10, syy = Double(n) * (1 + 0x1p-20) - 0x1p-9
        XCTAssertEqual(one.cosine, sy / (Double(n) * syy).squareRoot(), accuracy: 1e-12)
        for t in [2, 3] {
            let m = withThreadCount(t) { measure(x, y) }
            XCTAssertEqual(m, one, "\(t) threads vs 1")
        }
    }
}
