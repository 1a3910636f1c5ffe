/// The sparse products of OCC's compensation on the CSR residual: ΔX·W_qᵀ (sparse × dense)
/// and the scatter of ΔX back into a dense matrix.
extension OCC {
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
        var (slot, used) = usedColumns(indptr: indptr, indices: indices, rows: rows, cols: cols)
        guard !used.isEmpty else { return }
        // Most columns used (a per-tensor clamp of 2% of X touches nearly all of them): pack
        // every column, so a panel is a plain transpose of w's rows (TransposeKernel, ~20%
        // faster than the gather at T=2048, K=1024, N=4096); the packed values and the
        // additions are the same.
        let dense = used.count * 4 >= cols * 3
        if dense {
            slot = (0..<cols).map(Int32.init)
            used = slot
        }
        let u = used.count
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
                        if dense {
                            TransposeKernel.block(w + j0 * cols, lda: cols, panel, ldb: jw, rows: jn, cols: cols)
                        }
                        var jb = dense ? jn : 0
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
}
