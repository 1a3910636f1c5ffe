/// Codes of an OCC-clamped input: the clamp (`ClampKernel`) applied row by row inside the
/// quantizer, so no float32 copy of X_c is made (numerics.md §5).
extension Quantizer {
    /// `quantize(_:rows:cols:codes:dequantized:)` of the OCC-clamped input X_c (numerics.md §5),
    /// without a float32 copy of X_c: each row is clamped into a private tile, and its scales
    /// and codes come from there. `thresholds` holds one pair, or one per row when `perRow`;
    /// `minMax` picks the clamp expression min(max(x, lo), hi), else the one of
    /// `OCC.clampAndResidual` (x < lo ? lo : x > hi ? hi : x); they differ only in the sign of
    /// a zero at a zero threshold, and each caller keeps the one it used before.
    /// Returns nil (nothing written) unless groups lie within rows under a scale rule that
    /// needs only the group's amax; the caller then clamps into a buffer and calls `quantize`.
    /// Whether `quantizeClamped` handles a [rows, cols] input (groups within rows, a scale
    /// rule that needs only the group's amax).
    public func clampsWhileQuantizing(rows: Int, cols: Int) -> Bool {
        guard let L = try? granularity.layout(rows: rows, cols: cols) else { return false }
        return L.groupRows == 1 && scaleRule.needsOnlyGroupAmax
    }

    ///
    /// `residual`, when given with `dequantized`, is added into x̂ row by row right after the
    /// row is written (the same additions as `OCC.scatterAdd` on x̂ afterwards, while the row
    /// is still in cache); ignored without `dequantized`.
    public func quantizeClamped(_ x: UnsafePointer<Float>, rows: Int, cols: Int, thresholds: [OCCThresholds], perRow: Bool,
                                minMax: Bool, codes: UnsafeMutablePointer<UInt8>,
                                dequantized: UnsafeMutablePointer<Float>?,
                                residual: CSRResidual? = nil) throws -> TensorScales? {
        try validate()
        guard clampsWhileQuantizing(rows: rows, cols: cols) else { return nil }
        let L = try granularity.layout(rows: rows, cols: cols)
        var ts = TensorScales(layout: L, groups: [GroupScale](repeating: GroupScale(scale: 1, tensorScale: 1, byte: 0, isZero: true),
                                                              count: L.groupCount),
                              tensorScale: 1, nonFinite: [Bool](repeating: false, count: L.groupCount), nonFiniteCount: 0)
        guard L.count > 0 else { return ts }
        guard thresholds.count >= (perRow ? rows : 1) else {
            throw FP4Error.invalid("OCC needs 1 threshold pair or one per row (\(rows)), got \(thresholds.count)")
        }
        let enc = CodeWriter(grid: GridParameters(format, saturating: true), signBit: UInt8(format.signBit),
                             infCode: Int32(format.infMagnitudeCode ?? format.maxFiniteMagnitudeCode))
        let perRowTh = perRow && thresholds.count > 1
        ts.groups.withUnsafeMutableBufferPointer { gp in
            ts.nonFinite.withUnsafeMutableBufferPointer { bp in
                thresholds.withUnsafeBufferPointer { tb in
                    withRounder(ClampedRun(q: self, x: x, layout: L, th: tb.baseAddress!, perRow: perRowTh, minMax: minMax,
                                           codes: codes, fake: dequantized, enc: enc,
                                           fp4: rounding == .nearestEven ? FP4NearestEven.forPackedCodes(format) : nil,
                                           groups: gp.baseAddress!, bad: bp.baseAddress!, residual: residual))
                }
            }
        }
        for flag in ts.nonFinite where flag { ts.nonFiniteCount += 1 }
        if ts.nonFiniteCount > 0 {
            let i = Quantizer.firstNonFiniteIndex(x, count: L.count)
            throw FP4Error(.nonFinite, "cannot quantize a non-finite value (\(i >= 0 ? x[i] : .nan)) at flat index \(i)")
        }
        return ts
    }

    struct ClampedRun: RounderVisitor {
        let q: Quantizer, x: UnsafePointer<Float>, layout: GroupLayout, th: UnsafePointer<OCCThresholds>, perRow: Bool
        let minMax: Bool, codes: UnsafeMutablePointer<UInt8>, fake: UnsafeMutablePointer<Float>?, enc: CodeWriter
        /// Set for FP4 nearest-even: codes go straight into packed bytes (no scratch, no packing pass).
        let fp4: FP4NearestEven?
        let groups: UnsafeMutablePointer<GroupScale>, bad: UnsafeMutablePointer<Bool>
        let residual: CSRResidual?
        func visit<R: MagnitudeRounder>(_ rounder: R) {
            let L = layout, cols = L.cols, tc = L.tileCols, gc = L.groupCols
            let residual = fake == nil ? nil : residual
            let packed = q.format.isFP4, rule = q.scaleRule, fmt = q.format
            let x = x, th = th, perRow = perRow, minMax = minMax, codes = codes, fake = fake, enc = enc, fp4 = fp4
            let direct = fp4 != nil
            let groups = groups, bad = bad
            // Chunks start at an even flat index so no two chunks share a packed byte.
            var grain = Parallel.grain(count: L.rows, minItems: Swift.max(1, 8192 / Swift.max(1, cols)))
            if packed && cols % 2 == 1 && grain % 2 == 1 { grain += 1 }
            Parallel.forChunks(count: L.rows, grain: grain) { rowRange in
                let first = rowRange.lowerBound * cols, n = rowRange.count * cols
                let useScratch = packed && !direct
                let scratch = useScratch ? UnsafeMutablePointer<UInt8>.allocate(capacity: Swift.max(n, 1)) : codes + first
                let tile = UnsafeMutablePointer<Float>.allocate(capacity: cols)
                let amax = UnsafeMutablePointer<UInt32>.allocate(capacity: Swift.max(tc, 1))
                defer {
                    if useScratch { scratch.deallocate() }
                    tile.deallocate()
                    amax.deallocate()
                }
                for r in rowRange {
                    let t = th[perRow ? r : 0]
                    if tc == 1 {
                        amax[0] = ClampKernel.clampRowAmax(x + r * cols, tile, cols, t.lo, t.hi, minMax)
                    } else {
                        ClampKernel.clampRow(x + r * cols, tile, cols, t.lo, t.hi, minMax)
                        amax.update(repeating: 0, count: tc)
                        Quantizer.rowAmax(UnsafePointer(tile), L, amax)
                    }
                    let rowStart = r * cols
                    // Indices below are flat; the tile holds the row's entries.
                    let src = UnsafePointer(tile) - rowStart, dst = scratch - first
                    for j in 0..<tc {
                        let g = r * tc + j, start = rowStart + j * gc, end = start + gc
                        if amax[j] >= 0x7F80_0000 {
                            bad[g] = true
                            continue
                        }
                        let s = rule.groupScale(amax: Float(bitPattern: amax[j]), format: fmt, tensorScale: 1)
                        groups[g] = s
                        if let fp4 {
                            if s.isZero {
                                Quantizer.zeroSegmentPacked(src, codes, fake, start..<end)
                            } else if s.multiplier != 0 {
                                Quantizer.codeSegmentPacked(src, codes, fake, start..<end, MultiplyScaling(s), fp4)
                            } else {
                                Quantizer.codeSegmentPackedDivide(src, codes, fake, start..<end, s.scale, fp4)
                            }
                        } else if s.isZero {
                            for i in start..<end { dst[i] = src[i].sign == .minus ? enc.signBit : 0 }
                            if let fake { for i in start..<end { fake[i] = src[i] * 0 } }
                        } else if s.multiplier != 0 {
                            Quantizer.codeSegment(src, dst, fake, start..<end, MultiplyScaling(s), rounder, enc)
                        } else {
                            Quantizer.codeSegment(src, dst, fake, start..<end, DivideScaling(s: s.scale), rounder, enc)
                        }
                    }
                    if let residual, let fake { residual.add(row: r, into: fake + rowStart, cols: cols) }
                }
                if useScratch { packNibbles(scratch, count: n, into: codes + first / 2) }
            }
        }
    }

}
