/// The scale pass of a quantizer: group amaxima, standard deviations (quest) and scales.
extension Quantizer {
    /// Absolute maxima of every group as float bit patterns (|x| bits order like |x|, and
    /// NaN/inf compare above every finite value, so one integer max finds both).
    static func groupAmaxBits(_ x: UnsafePointer<Float>, _ L: GroupLayout) -> [UInt32] {
        var amax = [UInt32](repeating: 0, count: L.groupCount)
        let tc = L.tileCols, gr = L.groupRows
        amax.withUnsafeMutableBufferPointer { a in
            guard let ap = a.baseAddress else { return }
            if gr == 1 || L.tileRows >= 2 * Parallel.threadCount {
                // Each chunk owns whole tile rows: disjoint writes.
                let grain = Parallel.grain(count: L.tileRows, minItems: Swift.max(1, 16384 / Swift.max(1, gr * L.cols)))
                Parallel.forChunks(count: L.tileRows, grain: grain) { trs in
                    for tr in trs {
                        for r in (tr * gr)..<((tr + 1) * gr) { rowAmax(x + r * L.cols, L, ap + tr * tc) }
                    }
                }
            } else {
                // Few tall tile rows (tensor, column): split their rows, keep private maxima per chunk.
                for tr in 0..<L.tileRows {
                    let grain = Parallel.grain(count: gr, minItems: Swift.max(1, 16384 / Swift.max(1, L.cols)))
                    let chunks = (gr + grain - 1) / grain
                    var partial = [UInt32](repeating: 0, count: chunks * tc)
                    partial.withUnsafeMutableBufferPointer { p in
                        guard let pp = p.baseAddress else { return }
                        Parallel.forChunks(count: gr, grain: grain) { rows in
                            let dst = pp + (rows.lowerBound / grain) * tc
                            for r in rows { rowAmax(x + (tr * gr + r) * L.cols, L, dst) }
                        }
                    }
                    for c in 0..<chunks {
                        for j in 0..<tc { ap[tr * tc + j] = Swift.max(ap[tr * tc + j], partial[c * tc + j]) }
                    }
                }
            }
        }
        return amax
    }

    /// Folds one row into the running maxima of its tile row's groups.
    @inline(__always)
    static func rowAmax(_ row: UnsafePointer<Float>, _ L: GroupLayout, _ dst: UnsafeMutablePointer<UInt32>) {
        let gc = L.groupCols
        if gc == 1 {
            for c in 0..<L.cols { dst[c] = Swift.max(dst[c], row[c].bitPattern & 0x7FFF_FFFF) }
            return
        }
        for j in 0..<L.tileCols {
            var m = dst[j]
            let seg = row + j * gc
            for c in 0..<gc { m = Swift.max(m, seg[c].bitPattern & 0x7FFF_FFFF) }
            dst[j] = m
        }
    }

    /// The scale of every group of x (row-major [rows, cols]).
    public func scales(of x: UnsafePointer<Float>, rows: Int, cols: Int) throws -> TensorScales {
        try validate()
        let L = try granularity.layout(rows: rows, cols: cols)
        let amax = Quantizer.groupAmaxBits(x, L)
        let finiteLimit: UInt32 = 0x7F80_0000
        var nonFinite = [Bool](repeating: false, count: amax.count)
        var count = 0
        var tensorAmax: UInt32 = 0
        for g in 0..<amax.count {
            if amax[g] >= finiteLimit {
                nonFinite[g] = true
                count += 1
            } else {
                tensorAmax = Swift.max(tensorAmax, amax[g])
            }
        }
        // nvfp4's S uses the finite groups only, so one bad group does not zero the rest.
        let S = scaleRule.tensorScale(tensorAmax: Float(bitPattern: tensorAmax))
        // quest: population standard deviation of every group (float64).
        let stds = scaleRule == .quest ? Quantizer.groupStds(x, L) : []
        var groups = [GroupScale](repeating: GroupScale(scale: 1, tensorScale: 1, byte: 0, isZero: true),
                                  count: amax.count)
        let rule = scaleRule, fmt = format
        groups.withUnsafeMutableBufferPointer { gp in
            guard let g = gp.baseAddress else { return }
            amax.withUnsafeBufferPointer { ap in
                Parallel.forChunks(count: ap.count, grain: Parallel.grain(count: ap.count, minItems: 4096)) { range in
                    for i in range where ap[i] < finiteLimit {
                        g[i] = rule.groupScale(amax: Float(bitPattern: ap[i]), format: fmt, tensorScale: S,
                                               std: stds.isEmpty ? 0 : stds[i])
                    }
                }
            }
        }
        return TensorScales(layout: L, groups: groups, tensorScale: S, nonFinite: nonFinite, nonFiniteCount: count)
    }

    /// Population standard deviation σ = sqrt(max(E[x²] − μ², 0)) of every group, float64
    /// sums in row-major order within the group (independent of the thread count).
    /// Non-finite groups get meaningless values (their scales are never used).
    static func groupStds(_ x: UnsafePointer<Float>, _ L: GroupLayout) -> [Double] {
        let tc = L.tileCols, gr = L.groupRows, gc = L.groupCols
        var stds = [Double](repeating: 0, count: L.groupCount)
        let n = Double(gr * gc)
        stds.withUnsafeMutableBufferPointer { sp in
            guard let out = sp.baseAddress else { return }
            let grain = Parallel.grain(count: L.tileRows, minItems: Swift.max(1, 16384 / Swift.max(1, gr * L.cols)))
            Parallel.forChunks(count: L.tileRows, grain: grain) { trs in
                var sum = [Double](repeating: 0, count: tc), sq = [Double](repeating: 0, count: tc)
                for tr in trs {
                    for j in 0..<tc { sum[j] = 0; sq[j] = 0 }
                    for r in (tr * gr)..<((tr + 1) * gr) {
                        let row = x + r * L.cols
                        for j in 0..<tc {
                            var a = sum[j], b = sq[j]
                            for c in (j * gc)..<((j + 1) * gc) {
                                let v = Double(row[c])
                                a += v
                                b += v * v
                            }
                            sum[j] = a
                            sq[j] = b
                        }
                    }
                    for j in 0..<tc {
                        let mu = sum[j] / n
                        out[tr * tc + j] = Swift.max(sq[j] / n - mu * mu, 0).squareRoot()
                    }
                }
            }
        }
        return stds
    }

    /// Flat index of the first non-finite element (for error messages).
    static func firstNonFiniteIndex(_ x: UnsafePointer<Float>, count: Int) -> Int {
        for i in 0..<count where !x[i].isFinite { return i }
        return -1
    }
}

