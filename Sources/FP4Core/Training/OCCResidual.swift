/// OCC's clamp and its residual ΔX = X − X_c as CSR (row pointers, column indices, float32
/// values). The clamp expression itself lives in `ClampKernel` (Kernels/Clamp.swift).
extension OCC {
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
                        count = ClampKernel.clampCountRow(xr, xc + r * cols, cols, t.lo, t.hi)
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

    /// Writes the entries of one row (columns with x < lo or x > hi, ascending; value x − lo or
    /// x − hi) to indices/values. Blocks of 16 values are compared as vectors into a bit mask
    /// (`OrderStatistics.laneMask16`),
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
            var m = OrderStatistics.laneMask16(lanes)
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
}
