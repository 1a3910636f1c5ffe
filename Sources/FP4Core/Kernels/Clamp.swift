/// OCC's clamp (numerics.md §5) in one place: the threshold pair and the row kernels that
/// apply it (fused with the row amax for the quantizer, with the outlier count for the CSR
/// residual).
///
/// Two expressions exist and both stay: `minMax` (min(max(x, lo), hi), the spec's) and
/// `select` (x < lo ? lo : x > hi ? hi : x, `OCC.clampAndResidual`'s). They differ only in
/// the sign of a zero at a zero threshold; each caller keeps the one its results were
/// recorded with (the compensated path uses `select`, the others `minMax`).

/// Two-sided clamp thresholds of one OCC group.
public struct OCCThresholds: Sendable, Equatable {
    /// Values below `lo` are clamped up to it.
    public var lo: Float
    /// Values above `hi` are clamped down to it.
    public var hi: Float
    public init(lo: Float, hi: Float) {
        self.lo = lo
        self.hi = hi
    }
}

enum ClampKernel {
    /// min(max(x, lo), hi).
    @inline(__always)
    static func minMax(_ x: Float, _ lo: Float, _ hi: Float) -> Float { Swift.min(Swift.max(x, lo), hi) }

    /// x < lo ? lo : (x > hi ? hi : x): a value not clamped is copied bit for bit.
    @inline(__always)
    static func select(_ x: Float, _ lo: Float, _ hi: Float) -> Float { x < lo ? lo : (x > hi ? hi : x) }

    /// `clampRow` that also returns max |tile[i]| as bits (`rowAmax` of a one-group row).
    @inline(__always)
    static func clampRowAmax(_ x: UnsafePointer<Float>, _ tile: UnsafeMutablePointer<Float>, _ n: Int, _ lo: Float, _ hi: Float,
                             _ useMinMax: Bool) -> UInt32 {
        var m: UInt32 = 0
        if useMinMax {
            for i in 0..<n {
                let c = minMax(x[i], lo, hi)
                tile[i] = c
                m = Swift.max(m, c.bitPattern & 0x7FFF_FFFF)
            }
        } else {
            for i in 0..<n {
                let c = select(x[i], lo, hi)
                tile[i] = c
                m = Swift.max(m, c.bitPattern & 0x7FFF_FFFF)
            }
        }
        return m
    }

    /// tile[i] = x[i] clamped to [lo, hi] (`minMax` or `select`).
    @inline(__always)
    static func clampRow(_ x: UnsafePointer<Float>, _ tile: UnsafeMutablePointer<Float>, _ n: Int, _ lo: Float, _ hi: Float,
                         _ useMinMax: Bool) {
        if useMinMax {
            for i in 0..<n { tile[i] = minMax(x[i], lo, hi) }
        } else {
            for i in 0..<n { tile[i] = select(x[i], lo, hi) }
        }
    }

    /// `OCC.countRow`, and cr[c] = x < lo ? lo : (x > hi ? hi : x) (a value not clamped is copied
    /// bit for bit).
    @inline(__always)
    static func clampCountRow(_ xr: UnsafePointer<Float>, _ cr: UnsafeMutablePointer<Float>, _ cols: Int,
                              _ lo: Float, _ hi: Float) -> Int32 {
        var count: Int32 = 0
        for c in 0..<cols {
            let v = xr[c]
            let below = v < lo, above = v > hi
            count &+= (below ? 1 : 0) &+ (above ? 1 : 0)
            cr[c] = below ? lo : (above ? hi : v)  // `select`, sharing the count's comparisons
        }
        return count
    }
}
