/// The clip mask of a quantization (numerics.md §2, `quest`; used by Quartet's backward):
/// one bit per element, 1 when the element's grid value v lies strictly inside the
/// format's range, |v| < fmax (for QuEST e2m1: |x / s| < 6), 0 when it clipped (or sat
/// on the boundary) and in groups holding NaN/inf. Elements of all-zero groups get 1.
///
/// Packing: element i (flat, row-major) is bit (i mod 8) of byte i / 8, least significant
/// bit first (numpy: `np.packbits(m, bitorder="little")`); the last byte is zero-padded.
extension Quantizer {
    /// Bytes of the packed mask of `count` elements.
    public static func maskBytes(count: Int) -> Int { (count + 7) / 8 }

    /// Writes the clip mask of x under these scales (from `scales(of:)` of the same x).
    public func clipMask(_ x: UnsafePointer<Float>, scales ts: TensorScales,
                         into mask: UnsafeMutablePointer<UInt8>) {
        let L = ts.layout
        let fmax = format.maxValue, twoLevel = scaleRule.dividesByTensorScale
        let bytes = Quantizer.maskBytes(count: L.count)
        guard bytes > 0 else { return }
        // Chunks of whole 8-row bands start at a flat index that is a multiple of 8, so no
        // two chunks share a byte.
        let bands = (L.rows + 7) / 8
        let grain = Parallel.grain(count: bands, minItems: Swift.max(1, 1024 / Swift.max(1, L.cols)))
        ts.groups.withUnsafeBufferPointer { gs in
            ts.nonFinite.withUnsafeBufferPointer { bad in
                Parallel.forChunks(count: bands, grain: grain) { bandRange in
                    let r0 = bandRange.lowerBound * 8, r1 = Swift.min(L.rows, bandRange.upperBound * 8)
                    let b0 = (r0 * L.cols) / 8, b1 = (r1 * L.cols + 7) / 8
                    for b in b0..<b1 { mask[b] = 0 }
                    for r in r0..<r1 {
                        let gbase = (r / L.groupRows) * L.tileCols
                        for j in 0..<L.tileCols {
                            let g = gs[gbase + j]
                            let start = r * L.cols + j * L.groupCols, end = start + L.groupCols
                            if bad[gbase + j] { continue }
                            if g.isZero {
                                for i in start..<end { mask[i >> 3] |= UInt8(1) << UInt8(i & 7) }
                            } else if g.multiplier != 0 {
                                Quantizer.maskSegment(x, mask, start..<end, MultiplyScaling(g), fmax)
                            } else if twoLevel {
                                Quantizer.maskSegment(x, mask, start..<end, TwoLevelScaling(sb: g.scale, tensorScale: g.tensorScale), fmax)
                            } else {
                                Quantizer.maskSegment(x, mask, start..<end, DivideScaling(s: g.scale), fmax)
                            }
                        }
                    }
                }
            }
        }
    }

    @inline(__always)
    static func maskSegment<S: ElementScaling>(_ x: UnsafePointer<Float>, _ mask: UnsafeMutablePointer<UInt8>,
                                               _ range: Range<Int>, _ scaling: S, _ fmax: Float) {
        for i in range where abs(scaling.toGrid(x[i])) < fmax {
            mask[i >> 3] |= UInt8(1) << UInt8(i & 7)
        }
    }

    /// Scales and clip mask of x in one call; `mask` holds `maskBytes(count: rows·cols)` bytes.
    @discardableResult
    public func clipMask(_ x: UnsafePointer<Float>, rows: Int, cols: Int,
                         into mask: UnsafeMutablePointer<UInt8>) throws -> TensorScales {
        let ts = try scales(of: x, rows: rows, cols: cols)
        clipMask(x, scales: ts, into: mask)
        return ts
    }
}
