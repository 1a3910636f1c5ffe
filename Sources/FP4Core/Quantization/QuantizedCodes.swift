/// Quantize to stored codes + scales, and back (numerics.md §1–2).
///
/// FP4 codes are packed two per byte over the flat element index (element 2i in the low
/// nibble); FP8 codes take one byte each.
extension Quantizer {
    /// Bytes needed for the codes of `count` elements.
    public func codeBytes(count: Int) -> Int { format.isFP4 ? (count + 1) / 2 : count }

    /// Quantizes x into `codes` and returns its scales. Non-finite input throws,
    /// naming the first offending flat index (codes cannot represent it).
    /// `dequantized`, when given, receives x̂ in the same pass (what a GEMM consumes).
    public func quantize(_ x: UnsafePointer<Float>, rows: Int, cols: Int,
                         codes: UnsafeMutablePointer<UInt8>,
                         dequantized: UnsafeMutablePointer<Float>? = nil) throws -> TensorScales {
        try quantize(x, rows: rows, cols: cols, codes: codes, dequantized: dequantized, kernels: true)
    }

    /// `quantize`; `kernels: false` takes the general path where the kernel table names a fast
    /// one (for the parity tests).
    func quantize(_ x: UnsafePointer<Float>, rows: Int, cols: Int, codes: UnsafeMutablePointer<UInt8>,
                  dequantized: UnsafeMutablePointer<Float>?, kernels: Bool) throws -> TensorScales {
        let ts = try scales(of: x, rows: rows, cols: cols)
        if ts.nonFiniteCount > 0 {
            let i = Quantizer.firstNonFiniteIndex(x, count: rows * cols)
            throw FP4Error(.nonFinite, "cannot quantize a non-finite value (\(x[i])) at flat index \(i)")
        }
        if kernels, dequantized == nil, StochasticCodeKernel.of(self) == .e2m1SIMD8 {
            quantizeRowsStochasticE2M1(x, codes, ts)
            return ts
        }
        let signBit = UInt8(format.signBit), infCode = Int32(format.infMagnitudeCode ?? format.maxFiniteMagnitudeCode)
        struct Run: RounderVisitor {
            let q: Quantizer, x: UnsafePointer<Float>, codes: UnsafeMutablePointer<UInt8>, ts: TensorScales
            let fake: UnsafeMutablePointer<Float>?, enc: CodeWriter, fp4: FP4NearestEven?
            func visit<R: MagnitudeRounder>(_ rounder: R) {
                q.quantizeRows(x, codes, fake, ts, q.scaleRule.dividesByTensorScale, enc, fp4, rounder)
            }
        }
        withRounder(Run(q: self, x: x, codes: codes, ts: ts, fake: dequantized,
                        enc: CodeWriter(grid: GridParameters(format, saturating: true), signBit: signBit, infCode: infCode),
                        fp4: rounding == .nearestEven ? FP4NearestEven.forPackedCodes(format) : nil))
        return ts
    }

    /// Turns rounded magnitudes into sign-magnitude codes.
    struct CodeWriter {
        let grid: GridParameters
        let signBit: UInt8
        let infCode: Int32
        @inline(__always) func code(_ v: Float, _ r: Float) -> UInt8 {
            let mag = grid.magnitudeCode(r, infCode: infCode)
            let sign = Int32(bitPattern: v.bitPattern >> 31) * Int32(signBit)
            return UInt8(truncatingIfNeeded: mag | sign)
        }
    }

    func quantizeRows<R: MagnitudeRounder>(_ x: UnsafePointer<Float>, _ codes: UnsafeMutablePointer<UInt8>,
                                           _ fake: UnsafeMutablePointer<Float>?, _ ts: TensorScales, _ twoLevel: Bool,
                                           _ enc: CodeWriter, _ fp4: FP4NearestEven?, _ rounder: R) {
        let L = ts.layout
        let packed = format.isFP4
        // Chunks start at an even flat index so no two chunks share a packed byte.
        var grain = Parallel.grain(count: L.rows, minItems: Swift.max(1, 8192 / Swift.max(1, L.cols)))
        if packed && L.cols % 2 == 1 && grain % 2 == 1 { grain += 1 }
        ts.groups.withUnsafeBufferPointer { gs in
            Parallel.forChunks(count: L.rows, grain: grain) { rowRange in
                let first = rowRange.lowerBound * L.cols, n = rowRange.count * L.cols
                if let fp4 {
                    // FP4 nearest-even: packed bytes straight from pairs of elements.
                    for r in rowRange {
                        let gbase = (r / L.groupRows) * L.tileCols
                        for j in 0..<L.tileCols {
                            let g = gs[gbase + j]
                            let start = r * L.cols + j * L.groupCols, end = start + L.groupCols
                            if g.isZero {
                                Quantizer.zeroSegmentPacked(x, codes, fake, start..<end)
                            } else if g.multiplier != 0 {
                                Quantizer.codeSegmentPacked(x, codes, fake, start..<end, MultiplyScaling(g), fp4)
                            } else if twoLevel {
                                let scaling = TwoLevelScaling(sb: g.scale, tensorScale: g.tensorScale)
                                if fake == nil && fp4.isE2M1 {
                                    // Codes only (the packed GEMM's operands): SIMD8 e2m1 on x · (S / sb).
                                    Quantizer.codeSegmentPackedMultiply(x, codes, start..<end, scaling, fp4)
                                } else {
                                    Quantizer.codeSegmentPacked(x, codes, fake, start..<end, scaling, fp4)
                                }
                            } else {
                                Quantizer.codeSegmentPackedDivide(x, codes, fake, start..<end, g.scale, fp4)
                            }
                        }
                    }
                    return
                }
                // Otherwise one code per byte (FP4: into a scratch row block, then pack).
                let scratch = packed ? UnsafeMutablePointer<UInt8>.allocate(capacity: Swift.max(n, 1)) : codes + first
                defer { if packed { scratch.deallocate() } }
                for r in rowRange {
                    let gbase = (r / L.groupRows) * L.tileCols
                    for j in 0..<L.tileCols {
                        let g = gs[gbase + j]
                        let start = r * L.cols + j * L.groupCols, end = start + L.groupCols
                        let dst = scratch - first
                        if g.isZero {
                            for i in start..<end { dst[i] = x[i].sign == .minus ? enc.signBit : 0 }
                            if let fake { for i in start..<end { fake[i] = x[i] * 0 } }
                        } else if g.multiplier != 0 {
                            Quantizer.codeSegment(x, dst, fake, start..<end, MultiplyScaling(g), rounder, enc)
                        } else if twoLevel {
                            Quantizer.codeSegment(x, dst, fake, start..<end, TwoLevelScaling(sb: g.scale, tensorScale: g.tensorScale), rounder, enc)
                        } else {
                            Quantizer.codeSegment(x, dst, fake, start..<end, DivideScaling(s: g.scale), rounder, enc)
                        }
                    }
                }
                if packed { packNibbles(scratch, count: n, into: codes + first / 2) }
            }
        }
    }

    /// e2m1 stochastic codes only (`StochasticCodeKernel.e2m1SIMD8`): the chunks and group
    /// order of `quantizeRows`, each group through `E2M1Kernel.stochasticSegment`.
    func quantizeRowsStochasticE2M1(_ x: UnsafePointer<Float>, _ codes: UnsafeMutablePointer<UInt8>, _ ts: TensorScales) {
        let L = ts.layout
        let key = CounterRNG.key(seed: seed), twoLevel = scaleRule.dividesByTensorScale
        // Chunks start at an even flat index so no two chunks share a packed byte.
        var grain = Parallel.grain(count: L.rows, minItems: Swift.max(1, 8192 / Swift.max(1, L.cols)))
        if L.cols % 2 == 1 && grain % 2 == 1 { grain += 1 }
        let batched = CounterDraws.batched && L.cols <= CounterDraws.maxRowLength
        ts.groups.withUnsafeBufferPointer { gs in
            Parallel.forChunks(count: L.rows, grain: grain) { rowRange in
                // One row's draws (flat indices r·cols ..< (r + 1)·cols, consecutive counters).
                let rowDraws = batched ? UnsafeMutablePointer<Float>.allocate(capacity: (L.cols + 7) / 8 * 8) : nil
                defer { rowDraws?.deallocate() }
                for r in rowRange {
                    if let rowDraws { CounterDraws.fillConsecutive(rowDraws, key: key, first: r * L.cols, count: L.cols) }
                    let gbase = (r / L.groupRows) * L.tileCols
                    for j in 0..<L.tileCols {
                        let g = gs[gbase + j]
                        let start = r * L.cols + j * L.groupCols, range = start..<(start + L.groupCols)
                        let draws = rowDraws.map { UnsafePointer($0 + j * L.groupCols) }
                        if g.isZero {
                            Quantizer.zeroSegmentPacked(x, codes, nil, range)
                        } else if g.multiplier != 0 {
                            E2M1Kernel.stochasticSegment(x, codes, range, .multiply(g.multiplier), key: key, draws: draws)
                        } else if twoLevel {
                            let ratio = TwoLevelScaling(sb: g.scale, tensorScale: g.tensorScale).ratio
                            E2M1Kernel.stochasticSegment(x, codes, range, .multiply(ratio), key: key, draws: draws)
                        } else {
                            E2M1Kernel.stochasticSegment(x, codes, range, .divide(g.scale), key: key, draws: draws)
                        }
                    }
                }
            }
        }
    }

    /// FP4 nearest-even codes of x[range] written straight into the packed bytes (x̂ into
    /// `fake`), two elements per byte, so no byte-per-code scratch and packing pass.
    /// Ranges must come in ascending order within bytes this thread owns: a range that starts
    /// at an odd index ORs its first code into the high nibble of a byte written before.
    @inline(__always)
    static func codeSegmentPacked<S: ElementScaling>(
        _ x: UnsafePointer<Float>, _ codes: UnsafeMutablePointer<UInt8>, _ fake: UnsafeMutablePointer<Float>?,
        _ range: Range<Int>, _ scaling: S, _ fp4: FP4NearestEven
    ) {
        let t = fp4, end = range.upperBound
        var i = range.lowerBound
        if i < end && i & 1 == 1 {
            let (c, q) = t.encode(scaling.toGrid(x[i]))
            codes[i >> 1] |= UInt8(truncatingIfNeeded: c << 4)
            fake?[i] = scaling.fromGrid(q)
            i += 1
        }
        let pairs = (end - i) >> 1
        let xp = x + i, bp = codes + (i >> 1)
        if let fake {
            let fp = fake + i
            for p in 0..<pairs {
                let (c0, q0) = t.encode(scaling.toGrid(xp[2 * p]))
                let (c1, q1) = t.encode(scaling.toGrid(xp[2 * p + 1]))
                bp[p] = UInt8(truncatingIfNeeded: c0 | (c1 << 4))
                fp[2 * p] = scaling.fromGrid(q0)
                fp[2 * p + 1] = scaling.fromGrid(q1)
            }
        } else {
            for p in 0..<pairs {
                let c0 = t.encode(scaling.toGrid(xp[2 * p])).code
                let c1 = t.encode(scaling.toGrid(xp[2 * p + 1])).code
                bp[p] = UInt8(truncatingIfNeeded: c0 | (c1 << 4))
            }
        }
        i += 2 * pairs
        if i < end {  // last element of an odd tail: low nibble, high nibble 0 (the pad or the next range's)
            let (c, q) = t.encode(scaling.toGrid(x[i]))
            codes[i >> 1] = UInt8(truncatingIfNeeded: c)
            fake?[i] = scaling.fromGrid(q)
        }
    }

    /// `codeSegmentPacked` with `DivideScaling(s: s)`; for e2m1, blocks of 8 elements starting
    /// at an even index go through the SIMD8 kernel `E2M1Kernel` (same bits), the rest
    /// through `codeSegmentPacked`.
    @inline(__always)
    static func codeSegmentPackedDivide(
        _ x: UnsafePointer<Float>, _ codes: UnsafeMutablePointer<UInt8>, _ fake: UnsafeMutablePointer<Float>?,
        _ range: Range<Int>, _ s: Float, _ fp4: FP4NearestEven
    ) {
        guard fp4.isE2M1 else {
            codeSegmentPacked(x, codes, fake, range, DivideScaling(s: s), fp4)
            return
        }
        var i = range.lowerBound
        let end = range.upperBound
        if i < end && i & 1 == 1 {
            codeSegmentPacked(x, codes, fake, i..<(i + 1), DivideScaling(s: s), fp4)
            i += 1
        }
        let blocks = (end - i) >> 3
        if blocks > 0 {
            if let fake {
                E2M1Kernel.encodeBlocks(x + i, codes + (i >> 1), fake + i, blocks, s)
            } else {
                E2M1Kernel.encodeBlocks(x + i, codes + (i >> 1), blocks, s)
            }
            i += 8 * blocks
        }
        if i < end { codeSegmentPacked(x, codes, fake, i..<end, DivideScaling(s: s), fp4) }
    }

    /// e2m1 codes (no x̂) of x[range] · ratio for two-level scales, eight at a time with
    /// `E2M1Kernel` (the same bits as `codeSegmentPacked` with `TwoLevelScaling`, whose toGrid is
    /// x · ratio), the unaligned ends element by element.
    static func codeSegmentPackedMultiply(_ x: UnsafePointer<Float>, _ codes: UnsafeMutablePointer<UInt8>,
                                          _ range: Range<Int>, _ scaling: TwoLevelScaling, _ fp4: FP4NearestEven) {
        var i = range.lowerBound
        let end = range.upperBound
        if i < end && i & 1 == 1 {
            codeSegmentPacked(x, codes, nil, i..<(i + 1), scaling, fp4)
            i += 1
        }
        let blocks = (end - i) >> 3
        if blocks > 0 {
            E2M1Kernel.encodeBlocks(x + i, codes + (i >> 1), blocks, multiplier: scaling.ratio)
            i += 8 * blocks
        }
        if i < end { codeSegmentPacked(x, codes, nil, i..<end, scaling, fp4) }
    }

    /// `codeSegmentPacked` of a group with a zero scale: signed zeros.
    static func zeroSegmentPacked(_ x: UnsafePointer<Float>, _ codes: UnsafeMutablePointer<UInt8>,
                                  _ fake: UnsafeMutablePointer<Float>?, _ range: Range<Int>) {
        for i in range {
            let c = UInt8(truncatingIfNeeded: (x[i].bitPattern >> 31) << 3)
            if i & 1 == 0 { codes[i >> 1] = c } else { codes[i >> 1] |= c << 4 }
            fake?[i] = x[i] * 0
        }
    }

    @inline(__always)
    static func codeSegment<S: ElementScaling, R: MagnitudeRounder>(
        _ x: UnsafePointer<Float>, _ dst: UnsafeMutablePointer<UInt8>, _ fake: UnsafeMutablePointer<Float>?,
        _ range: Range<Int>, _ scaling: S, _ rounder: R, _ enc: CodeWriter
    ) {
        if let fake {
            for i in range {
                let v = scaling.toGrid(x[i])
                let r = rounder.round(abs(v), index: i)
                dst[i] = enc.code(v, r)
                fake[i] = scaling.fromGrid(withSign(of: v, r))
            }
        } else {
            for i in range {
                let v = scaling.toGrid(x[i])
                dst[i] = enc.code(v, rounder.round(abs(v), index: i))
            }
        }
    }

    /// Decodes codes with per-group float scales (`scales[g]`; nvfp4: float(sb), with
    /// `tensorScale` S; every other rule, nvfp4_torchao included: x̂ = q · scales[g]) into x̂, row-major [rows, cols]. `residual`, when given, is added into
    /// each row right after it is decoded (the same additions as `OCC.scatterAdd` afterwards).
    public func dequantize(codes: UnsafePointer<UInt8>, rows: Int, cols: Int,
                           scales: UnsafePointer<Float>, tensorScale: Float,
                           into out: UnsafeMutablePointer<Float>, residual: CSRResidual? = nil) throws {
        try validate()
        let L = try granularity.layout(rows: rows, cols: cols)
        let table = ElementCodec.of(format).decodeTable
        let packed = format.isFP4, twoLevel = scaleRule.dividesByTensorScale
        table.withUnsafeBufferPointer { tb in
            let grain = Parallel.grain(count: L.rows, minItems: Swift.max(1, 8192 / Swift.max(1, L.cols)))
            Parallel.forChunks(count: L.rows, grain: grain) { rowRange in
                for r in rowRange {
                    let gbase = (r / L.groupRows) * L.tileCols
                    for j in 0..<L.tileCols {
                        let s = scales[gbase + j]
                        let start = r * L.cols + j * L.groupCols
                        let range = start..<(start + L.groupCols)
                        if twoLevel {
                            Quantizer.decodeSegment(codes, packed, tb, range, TwoLevelScaling(sb: s, tensorScale: tensorScale), out)
                        } else {
                            Quantizer.decodeSegment(codes, packed, tb, range, DivideScaling(s: s), out)
                        }
                    }
                    if let residual { residual.add(row: r, into: out + r * L.cols, cols: L.cols) }
                }
            }
        }
    }

    @inline(__always)
    static func decodeSegment<S: ElementScaling>(_ codes: UnsafePointer<UInt8>, _ packed: Bool, _ table: UnsafeBufferPointer<Float>,
                                                 _ range: Range<Int>, _ scaling: S, _ out: UnsafeMutablePointer<Float>) {
        if packed {
            // Byte by byte (two elements each), values by a select chain on the magnitude code
            // instead of a table load: the loop vectorizes (a table lookup keeps it scalar).
            let d = FP4Decoder(table), end = range.upperBound
            var i = range.lowerBound
            if i < end && i & 1 == 1 {
                out[i] = scaling.fromGrid(d.value(UInt32(codes[i >> 1] >> 4)))
                i += 1
            }
            let pairs = (end - i) >> 1
            let bp = codes + (i >> 1), op = out + i
            if d.isE2M1 {
                for p in 0..<pairs {
                    let b = UInt32(bp[p])
                    op[2 * p] = scaling.fromGrid(FP4Decoder.valueE2M1(b & 0xF))
                    op[2 * p + 1] = scaling.fromGrid(FP4Decoder.valueE2M1(b >> 4))
                }
            } else {
                for p in 0..<pairs {
                    let b = UInt32(bp[p])
                    op[2 * p] = scaling.fromGrid(d.value(b & 0xF))
                    op[2 * p + 1] = scaling.fromGrid(d.value(b >> 4))
                }
            }
            i += 2 * pairs
            if i < end { out[i] = scaling.fromGrid(d.value(UInt32(codes[i >> 1] & 0xF))) }
        } else {
            for i in range { out[i] = scaling.fromGrid(table[Int(codes[i])]) }
        }
    }
}

/// Packs `count` 4-bit codes (one per byte, low nibble used) two per byte, element 2i in
/// the low nibble; an odd count pads the last high nibble with 0.
public func packNibbles(_ codes: UnsafePointer<UInt8>, count: Int, into packed: UnsafeMutablePointer<UInt8>) {
    let pairs = count / 2
    for p in 0..<pairs { packed[p] = (codes[2 * p] & 0xF) | ((codes[2 * p + 1] & 0xF) << 4) }
    if count % 2 == 1 { packed[pairs] = codes[count - 1] & 0xF }
}

/// Inverse of `packNibbles`.
public func unpackNibbles(_ packed: UnsafePointer<UInt8>, count: Int, into codes: UnsafeMutablePointer<UInt8>) {
    for i in 0..<count { codes[i] = (packed[i >> 1] >> UInt8((i & 1) << 2)) & 0xF }
}
