/// Outlier clamping and compensation of Wang et al. (numerics.md §5).
///
/// Thresholds are order statistics of a group (the whole tensor or one row), found by
/// `OrderStatistics` (Math/): exact selection on order-preserving integer keys, no full sort.
/// The clamp and the CSR residual ΔX = X − X_c are in OCCResidual.swift; the sparse products
/// the linear layer needs (ΔX·W_qᵀ) in OCCSparseProducts.swift.
///
/// Every kernel partitions its output over threads (rows, output columns) with a fixed
/// accumulation order per element, so results are bit-identical for any thread count.
public enum OCC {
    // MARK: - Thresholds

    /// Indices of the order statistics: lo = floor((1 − α)·n), hi = min(floor(α·n), n − 1),
    /// computed in Double exactly like that. α is meant to be in (0.5, 1]; other values are
    /// clamped into [0.5, 1] so the indices stay in range. For n ≤ 0 returns (0, −1).
    public static func quantileIndices(count n: Int, alpha: Double) -> (lo: Int, hi: Int) {
        guard n > 0 else { return (0, -1) }
        let a = alpha.isNaN ? 1 : Swift.min(Swift.max(alpha, 0.5), 1)
        let dn = Double(n)
        let loD = ((1 - a) * dn).rounded(.down)
        let hiD = (a * dn).rounded(.down)
        let lo = loD < dn ? Swift.min(Int(loD), n - 1) : n - 1
        let hi = hiD < dn ? Swift.min(Int(hiD), n - 1) : n - 1
        return (Swift.max(0, lo), Swift.max(0, hi))
    }

    /// Exact thresholds per group (the whole tensor when `perRow == false` → 1 entry; else one
    /// per row): lo = sorted[loIndex], hi = sorted[hiIndex] of `quantileIndices`, by O(n)
    /// selection (not a full sort). An empty tensor (rows·cols == 0) has no groups: returns [].
    /// Values are ordered as numbers with −0 just below +0, so a zero threshold may be either
    /// sign (equal as a value to the sorted reference).
    ///
    /// Throws `FP4Error(.invalidArgument)` unless 0.5 < α ≤ 1 and the shape is valid, and
    /// `FP4Error(.nonFinite)` naming the first flat index of a NaN or ±inf.
    public static func thresholds(_ x: UnsafePointer<Float>, rows: Int, cols: Int, alpha: Double,
                                  perRow: Bool) throws -> [OCCThresholds] {
        guard alpha > 0.5 && alpha <= 1 else {
            throw FP4Error(.invalidArgument, "OCC alpha must be in (0.5, 1], got \(alpha)")
        }
        guard rows >= 0, cols >= 0 else {
            throw FP4Error(.invalidArgument, "OCC needs a non-negative shape, got \(rows) × \(cols)")
        }
        let (total, overflow) = rows.multipliedReportingOverflow(by: cols)
        guard !overflow else { throw FP4Error(.invalidArgument, "OCC shape \(rows) × \(cols) overflows") }
        if total == 0 { return [] }

        if !perRow {
            let (lo, hi) = quantileIndices(count: total, alpha: alpha)
            return [try selectGroup(x, count: total, base: 0, rankLo: lo, rankHi: hi)]
        }

        let (lo, hi) = quantileIndices(count: cols, alpha: alpha)
        var out = [OCCThresholds](repeating: OCCThresholds(lo: 0, hi: 0), count: rows)
        if rows < 2 * Parallel.threadCount && cols >= OrderStatistics.parallelSelectMin {
            // Few long rows: each row gets the whole thread pool.
            for r in 0..<rows {
                out[r] = try selectGroup(x + r * cols, count: cols, base: r * cols, rankLo: lo, rankHi: hi)
            }
            return out
        }
        // Many rows: one exact serial selection per row, rows spread over the workers.
        var bad = [UInt8](repeating: 0, count: rows)
        out.withUnsafeMutableBufferPointer { op in
            bad.withUnsafeMutableBufferPointer { bp in
                let op = op.baseAddress!, bp = bp.baseAddress!
                Parallel.forChunks(count: rows, grain: Parallel.grain(count: rows, minItems: Swift.max(1, 16384 / cols))) { range in
                    let keys = UnsafeMutablePointer<UInt32>.allocate(capacity: cols)
                    let hist = UnsafeMutablePointer<UInt32>.allocate(capacity: OrderStatistics.radixBins)
                    defer { keys.deallocate(); hist.deallocate() }
                    for r in range {
                        if let (ka, kb) = OrderStatistics.selectSerial(x + r * cols, cols, lo, hi, keys: keys, hist: hist) {
                            op[r] = OCCThresholds(lo: OrderStatistics.floatFromKey(ka), hi: OrderStatistics.floatFromKey(kb))
                        } else {
                            bp[r] = 1
                        }
                    }
                }
            }
        }
        if let r = bad.firstIndex(of: 1) { throw nonFiniteError(x + r * cols, cols, base: r * cols) }
        return out
    }

    /// Upper bound on the residual's non-zeros: Σ over groups of (loIndex + (n − 1 − hiIndex)).
    /// At most loIndex values lie strictly below sorted[loIndex], and at most n − 1 − hiIndex
    /// strictly above sorted[hiIndex]. Returns 0 for an empty or invalid shape.
    public static func residualCapacity(rows: Int, cols: Int, alpha: Double, perRow: Bool) -> Int {
        guard rows > 0, cols > 0 else { return 0 }
        let (total, overflow) = rows.multipliedReportingOverflow(by: cols)
        guard !overflow else { return 0 }
        if perRow {
            let (lo, hi) = quantileIndices(count: cols, alpha: alpha)
            return rows * (lo + (cols - 1 - hi))
        }
        let (lo, hi) = quantileIndices(count: total, alpha: alpha)
        return lo + (total - 1 - hi)
    }

    static func nonFiniteError(_ x: UnsafePointer<Float>, _ n: Int, base: Int) -> FP4Error {
        for i in 0..<n where !x[i].isFinite {
            return FP4Error(.nonFinite, "OCC thresholds: non-finite value (\(x[i])) at flat index \(base + i)")
        }
        return FP4Error(.nonFinite, "OCC thresholds: non-finite value in the group starting at flat index \(base)")
    }

    /// Thresholds of one group x[0..<n], n > 0; errors name flat indices from `base`.
    static func selectGroup(_ x: UnsafePointer<Float>, count n: Int, base: Int, rankLo: Int, rankHi: Int) throws -> OCCThresholds {
        let keys: (UInt32, UInt32)?
        switch OrderStatistics.selectTails(x, n, rankLo, rankHi) {
        case .keys(let ka, let kb): return OCCThresholds(lo: OrderStatistics.floatFromKey(ka), hi: OrderStatistics.floatFromKey(kb))
        case .nonFinite: throw nonFiniteError(x, n, base: base)
        case .undecided: break
        }
        if n >= OrderStatistics.parallelSelectMin {
            keys = OrderStatistics.selectParallel(x, n, rankLo, rankHi)
        } else {
            let k = UnsafeMutablePointer<UInt32>.allocate(capacity: n)
            let h = UnsafeMutablePointer<UInt32>.allocate(capacity: OrderStatistics.radixBins)
            defer { k.deallocate(); h.deallocate() }
            keys = OrderStatistics.selectSerial(x, n, rankLo, rankHi, keys: k, hist: h)
        }
        guard let (ka, kb) = keys else { throw nonFiniteError(x, n, base: base) }
        return OCCThresholds(lo: OrderStatistics.floatFromKey(ka), hi: OrderStatistics.floatFromKey(kb))
    }
}
