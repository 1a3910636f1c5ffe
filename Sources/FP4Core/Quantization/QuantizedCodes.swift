/// Quantize to stored codes + scales, and back (spec §1–2).
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
        let ts = try scales(of: x, rows: rows, cols: cols)
        if ts.nonFiniteCount > 0 {
            let i = Quantizer.firstNonFiniteIndex(x, count: rows * cols)
            throw FP4Error(.nonFinite, "cannot quantize a non-finite value (\(x[i])) at flat index \(i)")
        }
        let signBit = UInt8(format.signBit), infCode = Int32(format.infMagnitudeCode ?? format.maxFiniteMagnitudeCode)
        struct Run: RounderVisitor {
            let q: Quantizer, x: UnsafePointer<Float>, codes: UnsafeMutablePointer<UInt8>, ts: TensorScales
            let fake: UnsafeMutablePointer<Float>?, enc: CodeWriter
            func visit<R: MagnitudeRounder>(_ rounder: R) { q.quantizeRows(x, codes, fake, ts, q.scaleRule == .nvfp4, enc, rounder) }
        }
        withRounder(Run(q: self, x: x, codes: codes, ts: ts, fake: dequantized,
                        enc: CodeWriter(grid: GridParameters(format), signBit: signBit, infCode: infCode)))
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
                                           _ fake: UnsafeMutablePointer<Float>?, _ ts: TensorScales, _ twoLevel: Bool, _ enc: CodeWriter, _ rounder: R) {
        let L = ts.layout
        let packed = format.isFP4
        // Chunks start at an even flat index so no two chunks share a packed byte.
        var grain = Parallel.grain(count: L.rows, minItems: Swift.max(1, 8192 / Swift.max(1, L.cols)))
        if packed && L.cols % 2 == 1 && grain % 2 == 1 { grain += 1 }
        ts.groups.withUnsafeBufferPointer { gs in
            Parallel.forChunks(count: L.rows, grain: grain) { rowRange in
                let first = rowRange.lowerBound * L.cols, n = rowRange.count * L.cols
                // FP4: one code per byte into a scratch row block, then pack.
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
    /// `tensorScale` S) into x̂, row-major [rows, cols].
    public func dequantize(codes: UnsafePointer<UInt8>, rows: Int, cols: Int,
                           scales: UnsafePointer<Float>, tensorScale: Float,
                           into out: UnsafeMutablePointer<Float>) throws {
        try validate()
        let L = try granularity.layout(rows: rows, cols: cols)
        let table = ElementCodec.of(format).decodeTable
        let packed = format.isFP4, twoLevel = scaleRule == .nvfp4
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
                }
            }
        }
    }

    @inline(__always)
    static func decodeSegment<S: ElementScaling>(_ codes: UnsafePointer<UInt8>, _ packed: Bool, _ table: UnsafeBufferPointer<Float>,
                                                 _ range: Range<Int>, _ scaling: S, _ out: UnsafeMutablePointer<Float>) {
        if packed {
            for i in range { out[i] = scaling.fromGrid(table[Int((codes[i >> 1] >> UInt8((i & 1) << 2)) & 0xF)]) }
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
