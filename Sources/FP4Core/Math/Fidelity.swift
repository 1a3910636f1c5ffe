#if canImport(Glibc)
import Glibc
#endif

/// Reconstruction quality between x and x̂ (numerics.md §5), the metrics of Wang et al. Table 1.
public struct Fidelity: Sendable, Equatable {
    /// Σ x·x̂ / (‖x‖ ‖x̂‖); 1 when both are all-zero, 0 when exactly one is.
    public var cosine: Double
    /// mean((x − x̂)²); 0 for empty input.
    public var mse: Double
    /// 10·log10(Σx² / Σ(x − x̂)²) in dB; +inf for an exact reconstruction.
    public var snrDB: Double

    /// Accumulates in float64 over fixed chunks summed in order, so the result does not
    /// depend on the thread count.
    public static func measure(_ x: UnsafePointer<Float>, _ xHat: UnsafePointer<Float>, count n: Int) -> Fidelity {
        let chunk = 1 << 16
        let chunks = (n + chunk - 1) / chunk
        var partial = [Double](repeating: 0, count: 4 * Swift.max(chunks, 1))
        partial.withUnsafeMutableBufferPointer { p in
            guard let pp = p.baseAddress else { return }
            Parallel.forChunks(count: n, grain: chunk) { range in
                var xx = 0.0, hh = 0.0, xh = 0.0, ee = 0.0
                for i in range {
                    let a = Double(x[i]), b = Double(xHat[i])
                    xx += a * a; hh += b * b; xh += a * b
                    let d = a - b
                    ee += d * d
                }
                let c = range.lowerBound / chunk
                pp[4 * c] = xx; pp[4 * c + 1] = hh; pp[4 * c + 2] = xh; pp[4 * c + 3] = ee
            }
        }
        var xx = 0.0, hh = 0.0, xh = 0.0, ee = 0.0
        for c in 0..<chunks {
            xx += partial[4 * c]; hh += partial[4 * c + 1]; xh += partial[4 * c + 2]; ee += partial[4 * c + 3]
        }
        let cosine: Double
        if xx == 0 && hh == 0 { cosine = 1 } else if xx == 0 || hh == 0 { cosine = 0 } else { cosine = xh / (xx.squareRoot() * hh.squareRoot()) }
        let mse = n > 0 ? ee / Double(n) : 0
        let snr: Double = ee == 0 ? .infinity : 10 * log10(xx / ee)
        return Fidelity(cosine: cosine, mse: mse, snrDB: snr)
    }
}
