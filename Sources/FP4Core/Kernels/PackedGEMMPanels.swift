// Operand panels of the packed GEMM (numerics.md §11) and the portable tile kernel that is
// the reference of the ISA kernels in Sources/FP4ISA.
//
// A panel holds a tile of rows as bytes in the order the kernels read them: for each scale
// group g, for each quad q of 4 consecutive k, for each row, the 4 values. A's values are
// its grid integers plus the offset o = max |A value| (so they are unsigned, as vpdpbusd and
// vpmaddubsw need); B's are its signed grid integers. Σ (a + o)·b = Σ a·b + o·Σ b, so each
// group's sum starts at −o·Σ b (B's `corrections`). Padding (rows past M or N, k past the
// group) is a zero value: o in A, 0 in B.

/// Sizes shared by both operands' panels.
struct PanelShape {
    let K: Int
    let groupLength: Int
    let groups: Int
    let quadsPerGroup: Int
    let mr: Int
    let nr: Int

    init(K: Int, groupLength: Int, mr: Int, nr: Int) {
        self.K = K
        self.groupLength = groupLength
        groups = K / groupLength
        quadsPerGroup = (groupLength + 3) / 4
        self.mr = mr
        self.nr = nr
    }

    /// Rows are whole bytes and quads are byte pairs: the table-driven fast path applies.
    var byteAligned: Bool { K % 2 == 0 && groupLength % 4 == 0 }
}

/// The scale index of each K group of one row: `layout.group(row:col:)` at the groups'
/// first columns, with the divisions done once per row instead of once per group.
@inline(__always) func groupScaleIndices(_ layout: GroupLayout, row r: Int, groups G: Int, groupLength gk: Int,
                                         _ body: (_ g: Int, _ index: Int) -> Void) {
    let base = (r / layout.groupRows) * layout.tileCols
    let per = layout.groupCols / gk  // K groups per scale group along K (gk divides groupCols)
    var index = base, left = per
    for g in 0..<G {
        body(g, index)
        left -= 1
        if left == 0 { index += 1; left = per }
    }
}

/// The scales of one panel row, group by group, `stride` apart (0 for a padding row past
/// `rows`): the shared scale layout of A's tiles and B's strips ([G][mr] and [G][nr]).
@inline(__always) func panelRowScales(_ src: UnsafePointer<Float>, _ layout: GroupLayout, row r: Int, rows: Int,
                                      groups G: Int, groupLength gk: Int,
                                      into dst: UnsafeMutablePointer<Float>, stride: Int) {
    if r < rows {
        groupScaleIndices(layout, row: r, groups: G, groupLength: gk) { g, index in dst[g * stride] = src[index] }
    } else {
        for g in 0..<G { dst[g * stride] = 0 }
    }
}

/// Reads code (row, k) of a packed [rows, K] tensor.
@inline(__always) func nibble(_ codes: UnsafePointer<UInt8>, _ flat: Int) -> Int {
    Int(codes[flat >> 1] >> UInt8((flat & 1) << 2)) & 0xF
}

/// Scratch bytes for panels, taken from the scratch pool (no page faults on repeated calls).
final class ByteScratch {
    private let storage: Scratch
    let raw: UnsafeMutableRawPointer
    init(bytes: Int) {
        storage = Scratch((bytes + 3) / 4)
        raw = UnsafeMutableRawPointer(storage.pointer)
    }
}

/// A's panels: `tiles` tiles of mr rows, unsigned values, and their scales [G][mr].
final class PanelsA {
    let tiles: Int
    let tileBytes: Int
    let shape: PanelShape
    private let bytes: ByteScratch
    private let scaleBuf: Scratch

    init(_ a: GEMMOperand, _ layout: GroupLayout, _ grid: IntegerGrid, _ shape: PanelShape) {
        self.shape = shape
        let mr = shape.mr, G = shape.groups, Q = shape.quadsPerGroup, gk = shape.groupLength, K = shape.K
        tiles = (a.rows + mr - 1) / mr
        tileBytes = G * Q * mr * 4
        bytes = ByteScratch(bytes: tiles * tileBytes)
        scaleBuf = Scratch(tiles * G * mr)
        let o = grid.maxMagnitude
        let unsigned = grid.values.map { UInt8(Int($0) + o) }
        // Two codes of a byte → their two unsigned values (low code in the low byte).
        let pairs = (0..<256).map { UInt16(unsigned[$0 & 15]) | UInt16(unsigned[$0 >> 4]) << 8 }
        let base = bytes.raw.assumingMemoryBound(to: UInt8.self), scales = scaleBuf.pointer
        let codes = a.codes, rows = a.rows, aligned = shape.byteAligned, tileBytes = tileBytes
        pairs.withUnsafeBufferPointer { pairs in
            unsigned.withUnsafeBufferPointer { unsigned in
                Parallel.forChunks(count: tiles, grain: Parallel.grain(count: tiles, minItems: 8)) { range in
                    for t in range {
                        let panel = base + t * tileBytes
                        for i in 0..<mr {
                            let r = t * mr + i
                            panelRowScales(a.scales, layout, row: r, rows: rows, groups: G, groupLength: gk,
                                           into: scales + t * G * mr + i, stride: mr)
                            if r >= rows {
                                for g in 0..<G { for q in 0..<Q { (panel + ((g * Q + q) * mr + i) * 4).update(repeating: UInt8(o), count: 4) } }
                            } else if aligned {
                                let row = codes + r * (K / 2)
                                for gq in 0..<(G * Q) {
                                    let word = UInt32(pairs[Int(row[2 * gq])]) | UInt32(pairs[Int(row[2 * gq + 1])]) << 16
                                    UnsafeMutableRawPointer(panel + (gq * mr + i) * 4).storeBytes(of: word, as: UInt32.self)
                                }
                            } else {
                                for g in 0..<G {
                                    for q in 0..<Q {
                                        let dst = panel + ((g * Q + q) * mr + i) * 4
                                        for l in 0..<4 {
                                            let kk = 4 * q + l
                                            dst[l] = kk < gk ? unsigned[nibble(codes, r * K + g * gk + kk)] : UInt8(o)
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    @inline(__always) func codes(_ t: Int) -> UnsafePointer<UInt8> {
        UnsafePointer(bytes.raw.assumingMemoryBound(to: UInt8.self) + t * tileBytes)
    }
    @inline(__always) func scales(_ t: Int) -> UnsafePointer<Float> { UnsafePointer(scaleBuf.pointer + t * shape.groups * shape.mr) }
}

/// B's panels: `strips` strips of nr rows of B (nr columns of C), signed values, the
/// per-group offset corrections −o·Σ b [G][nr] and the scales [G][nr].
final class PanelsB {
    let strips: Int
    let stripBytes: Int
    let shape: PanelShape
    private let bytes: ByteScratch
    private let corrBuf: ByteScratch
    private let scaleBuf: Scratch

    init(_ b: GEMMOperand, _ layout: GroupLayout, _ grid: IntegerGrid, offset o: Int, _ shape: PanelShape) {
        self.shape = shape
        let nr = shape.nr, G = shape.groups, Q = shape.quadsPerGroup, gk = shape.groupLength, K = shape.K
        strips = (b.rows + nr - 1) / nr
        stripBytes = G * Q * nr * 4
        bytes = ByteScratch(bytes: strips * stripBytes)
        corrBuf = ByteScratch(bytes: strips * G * nr * 4)
        scaleBuf = Scratch(strips * G * nr)
        let values = grid.values
        let pairs = (0..<256).map { UInt16(UInt8(bitPattern: values[$0 & 15])) | UInt16(UInt8(bitPattern: values[$0 >> 4])) << 8 }
        let pairSums = (0..<256).map { Int32(values[$0 & 15]) + Int32(values[$0 >> 4]) }
        let base = bytes.raw.assumingMemoryBound(to: Int8.self), scales = scaleBuf.pointer
        let corr = corrBuf.raw.assumingMemoryBound(to: Int32.self)
        let codes = b.codes, rows = b.rows, aligned = shape.byteAligned, stripBytes = stripBytes
        pairs.withUnsafeBufferPointer { pairs in
            pairSums.withUnsafeBufferPointer { pairSums in
                values.withUnsafeBufferPointer { values in
                    Parallel.forChunks(count: strips, grain: Parallel.grain(count: strips, minItems: 4)) { range in
                        for s in range {
                            let panel = base + s * stripBytes
                            for j in 0..<nr {
                                let r = s * nr + j
                                panelRowScales(b.scales, layout, row: r, rows: rows, groups: G, groupLength: gk,
                                               into: scales + s * G * nr + j, stride: nr)
                                if r >= rows {
                                    for g in 0..<G {
                                        corr[(s * G + g) * nr + j] = 0
                                        for q in 0..<Q { (panel + ((g * Q + q) * nr + j) * 4).update(repeating: 0, count: 4) }
                                    }
                                } else if aligned {
                                    let row = codes + r * (K / 2)
                                    for g in 0..<G {
                                        var sum: Int32 = 0
                                        for q in 0..<Q {
                                            let gq = g * Q + q
                                            let b0 = Int(row[2 * gq]), b1 = Int(row[2 * gq + 1])
                                            sum &+= pairSums[b0] &+ pairSums[b1]
                                            let word = UInt32(pairs[b0]) | UInt32(pairs[b1]) << 16
                                            UnsafeMutableRawPointer(panel + (gq * nr + j) * 4).storeBytes(of: word, as: UInt32.self)
                                        }
                                        corr[(s * G + g) * nr + j] = -Int32(o) &* sum
                                    }
                                } else {
                                    for g in 0..<G {
                                        var sum: Int32 = 0
                                        for q in 0..<Q {
                                            let dst = panel + ((g * Q + q) * nr + j) * 4
                                            for l in 0..<4 {
                                                let kk = 4 * q + l
                                                let v = kk < gk ? values[nibble(codes, r * K + g * gk + kk)] : 0
                                                dst[l] = v
                                                sum &+= Int32(v)
                                            }
                                        }
                                        corr[(s * G + g) * nr + j] = -Int32(o) &* sum
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    @inline(__always) func codes(_ s: Int) -> UnsafePointer<Int8> {
        UnsafePointer(bytes.raw.assumingMemoryBound(to: Int8.self) + s * stripBytes)
    }
    @inline(__always) func corrections(_ s: Int) -> UnsafePointer<Int32> {
        UnsafePointer(corrBuf.raw.assumingMemoryBound(to: Int32.self) + s * shape.groups * shape.nr)
    }
    @inline(__always) func scales(_ s: Int) -> UnsafePointer<Float> { UnsafePointer(scaleBuf.pointer + s * shape.groups * shape.nr) }
}

extension PackedGEMM {
    static let genericMR = 4
    static let genericNR = 16

    /// The portable tile (any CPU) and the reference of the ISA kernels: the same integer
    /// sums and the same float operations in the same order (fp4isa.h).
    static func genericTile(_ a: UnsafePointer<UInt8>, _ b: UnsafePointer<Int8>, _ corr: UnsafePointer<Int32>,
                            _ sa: UnsafePointer<Float>, _ sb: UnsafePointer<Float>, _ groups: Int64, _ quads: Int64,
                            _ post: Float, _ div: Float, _ c: UnsafeMutablePointer<Float>, _ ldc: Int64,
                            _ mr: Int64, _ nr: Int64) {
        let MR = genericMR, NR = genericNR, Q = Int(quads)
        withUnsafeTemporaryAllocation(of: Float.self, capacity: MR * NR) { f in
            withUnsafeTemporaryAllocation(of: Int32.self, capacity: MR * NR) { acc in
                f.initialize(repeating: 0)
                var ap = a, bp = b
                for g in 0..<Int(groups) {
                    for i in 0..<MR { for j in 0..<NR { acc[i * NR + j] = corr[g * NR + j] } }
                    for _ in 0..<Q {
                        for i in 0..<MR {
                            for j in 0..<NR {
                                var s: Int32 = 0
                                for l in 0..<4 { s &+= Int32(ap[i * 4 + l]) &* Int32(bp[j * 4 + l]) }
                                acc[i * NR + j] &+= s
                            }
                        }
                        ap += 4 * MR
                        bp += 4 * NR
                    }
                    for i in 0..<MR {
                        for j in 0..<NR {
                            f[i * NR + j] = f[i * NR + j].addingProduct(Float(acc[i * NR + j]), sa[g * MR + i] * sb[g * NR + j])
                        }
                    }
                }
                for i in 0..<Int(mr) {
                    for j in 0..<Int(nr) { c[i * Int(ldc) + j] = (f[i * NR + j] * post) / div }
                }
            }
        }
    }
}
