#if canImport(Glibc)
import Glibc
#endif
#if arch(x86_64)
import _Builtin_intrinsics.intel
#endif

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

/// Outlier clamping and compensation of Wang et al. (spec §5).
///
/// Thresholds are order statistics of a group (the whole tensor or one row), found by exact
/// selection on order-preserving integer keys, no full sort: for thin tails (α near 1) a
/// sampled candidate filter plus a counting check (`selectTails`) or, on short rows, two small
/// sorted tail buffers (`selectSmallTails`); otherwise (or when the check fails) a radix select. The residual
/// ΔX = X − X_c is kept as CSR (row pointers, column indices, float32 values), and the
/// sparse products the linear layer needs (ΔX·W_qᵀ, dYᵀ·ΔX) work on it directly.
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
        if rows < 2 * Parallel.threadCount && cols >= parallelSelectMin {
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
                    let hist = UnsafeMutablePointer<UInt32>.allocate(capacity: radixBins)
                    defer { keys.deallocate(); hist.deallocate() }
                    for r in range {
                        if let (ka, kb) = selectSerial(x + r * cols, cols, lo, hi, keys: keys, hist: hist) {
                            op[r] = OCCThresholds(lo: floatFromKey(ka), hi: floatFromKey(kb))
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

    // MARK: - Clamp and residual

    /// xc = min(max(x, lo), hi) elementwise (thresholds[0] for every row, or thresholds[r] for
    /// row r when thresholds.count == rows), and the residual x − xc as CSR: `indptr[rows + 1]`,
    /// column `indices`, `values`, with at most `capacity` entries. An entry is stored exactly
    /// where x < lo or x > hi, in ascending column order within each row. Values that are not
    /// clamped are copied to `xc` bit for bit (a −0 stays −0). Returns the entry count (nnz).
    ///
    /// `xc` may be nil (then only the residual is produced). Throws `.invalidArgument` for a
    /// bad shape, a threshold count that is neither 1 nor `rows`, a threshold pair that is not
    /// lo ≤ hi, or when the residual needs more than `capacity` entries (then `xc` may already
    /// be written, and the CSR buffers are unspecified). A residual |x − threshold| above the
    /// float32 range is stored as ±inf.
    public static func clampAndResidual(_ x: UnsafePointer<Float>, rows: Int, cols: Int, thresholds: [OCCThresholds],
                                        clamped xc: UnsafeMutablePointer<Float>?,
                                        indptr: UnsafeMutablePointer<Int64>, indices: UnsafeMutablePointer<Int32>,
                                        values: UnsafeMutablePointer<Float>, capacity: Int) throws -> Int {
        guard rows >= 0, cols >= 0 else {
            throw FP4Error(.invalidArgument, "OCC needs a non-negative shape, got \(rows) × \(cols)")
        }
        guard capacity >= 0 else { throw FP4Error(.invalidArgument, "OCC residual capacity must be ≥ 0, got \(capacity)") }
        guard cols <= Int(Int32.max) else {
            throw FP4Error(.invalidArgument, "OCC residual column indices are int32: cols \(cols) is too large")
        }
        let (total, overflow) = rows.multipliedReportingOverflow(by: cols)
        guard !overflow else { throw FP4Error(.invalidArgument, "OCC shape \(rows) × \(cols) overflows") }
        if total == 0 {
            indptr.update(repeating: 0, count: rows + 1)
            return 0
        }
        let perRow = thresholds.count == rows && rows != 1
        guard thresholds.count == 1 || perRow else {
            throw FP4Error(.invalidArgument,
                           "OCC needs 1 threshold pair or one per row (\(rows)), got \(thresholds.count)")
        }
        for (g, t) in thresholds.enumerated() where !(t.lo <= t.hi) {
            throw FP4Error(.invalidArgument, "OCC thresholds of group \(g) must satisfy lo ≤ hi, got lo \(t.lo), hi \(t.hi)")
        }

        let grain = Parallel.grain(count: rows, minItems: Swift.max(1, 32768 / cols))
        thresholds.withUnsafeBufferPointer { tb in
            // Plain locals: a loop that reads captured state may reload it per element.
            let tp = tb.baseAddress!, x = x, xc = xc, indptr = indptr, cols = cols, perRow = perRow
            // Pass 1: clamp and count the entries of each row into indptr[r + 1].
            Parallel.forChunks(count: rows, grain: grain) { range in
                for r in range {
                    let t = tp[perRow ? r : 0]
                    let xr = x + r * cols
                    let count: Int32
                    if let xc {
                        count = clampCountRow(xr, xc + r * cols, cols, t.lo, t.hi)
                    } else {
                        count = countRow(xr, cols, t.lo, t.hi)
                    }
                    indptr[r + 1] = Int64(count)
                }
            }
        }
        indptr[0] = 0
        var nnz: Int64 = 0
        for r in 0..<rows {
            nnz += indptr[r + 1]
            indptr[r + 1] = nnz
        }
        guard nnz <= Int64(capacity) else {
            throw FP4Error(.invalidArgument, "OCC residual needs \(nnz) entries but capacity is \(capacity)")
        }
        // Pass 2: fill the rows that have entries.
        thresholds.withUnsafeBufferPointer { tb in
            let tp = tb.baseAddress!, x = x, indptr = UnsafePointer(indptr), indices = indices, values = values
            let cols = cols, perRow = perRow
            Parallel.forChunks(count: rows, grain: grain) { range in
                for r in range {
                    let p = Int(indptr[r])
                    guard Int(indptr[r + 1]) > p else { continue }
                    let t = tp[perRow ? r : 0]
                    fillRow(x + r * cols, cols, t.lo, t.hi, indices + p, values + p)
                }
            }
        }
        return Int(nnz)
    }

    /// Entries of one row outside [lo, hi] (lo ≤ hi: at most one comparison holds per value).
    /// A sum of comparison bits in 32-bit lanes, so the loop is a vector compare and add.
    @inline(__always)
    static func countRow(_ xr: UnsafePointer<Float>, _ cols: Int, _ lo: Float, _ hi: Float) -> Int32 {
        var count: Int32 = 0
        for c in 0..<cols {
            let v = xr[c]
            count &+= (v < lo ? 1 : 0) &+ (v > hi ? 1 : 0)
        }
        return count
    }

    /// `countRow`, and cr[c] = x < lo ? lo : (x > hi ? hi : x) (a value not clamped is copied
    /// bit for bit).
    @inline(__always)
    static func clampCountRow(_ xr: UnsafePointer<Float>, _ cr: UnsafeMutablePointer<Float>, _ cols: Int,
                              _ lo: Float, _ hi: Float) -> Int32 {
        var count: Int32 = 0
        for c in 0..<cols {
            let v = xr[c]
            let below = v < lo, above = v > hi
            count &+= (below ? 1 : 0) &+ (above ? 1 : 0)
            cr[c] = below ? lo : (above ? hi : v)
        }
        return count
    }

    /// Writes the entries of one row (columns with x < lo or x > hi, ascending; value x − lo or
    /// x − hi) to indices/values. Blocks of 16 values are compared as vectors into a bit mask
    /// (`laneMask16`),
    /// and only its set bits are visited (outliers are ~2(1 − α) of the values).
    @inline(__always)
    static func fillRow(_ xr: UnsafePointer<Float>, _ cols: Int, _ lo: Float, _ hi: Float,
                        _ indices: UnsafeMutablePointer<Int32>, _ values: UnsafeMutablePointer<Float>) {
        typealias V = SIMD16<Float>
        let vLo = V(repeating: lo), vHi = V(repeating: hi)
        let raw = UnsafeRawPointer(xr)
        var p = 0, start = 0
        while start + 16 <= cols {
            let v = raw.loadUnaligned(fromByteOffset: start * 4, as: V.self)
            let lanes = (v .< vLo)._storage | (v .> vHi)._storage
            var m = laneMask16(lanes)
            if m != 0 {
                repeat {
                    let c = start &+ m.trailingZeroBitCount
                    let x = xr[c]
                    indices[p] = Int32(truncatingIfNeeded: c)
                    values[p] = x - (x < lo ? lo : hi)
                    p &+= 1
                    m &= m &- 1
                } while m != 0
            }
            start += 16
        }
        for c in start..<cols {
            let x = xr[c]
            if x < lo || x > hi {
                indices[p] = Int32(truncatingIfNeeded: c)
                values[p] = x - (x < lo ? lo : hi)
                p &+= 1
            }
        }
    }

    /// Bit i set where lane i of a comparison result (−1 or 0) is set. The lanes narrowed to
    /// bytes; on x86-64 one pmovmskb (SSE2), elsewhere two 8-byte words and a multiply that
    /// gathers the low bit of each byte into the top byte.
    @inline(__always)
    static func laneMask16(_ lanes: SIMD16<Int32>) -> UInt64 {
        let bytes = SIMD16<UInt8>(truncatingIfNeeded: lanes)
        #if arch(x86_64)
        return UInt64(UInt32(bitPattern: _mm_movemask_epi8(unsafeBitCast(bytes, to: SIMD2<Int64>.self))))
        #else
        let w = unsafeBitCast(bytes, to: SIMD2<UInt64>.self)
        let lo8 = ((w[0] & 0x0101_0101_0101_0101) &* 0x0102_0408_1020_4080) >> 56
        let hi8 = ((w[1] & 0x0101_0101_0101_0101) &* 0x0102_0408_1020_4080) >> 56
        return lo8 | hi8 << 8
        #endif
    }

    // MARK: - Sparse products

    /// y[rows, n] += R · wᵀ, where R is the CSR [rows, cols] and w is row-major [n, cols]
    /// (sparse × dense in float32: the compensation term ΔX·W_qᵀ). Each y[r, j] adds the
    /// products v·w[j, c] of row r's entries in storage order. Entries whose column lies
    /// outside 0..<cols, and rows whose pointers decrease, are skipped.
    ///
    /// Work is split into panels of output columns j (and blocks of rows when there are few
    /// panels). A panel packs the columns of w that R uses, transposed, so the inner loop is a
    /// contiguous axpy. Multi-threaded; the per-element order does not depend on the split.
    public static func csrMatmulTransposed(indptr: UnsafePointer<Int64>, indices: UnsafePointer<Int32>, values: UnsafePointer<Float>,
                                           rows: Int, cols: Int, w: UnsafePointer<Float>, n: Int, into y: UnsafeMutablePointer<Float>) {
        guard rows > 0, cols > 0, n > 0, indptr[rows] > indptr[0] else { return }
        let (slot, used) = usedColumns(indptr: indptr, indices: indices, rows: rows, cols: cols)
        let u = used.count
        guard u > 0 else { return }
        let jw = panelWidth(n: n, used: u)
        let panels = (n + jw - 1) / jw
        let rowBlocks = Swift.max(1, Swift.min(rows, (2 * Parallel.threadCount + panels - 1) / panels))
        let rowsPer = (rows + rowBlocks - 1) / rowBlocks
        slot.withUnsafeBufferPointer { sb in
            used.withUnsafeBufferPointer { ub in
                let slot = sb.baseAddress!, used = ub.baseAddress!
                Parallel.forChunks(count: panels * rowBlocks, grain: 1) { tasks in
                    let panel = UnsafeMutablePointer<Float>.allocate(capacity: u * jw)
                    defer { panel.deallocate() }
                    for task in tasks {
                        let j0 = (task / rowBlocks) * jw, jn = Swift.min(jw, n - j0)
                        let r0 = (task % rowBlocks) * rowsPer, r1 = Swift.min(rows, r0 + rowsPer)
                        guard r1 > r0, indptr[r1] > indptr[r0] else { continue }
                        // panel[s, j] = w[j0 + j, used[s]], 16 rows of w at a time.
                        var jb = 0
                        while jb < jn {
                            let je = Swift.min(jb + 16, jn)
                            for s in 0..<u {
                                let c = Int(used[s])
                                let dst = panel + s * jw
                                for j in jb..<je { dst[j] = w[(j0 + j) * cols + c] }
                            }
                            jb = je
                        }
                        for r in r0..<r1 {
                            let a = Int(indptr[r]), b = Int(indptr[r + 1])
                            guard b > a else { continue }
                            let yr = y + r * n + j0
                            // Four entries per sweep over y (same order of additions as one
                            // axpy per entry, a quarter of the y traffic).
                            var q = 0
                            var srcs: (UnsafePointer<Float>, UnsafePointer<Float>, UnsafePointer<Float>, UnsafePointer<Float>)
                                = (UnsafePointer(panel), UnsafePointer(panel), UnsafePointer(panel), UnsafePointer(panel))
                            var v4: SIMD4<Float> = .zero
                            for k in a..<b {
                                let c = Int(indices[k])
                                guard c >= 0 && c < cols else { continue }
                                let p = UnsafePointer(panel + Int(slot[c]) * jw)
                                switch q {
                                case 0: srcs.0 = p
                                case 1: srcs.1 = p
                                case 2: srcs.2 = p
                                default: srcs.3 = p
                                }
                                v4[q] = values[k]
                                q += 1
                                if q == 4 {
                                    axpy4(v4, srcs.0, srcs.1, srcs.2, srcs.3, yr, jn)
                                    q = 0
                                }
                            }
                            if q > 0 { axpy(v4[0], srcs.0, yr, jn) }
                            if q > 1 { axpy(v4[1], srcs.1, yr, jn) }
                            if q > 2 { axpy(v4[2], srcs.2, yr, jn) }
                        }
                    }
                }
            }
        }
    }

    /// out[n, cols] += gᵀ · R, where g is row-major [rows, n] and R the CSR [rows, cols]
    /// (dense × sparse: the dYᵀ·ΔX term of the weight gradient). Each out[j, c] adds the
    /// products g[r, j]·v of column c's entries in ascending row order (storage order within
    /// a row). Invalid columns and decreasing row pointers are skipped.
    ///
    /// Work is split into panels of rows j of out (and blocks of used columns when there are
    /// few panels). A panel holds out[j, c] of the used columns transposed, streams g and the
    /// CSR once, and accumulates with contiguous axpys. Multi-threaded; the per-element order
    /// does not depend on the split.
    public static func denseTransposedTimesCSR(_ g: UnsafePointer<Float>, rows: Int, n: Int,
                                               indptr: UnsafePointer<Int64>, indices: UnsafePointer<Int32>, values: UnsafePointer<Float>,
                                               cols: Int, into out: UnsafeMutablePointer<Float>) {
        guard rows > 0, cols > 0, n > 0, indptr[rows] > indptr[0] else { return }
        let (slot, used) = usedColumns(indptr: indptr, indices: indices, rows: rows, cols: cols)
        let u = used.count
        guard u > 0 else { return }
        let jw = panelWidth(n: n, used: u)
        let panels = (n + jw - 1) / jw
        let colBlocks = Swift.max(1, Swift.min(u, (2 * Parallel.threadCount + panels - 1) / panels))
        let slotsPer = (u + colBlocks - 1) / colBlocks
        slot.withUnsafeBufferPointer { sb in
            used.withUnsafeBufferPointer { ub in
                let slot = sb.baseAddress!, used = ub.baseAddress!
                Parallel.forChunks(count: panels * colBlocks, grain: 1) { tasks in
                    let panel = UnsafeMutablePointer<Float>.allocate(capacity: slotsPer * jw)
                    defer { panel.deallocate() }
                    for task in tasks {
                        let j0 = (task / colBlocks) * jw, jn = Swift.min(jw, n - j0)
                        let s0 = (task % colBlocks) * slotsPer, s1 = Swift.min(u, s0 + slotsPer)
                        guard s1 > s0 else { continue }
                        // panel[s − s0, j] = out[j0 + j, used[s]], 16 rows of out at a time.
                        var jb = 0
                        while jb < jn {
                            let je = Swift.min(jb + 16, jn)
                            for s in s0..<s1 {
                                let c = Int(used[s])
                                let p = panel + (s - s0) * jw
                                for j in jb..<je { p[j] = out[(j0 + j) * cols + c] }
                            }
                            jb = je
                        }
                        let lo = Int32(s0), hi = Int32(s1)
                        for r in 0..<rows {
                            let a = Int(indptr[r]), b = Int(indptr[r + 1])
                            guard b > a else { continue }
                            let gr = g + r * n + j0
                            // Four entries per sweep over g's row (each panel row still gets
                            // its additions in entry order).
                            var q = 0
                            var dsts = (panel, panel, panel, panel)
                            var v4: SIMD4<Float> = .zero
                            for k in a..<b {
                                let c = Int(indices[k])
                                guard c >= 0 && c < cols else { continue }
                                let s = slot[c]
                                guard s >= lo && s < hi else { continue }
                                let p = panel + Int(s - lo) * jw
                                switch q {
                                case 0: dsts.0 = p
                                case 1: dsts.1 = p
                                case 2: dsts.2 = p
                                default: dsts.3 = p
                                }
                                v4[q] = values[k]
                                q += 1
                                if q == 4 {
                                    scatter4(v4, gr, dsts.0, dsts.1, dsts.2, dsts.3, jn)
                                    q = 0
                                }
                            }
                            if q > 0 { axpy(v4[0], gr, dsts.0, jn) }
                            if q > 1 { axpy(v4[1], gr, dsts.1, jn) }
                            if q > 2 { axpy(v4[2], gr, dsts.2, jn) }
                        }
                        jb = 0
                        while jb < jn {
                            let je = Swift.min(jb + 16, jn)
                            for s in s0..<s1 {
                                let c = Int(used[s])
                                let p = panel + (s - s0) * jw
                                for j in jb..<je { out[(j0 + j) * cols + c] = p[j] }
                            }
                            jb = je
                        }
                    }
                }
            }
        }
    }

    /// y[j] = (((y[j] + v.x·a[j]) + v.y·b[j]) + v.z·c[j]) + v.w·d[j]: four axpys in one sweep,
    /// with the additions in the same order as four separate ones.
    @inline(__always)
    static func axpy4(_ v: SIMD4<Float>, _ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ c: UnsafePointer<Float>,
                      _ d: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, _ n: Int) {
        let v0 = v[0], v1 = v[1], v2 = v[2], v3 = v[3]
        for j in 0..<n {
            var t = y[j]
            t += v0 * a[j]
            t += v1 * b[j]
            t += v2 * c[j]
            t += v3 * d[j]
            y[j] = t
        }
    }

    /// a[j] += v.x·g[j]; b[j] += v.y·g[j]; c[j] += v.z·g[j]; d[j] += v.w·g[j], one sweep over g.
    /// The destinations may coincide (a column twice in a row): the updates apply in order.
    @inline(__always)
    static func scatter4(_ v: SIMD4<Float>, _ g: UnsafePointer<Float>, _ a: UnsafeMutablePointer<Float>,
                         _ b: UnsafeMutablePointer<Float>, _ c: UnsafeMutablePointer<Float>,
                         _ d: UnsafeMutablePointer<Float>, _ n: Int) {
        let v0 = v[0], v1 = v[1], v2 = v[2], v3 = v[3]
        if a == b || a == c || a == d || b == c || b == d || c == d {
            axpy(v0, g, a, n); axpy(v1, g, b, n); axpy(v2, g, c, n); axpy(v3, g, d, n)
            return
        }
        for j in 0..<n {
            let x = g[j]
            a[j] += v0 * x
            b[j] += v1 * x
            c[j] += v2 * x
            d[j] += v3 * x
        }
    }

    /// Columns of the CSR that hold valid entries, ascending, and slot[c] = position of c among
    /// them (−1 when unused).
    static func usedColumns(indptr: UnsafePointer<Int64>, indices: UnsafePointer<Int32>,
                            rows: Int, cols: Int) -> (slot: [Int32], used: [Int32]) {
        var slot = [Int32](repeating: -1, count: cols)
        var used = [Int32]()
        slot.withUnsafeMutableBufferPointer { sb in
            let s = sb.baseAddress!
            for r in 0..<rows {
                let a = Int(indptr[r]), b = Int(indptr[r + 1])
                guard b > a else { continue }
                for k in a..<b {
                    let c = Int(indices[k])
                    if c >= 0 && c < cols { s[c] = 0 }
                }
            }
            for c in 0..<cols where s[c] == 0 {
                s[c] = Int32(used.count)
                used.append(Int32(c))
            }
        }
        return (slot, used)
    }

    /// Floats per packed panel of the sparse products (4 MB measured best on 2M-element
    /// residuals; tests lower it to exercise several panels on small inputs).
    nonisolated(unsafe) static var panelFloats = 1 << 20

    /// Width of a panel of output columns: about `panelFloats` floats for `used` packed
    /// columns, a multiple of 16 (at least 16), at most n.
    static func panelWidth(n: Int, used: Int) -> Int {
        let fit = (panelFloats / Swift.max(used, 1)) / 16 * 16
        return Swift.min(n, Swift.max(16, fit))
    }

    /// x[rows, cols] += R (scatter the residual back into a dense matrix). Invalid columns and
    /// decreasing row pointers are skipped. Multi-threaded over rows.
    public static func scatterAdd(indptr: UnsafePointer<Int64>, indices: UnsafePointer<Int32>, values: UnsafePointer<Float>,
                                  rows: Int, cols: Int, into x: UnsafeMutablePointer<Float>) {
        guard rows > 0, cols > 0 else { return }
        Parallel.forChunks(count: rows, grain: Parallel.grain(count: rows, minItems: 64)) { range in
            for r in range {
                let a = Int(indptr[r]), b = Int(indptr[r + 1])
                guard b > a else { continue }
                let xr = x + r * cols
                for k in a..<b {
                    let c = Int(indices[k])
                    guard c >= 0 && c < cols else { continue }
                    xr[c] += values[k]
                }
            }
        }
    }

    // MARK: - Internals

    /// y[0..<n] += v · s[0..<n], in element order (vectorizable).
    @inline(__always)
    static func axpy(_ v: Float, _ s: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, _ n: Int) {
        for j in 0..<n { y[j] += v * s[j] }
    }

    /// Groups at least this long are selected with the parallel radix select.
    static let parallelSelectMin = 1 << 16
    /// Candidate sets at most this long finish with an insertion sort.
    static let smallSort = 48
    /// Bins of the widest radix digit (11 bits).
    static let radixBins = 2048

    /// Order-preserving key: unsigned key order is float order (−0 sorts just below +0).
    @inline(__always)
    static func orderKey(_ bits: UInt32) -> UInt32 {
        bits ^ (UInt32(bitPattern: Int32(bitPattern: bits) >> 31) | 0x8000_0000)
    }

    @inline(__always)
    static func floatFromKey(_ k: UInt32) -> Float {
        Float(bitPattern: k & 0x8000_0000 != 0 ? k ^ 0x8000_0000 : ~k)
    }

    /// Top-11-bit buckets of keys of NaN/±inf: 0...3 (negative) and 2044...2047 (positive);
    /// every finite value lands in 4...2043.
    @inline(__always)
    static func hasNonFinite(_ hist: UnsafePointer<UInt32>) -> Bool {
        (hist[0] | hist[1] | hist[2] | hist[3] | hist[2044] | hist[2045] | hist[2046] | hist[2047]) != 0
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
        switch selectTails(x, n, rankLo, rankHi) {
        case .keys(let ka, let kb): return OCCThresholds(lo: floatFromKey(ka), hi: floatFromKey(kb))
        case .nonFinite: throw nonFiniteError(x, n, base: base)
        case .undecided: break
        }
        if n >= parallelSelectMin {
            keys = selectParallel(x, n, rankLo, rankHi)
        } else {
            let k = UnsafeMutablePointer<UInt32>.allocate(capacity: n)
            let h = UnsafeMutablePointer<UInt32>.allocate(capacity: radixBins)
            defer { k.deallocate(); h.deallocate() }
            keys = selectSerial(x, n, rankLo, rankHi, keys: k, hist: h)
        }
        guard let (ka, kb) = keys else { throw nonFiniteError(x, n, base: base) }
        return OCCThresholds(lo: floatFromKey(ka), hi: floatFromKey(kb))
    }

    // MARK: Tail select

    /// Outcome of `selectTails`: the two keys, a NaN/±inf in the group, or no decision (the
    /// caller then runs the radix select, which is exact on any input).
    enum TailResult {
        case keys(UInt32, UInt32)
        case nonFinite
        case undecided
    }

    /// Groups at least this long try `selectTails` first.
    static let tailSelectMin = 4096
    /// Values per filter block of `filterTails` (one 64-bit hit mask each).
    static let tailBlock = 64

    /// Signed key: Int32 order is float order (−0 just below +0, NaN/±inf beyond every finite
    /// value); `UInt32(bitPattern: s) ^ 0x8000_0000` is `orderKey`.
    @inline(__always)
    static func signedKey(_ b: Int32) -> Int32 { b ^ ((b &>> 31) & 0x7FFF_FFFF) }

    /// Keys at ranks ra ≤ rb of x[0..<n] when both lie in thin tails (the OCC case: α near 1).
    ///
    /// A deterministic stratified sample of the group gives keys tLo < tHi that should sit a
    /// little inside the two tails. One vectorized pass collects every key ≤ tLo (the set L, a
    /// prefix of the sorted group) and every key ≥ tHi (H, a suffix); a counting check then
    /// proves the answer lies there: sorted[ra] is L's ra-th key when ra < |L|, and sorted[rb]
    /// is H's (rb − (n − |H|))-th key when rb ≥ n − |H|. The ranks are selected exactly within
    /// L and H. When the sample guessed wrong (a check fails, or a candidate buffer would
    /// overflow) the result is `.undecided`, never a wrong key. With finite thresholds every
    /// NaN/±inf is a candidate, so scanning the candidates finds them all. The candidate sets
    /// (as sets) do not depend on the chunking, so neither does the result.
    static func selectTails(_ x: UnsafePointer<Float>, _ n: Int, _ ra: Int, _ rb: Int) -> TailResult {
        // Only thin tails (at most 1/32 of the group each), so the candidates stay few.
        guard n >= tailSelectMin, (ra + 1) * 32 <= n, (n - rb) * 32 <= n, ra <= rb else { return .undecided }
        // Sample: a run of 8 consecutive values from each of `runs` strata, at a hashed offset
        // (no stride aliasing with the columns of a row-major tensor; one cache line per run).
        let runs = Swift.min(1024, n / 256), m = 8 * runs
        let w = n / runs
        let sample = UnsafeMutablePointer<UInt32>.allocate(capacity: m)
        let hist = UnsafeMutablePointer<UInt32>.allocate(capacity: radixBins)
        defer { sample.deallocate(); hist.deallocate() }
        for r in 0..<runs {
            var h = UInt32(truncatingIfNeeded: r) &* 0x9E37_79B9
            h ^= h >> 15
            h = h &* 0x85EB_CA6B
            h ^= h >> 13
            let start = r &* w &+ Int(truncatingIfNeeded: (UInt64(h) &* UInt64(w - 7)) >> 32)
            // One vector load and store per run: short iterations keep many misses in flight.
            let b = UnsafeRawPointer(x + start).loadUnaligned(as: SIMD8<Int32>.self)
            let k = b ^ ((b &>> 31) | SIMD8<Int32>(repeating: Int32.min))
            UnsafeMutableRawPointer(sample + 8 &* r).storeBytes(of: k, as: SIMD8<Int32>.self)
        }
        // Sample ranks: expected count below the target rank plus a margin of ~3.5 standard
        // deviations, so a miss (which only costs time) is rare on data that is not adversarial.
        let eLo = Double(ra + 1) * Double(m) / Double(n)
        let eHi = Double(n - rb) * Double(m) / Double(n)
        let kLo = Int(eLo + 3.5 * eLo.squareRoot() + 3)
        let kHi = m - 1 - Int(eHi + 3.5 * eHi.squareRoot() + 3)
        guard kLo < kHi, kLo < m, kHi >= 0 else { return .undecided }
        let (sLo, sHi) = selectKeys(sample, m, kLo, kHi, level: 0, hist: hist, histReady: false)
        // Thresholds must be finite (then NaN/±inf lie strictly outside) and leave L, H disjoint.
        guard sLo < sHi, sLo >= 0x0080_0000, sHi < 0xFF80_0000 else { return .undecided }
        let tLo = Int32(bitPattern: sLo ^ 0x8000_0000), tHi = Int32(bitPattern: sHi ^ 0x8000_0000)

        // Candidate room per chunk: twice the share the sample predicts, plus a block of slack.
        let fLo = Double(kLo + 1) / Double(m), fHi = Double(m - kHi) / Double(m)
        let grain = Swift.min(Parallel.grain(count: n, minItems: 1 << 15), 1 << 28)
        let chunks = (n + grain - 1) / grain
        let capLo = Int(2 * fLo * Double(grain)) + 2 * tailBlock + 1
        let capHi = Int(2 * fHi * Double(grain)) + 2 * tailBlock + 1
        let bufLo = UnsafeMutablePointer<UInt32>.allocate(capacity: chunks * capLo)
        let bufHi = UnsafeMutablePointer<UInt32>.allocate(capacity: chunks * capHi)
        let counts = UnsafeMutablePointer<Int>.allocate(capacity: 2 * chunks)
        defer { bufLo.deallocate(); bufHi.deallocate(); counts.deallocate() }
        Parallel.forChunks(count: n, grain: grain) { range in
            let c = range.lowerBound / grain
            let (pl, ph) = filterTails(x + range.lowerBound, range.count, tLo, tHi,
                                       bufLo + c * capLo, capLo, bufHi + c * capHi, capHi)
            counts[2 * c] = pl
            counts[2 * c + 1] = ph
        }
        // Close up the runs (a forward copy is safe: run c starts at or after its new place).
        var cl = 0, ch = 0
        for c in 0..<chunks {
            let pl = counts[2 * c], ph = counts[2 * c + 1]
            if pl < 0 || ph < 0 { return .undecided }  // a chunk overflowed its room
            if c > 0 {
                for i in 0..<pl { bufLo[cl + i] = bufLo[c * capLo + i] }
                for i in 0..<ph { bufHi[ch + i] = bufHi[c * capHi + i] }
            }
            cl += pl
            ch += ph
        }
        // NaN/±inf: keys below 0x0080_0000 or from 0xFF80_0000 up; all of them are candidates.
        var bad: UInt32 = 0
        for i in 0..<cl { bad |= (bufLo[i] < 0x0080_0000 ? 1 : 0) }
        for i in 0..<ch { bad |= (bufHi[i] >= 0xFF80_0000 ? 1 : 0) }
        if bad != 0 { return .nonFinite }
        // The counting check: the ranks must fall inside L and H.
        guard ra < cl, rb >= n - ch else { return .undecided }
        let ka = selectKeys(bufLo, cl, ra, ra, level: 0, hist: hist, histReady: false).0
        let kb = selectKeys(bufHi, ch, rb - (n - ch), rb - (n - ch), level: 0, hist: hist, histReady: false).0
        return .keys(ka, kb)
    }

    /// Appends the order keys of x[0..<n] with signed key ≤ tLo to lo and ≥ tHi to hi (tLo <
    /// tHi), in order; returns the counts, or (−1, −1) when a buffer would pass its capacity.
    /// Blocks of `tailBlock` values are compared as vectors into one bit mask per block, then
    /// only its set bits are visited (candidates are a few percent of the values); each visit
    /// writes to both buffers and advances one cursor, so it has no data-dependent branch.
    static func filterTails(_ x: UnsafePointer<Float>, _ n: Int, _ tLo: Int32, _ tHi: Int32,
                            _ lo: UnsafeMutablePointer<UInt32>, _ capLo: Int,
                            _ hi: UnsafeMutablePointer<UInt32>, _ capHi: Int) -> (Int, Int) {
        typealias V = SIMD16<Int32>
        let vLo = V(repeating: tLo), vHi = V(repeating: tHi), m7 = V(repeating: 0x7FFF_FFFF)
        let raw = UnsafeRawPointer(x)
        var pl = 0, ph = 0, i = 0
        // 16 values → 16 bits (`laneMask16`).
        @inline(__always) func hits(_ at: Int) -> UInt64 {
            let b = raw.loadUnaligned(fromByteOffset: at * 4, as: V.self)
            let s = b ^ ((b &>> 31) & m7)
            let lanes = (s .<= vLo)._storage | (s .>= vHi)._storage
            return laneMask16(lanes)
        }
        while i + tailBlock <= n {
            var m = hits(i) | hits(i + 16) << 16 | hits(i + 32) << 32 | hits(i + 48) << 48
            if m != 0 {
                if pl + tailBlock > capLo || ph + tailBlock > capHi { return (-1, -1) }
                repeat {
                    let bits = x[i + m.trailingZeroBitCount].bitPattern
                    let k = orderKey(bits)
                    let isLo = signedKey(Int32(bitPattern: bits)) <= tLo ? 1 : 0
                    lo[pl] = k
                    hi[ph] = k
                    pl &+= isLo
                    ph &+= 1 &- isLo
                    m &= m &- 1
                } while m != 0
            }
            i += tailBlock
        }
        if i < n {
            if pl + tailBlock > capLo || ph + tailBlock > capHi { return (-1, -1) }
            for j in i..<n {
                let bits = x[j].bitPattern
                let sk = signedKey(Int32(bitPattern: bits))
                let k = orderKey(bits)
                lo[pl] = k
                hi[ph] = k
                pl &+= sk <= tLo ? 1 : 0
                ph &+= sk >= tHi ? 1 : 0
            }
        }
        return (pl, ph)
    }

    /// Keys at ranks ra ≤ rb of x[0..<n] (n > 0), on one thread; nil if x holds NaN/±inf.
    /// `keys` has room for n, `hist` for `radixBins`.
    static func selectSerial(_ x: UnsafePointer<Float>, _ n: Int, _ ra: Int, _ rb: Int,
                             keys: UnsafeMutablePointer<UInt32>, hist: UnsafeMutablePointer<UInt32>) -> (UInt32, UInt32)? {
        if n <= smallSort {
            var bad: UInt32 = 0
            for i in 0..<n {
                let b = x[i].bitPattern
                bad |= ((b & 0x7FFF_FFFF) &+ 0x0080_0000) >> 31  // |x| ≥ inf
                keys[i] = orderKey(b)
            }
            if bad != 0 { return nil }
            insertionSort(keys, n)
            return (keys[ra], keys[rb])
        }
        let k1 = ra + 1, k2 = n - rb
        if k1 <= tailKeep && k2 <= tailKeep && k1 + k2 <= n {
            return selectSmallTails(x, n, k1, k2, keys: keys)
        }
        hist.update(repeating: 0, count: radixBins)
        for i in 0..<n {
            let k = orderKey(x[i].bitPattern)
            keys[i] = k
            hist[Int(k >> 21)] &+= 1
        }
        if hasNonFinite(hist) { return nil }
        return selectKeys(keys, n, ra, rb, level: 0, hist: hist, histReady: true)
    }

    /// `selectSerial` keeps the tails in sorted buffers when each holds at most this many keys.
    static let tailKeep = 8

    /// The k1-th smallest and k2-th largest keys of x[0..<n] (1 ≤ k1, k2; k1 + k2 ≤ n): the
    /// ranks k1 − 1 and n − k2. Two sorted buffers in `keys` hold the k1 smallest and the k2
    /// largest keys seen so far (each value is offered to both); a value enters only when it
    /// beats a buffer's bound, rare on most data, so that branch predicts well. This avoids
    /// the radix histogram's clearing and scanning of 2048 bins on short rows, and stays exact
    /// (if slower) on any order of the input. nil if x holds NaN/±inf.
    @inline(never)
    static func selectSmallTails(_ x: UnsafePointer<Float>, _ n: Int, _ k1: Int, _ k2: Int,
                                 keys: UnsafeMutablePointer<UInt32>) -> (UInt32, UInt32)? {
        var bad: UInt32 = 0
        for i in 0..<n { bad |= ((x[i].bitPattern & 0x7FFF_FFFF) &+ 0x0080_0000) >> 31 }  // |x| ≥ inf
        if bad != 0 { return nil }
        // low: the k1 smallest keys, ascending. high: the k2 largest as ~key, ascending.
        let low = keys, high = keys + k1
        for i in 0..<k1 { low[i] = orderKey(x[i].bitPattern) }
        insertionSort(low, k1)
        for i in 0..<k2 { high[i] = ~orderKey(x[i].bitPattern) }
        insertionSort(high, k2)
        var lowMax = low[k1 - 1], highMin = ~high[k2 - 1]
        @inline(__always) func offerLow(_ k: UInt32) {
            if k < lowMax { lowMax = insertSorted(low, k1, k) }
        }
        @inline(__always) func offerHigh(_ k: UInt32) {
            if k > highMin { highMin = ~insertSorted(high, k2, ~k) }
        }
        let both = Swift.max(k1, k2)
        for i in k1..<both { offerLow(orderKey(x[i].bitPattern)) }
        for i in k2..<both { offerHigh(orderKey(x[i].bitPattern)) }
        // 16 values at a time: one vector test against both bounds (signed keys), and the
        // scalar offers only for a block holding a value that beats one.
        typealias V = SIMD16<Int32>
        let m7 = V(repeating: 0x7FFF_FFFF)
        let raw = UnsafeRawPointer(x)
        var i = both
        while i + 16 <= n {
            let b = raw.loadUnaligned(fromByteOffset: i * 4, as: V.self)
            let s = b ^ ((b &>> 31) & m7)
            let vl = V(repeating: Int32(bitPattern: lowMax ^ 0x8000_0000))
            let vh = V(repeating: Int32(bitPattern: highMin ^ 0x8000_0000))
            if any((s .< vl) .| (s .> vh)) {
                for j in i..<(i + 16) {
                    let k = orderKey(x[j].bitPattern)
                    offerLow(k)
                    offerHigh(k)
                }
            }
            i += 16
        }
        while i < n {
            let k = orderKey(x[i].bitPattern)
            offerLow(k)
            offerHigh(k)
            i += 1
        }
        return (lowMax, highMin)
    }

    /// Inserts k into the ascending a[0..<count], dropping the largest; k < a[count − 1].
    /// Returns the new a[count − 1].
    @inline(__always)
    static func insertSorted(_ a: UnsafeMutablePointer<UInt32>, _ count: Int, _ k: UInt32) -> UInt32 {
        var j = count - 1
        while j > 0 && a[j - 1] > k {
            a[j] = a[j - 1]
            j -= 1
        }
        a[j] = k
        return a[count - 1]
    }

    /// Keys at ranks ra ≤ rb of x[0..<n] (n large), with the top-digit histogram and the
    /// candidate gather spread over the workers; nil if x holds NaN/±inf.
    static func selectParallel(_ x: UnsafePointer<Float>, _ n: Int, _ ra: Int, _ rb: Int) -> (UInt32, UInt32)? {
        let grain = Swift.min(Parallel.grain(count: n, minItems: 1 << 15), 1 << 30)
        let chunks = (n + grain - 1) / grain
        let hists = UnsafeMutablePointer<UInt32>.allocate(capacity: chunks * radixBins)
        defer { hists.deallocate() }
        // Pass 1: per-chunk histograms of the top 11 key bits.
        Parallel.forChunks(count: n, grain: grain) { range in
            let h = hists + (range.lowerBound / grain) * radixBins
            h.update(repeating: 0, count: radixBins)
            histogramTop(x + range.lowerBound, range.count, h)
        }
        // Merge in chunk order; locate the target buckets.
        let total = UnsafeMutablePointer<UInt32>.allocate(capacity: radixBins)
        defer { total.deallocate() }
        var counts = [Int](repeating: 0, count: radixBins)
        for c in 0..<chunks {
            let h = hists + c * radixBins
            for b in 0..<radixBins { counts[b] += Int(h[b]) }
        }
        for b in 0..<radixBins { total[b] = counts[b] > 0 ? 1 : 0 }
        if hasNonFinite(total) { return nil }
        var cum = 0, ba = -1, bb = -1, baseA = 0, baseB = 0
        for b in 0..<radixBins {
            let c = counts[b]
            if ba < 0 && ra < cum + c { ba = b; baseA = cum }
            if rb < cum + c { bb = b; baseB = cum; break }
            cum += c
        }
        // Pass 2: gather the candidates of the target buckets, branch-free. Chunk c writes from
        // offset off[c] + c: every element is stored and the cursor advances only on a match,
        // so each chunk needs one spare slot after its run. The runs are closed up afterwards.
        var offA = [Int](repeating: 0, count: chunks + 1), offB = [Int](repeating: 0, count: chunks + 1)
        for c in 0..<chunks {
            offA[c + 1] = offA[c] + Int(hists[c * radixBins + ba])
            offB[c + 1] = offB[c] + (bb != ba ? Int(hists[c * radixBins + bb]) : 0)
        }
        let countA = offA[chunks], countB = offB[chunks]
        let candA = UnsafeMutablePointer<UInt32>.allocate(capacity: countA + chunks)
        let candB = UnsafeMutablePointer<UInt32>.allocate(capacity: countB + chunks)
        defer { candA.deallocate(); candB.deallocate() }
        let ua = UInt32(ba), ub = bb != ba ? UInt32(bb) : 0xFFFF  // 0xFFFF: no digit matches
        offA.withUnsafeBufferPointer { oab in
            offB.withUnsafeBufferPointer { obb in
                let oap = oab.baseAddress!, obp = obb.baseAddress!
                Parallel.forChunks(count: n, grain: grain) { range in
                    let c = range.lowerBound / grain
                    gatherTop(x + range.lowerBound, range.count, ua, candA + oap[c] + c, ub, candB + obp[c] + c)
                }
                // Close the gaps: run c moves left by c slots (a forward copy is safe).
                for c in 1..<Swift.max(chunks, 1) {
                    for i in oap[c]..<oap[c + 1] { candA[i] = candA[i + c] }
                    for i in obp[c]..<obp[c + 1] { candB[i] = candB[i + c] }
                }
            }
        }
        // Refine the candidates (they share the top 11 bits) on one thread.
        if ba == bb {
            return selectKeys(candA, countA, ra - baseA, rb - baseA, level: 1, hist: total, histReady: false)
        }
        let ka = selectKeys(candA, countA, ra - baseA, ra - baseA, level: 1, hist: total, histReady: false).0
        let kb = selectKeys(candB, countB, rb - baseB, rb - baseB, level: 1, hist: total, histReady: false).0
        return (ka, kb)
    }

    /// Copies the keys of x[0..<n] whose top 11 bits are ua to a, and those with ub to b, in
    /// order. Branch-free: a and b each need one slot beyond their match count.
    static func gatherTop(_ x: UnsafePointer<Float>, _ n: Int, _ ua: UInt32, _ a: UnsafeMutablePointer<UInt32>,
                          _ ub: UInt32, _ b: UnsafeMutablePointer<UInt32>) {
        var pa = 0, pb = 0
        for i in 0..<n {
            let k = orderKey(x[i].bitPattern)
            let d = k >> 21
            a[pa] = k
            b[pb] = k
            // (d ^ u) − 1 has bit 31 set exactly when d == u (both below 2^16).
            pa &+= Int(((d ^ ua) &- 1) >> 31)
            pb &+= Int(((d ^ ub) &- 1) >> 31)
        }
    }

    /// Histogram of the top 11 key bits of x[0..<n] into h (which the caller zeroed). Four
    /// interleaved sub-histograms keep runs of equal buckets off one store-to-load chain.
    static func histogramTop(_ x: UnsafePointer<Float>, _ n: Int, _ h: UnsafeMutablePointer<UInt32>) {
        let sub = UnsafeMutablePointer<UInt32>.allocate(capacity: 4 * radixBins)
        defer { sub.deallocate() }
        sub.update(repeating: 0, count: 4 * radixBins)
        let h0 = sub, h1 = sub + radixBins, h2 = sub + 2 * radixBins, h3 = sub + 3 * radixBins
        var i = 0
        while i + 4 <= n {
            h0[Int(orderKey(x[i].bitPattern) >> 21)] &+= 1
            h1[Int(orderKey(x[i + 1].bitPattern) >> 21)] &+= 1
            h2[Int(orderKey(x[i + 2].bitPattern) >> 21)] &+= 1
            h3[Int(orderKey(x[i + 3].bitPattern) >> 21)] &+= 1
            i += 4
        }
        while i < n {
            h0[Int(orderKey(x[i].bitPattern) >> 21)] &+= 1
            i += 1
        }
        for b in 0..<radixBins { h[b] = h0[b] &+ h1[b] &+ h2[b] &+ h3[b] }
    }

    /// Keys at ranks ra ≤ rb of a[0..<n], which share all bits above the digit of `level`
    /// (0: bits 21–31, 1: bits 10–20, 2: bits 0–9). Reorders and shrinks `a` in place.
    /// `hist` has room for `radixBins`; with `histReady` it already holds this level's histogram.
    static func selectKeys(_ a: UnsafeMutablePointer<UInt32>, _ count: Int, _ rankA: Int, _ rankB: Int,
                           level startLevel: Int, hist: UnsafeMutablePointer<UInt32>, histReady: Bool) -> (UInt32, UInt32) {
        var n = count, ra = rankA, rb = rankB, level = startLevel, ready = histReady
        while true {
            if n <= smallSort {
                insertionSort(a, n)
                return (a[ra], a[rb])
            }
            let shift: UInt32 = level == 0 ? 21 : (level == 1 ? 10 : 0)
            let mask: UInt32 = level == 2 ? 0x3FF : 0x7FF
            let bins = Int(mask) + 1
            if !ready {
                hist.update(repeating: 0, count: bins)
                for i in 0..<n { hist[Int((a[i] >> shift) & mask)] &+= 1 }
            }
            ready = false
            var cum = 0, ba = -1, bb = -1, baseA = 0, baseB = 0
            for b in 0..<bins {
                let c = Int(hist[b])
                if ba < 0 && ra < cum + c { ba = b; baseA = cum }
                if rb < cum + c { bb = b; baseB = cum; break }
                cum += c
            }
            if level == 2 {
                // The last digit fixes the key: every key shares the bits above it.
                let high = a[0] & ~mask
                return (high | UInt32(ba), high | UInt32(bb))
            }
            let ua = UInt32(ba), ub = UInt32(bb)
            let ma = Int(hist[ba])
            if ba == bb {
                if ma != n {
                    var j = 0
                    for i in 0..<n {
                        let k = a[i]
                        a[j] = k
                        j &+= ((k >> shift) & mask) == ua ? 1 : 0
                    }
                }
                n = ma
                ra -= baseA
                rb -= baseA
                level += 1
                continue
            }
            // The ranks part here: bucket ba stays in a, bucket bb moves to its own buffer.
            let mb = Int(hist[bb])
            let other = UnsafeMutablePointer<UInt32>.allocate(capacity: mb)
            defer { other.deallocate() }
            var j = 0, l = 0
            for i in 0..<n {
                let k = a[i]
                let d = (k >> shift) & mask
                if d == ub {
                    other[l] = k
                    l += 1
                }
                a[j] = k
                j &+= d == ua ? 1 : 0
            }
            let ka = selectKeys(a, ma, ra - baseA, ra - baseA, level: level + 1, hist: hist, histReady: false).0
            let kb = selectKeys(other, mb, rb - baseB, rb - baseB, level: level + 1, hist: hist, histReady: false).0
            return (ka, kb)
        }
    }

    static func insertionSort(_ a: UnsafeMutablePointer<UInt32>, _ n: Int) {
        guard n > 1 else { return }
        for i in 1..<n {
            let k = a[i]
            var j = i
            while j > 0 && a[j - 1] > k {
                a[j] = a[j - 1]
                j -= 1
            }
            a[j] = k
        }
    }
}
