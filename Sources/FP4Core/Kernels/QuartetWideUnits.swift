import FP4ISA

/// The AVX-512 form of Quartet's operand kernels: the forward QuEST (QuestKernels.swift) and the
/// backward operands (QuartetGradientKernels.swift).
///
/// The library is compiled for AVX2, so the Swift kernels handle 8 lanes per SIMD8 and build
/// each draw's two 64-bit multiplies from 32-bit ones. On CPUs with AVX-512 DQ the arithmetic
/// runs in C with one zmm of 16 lanes and the draws computed in registers:
/// `fp4isa_quartet_vertical_avx512` does a 32-row × 16-column unit of `verticalOperand` (filling
/// the stage tile, storing the results and threading stay here), `fp4isa_quartet_rows_avx512`
/// one row of `gradientRows`, written straight into the output; `fp4isa_quest_blocks_avx512`
/// runs `questRows` and `WeightRows.fill` 8 blocks at a time (one zmm of float64 sums, each
/// block's in element order). The C kernels do the Swift kernels' float operations in the same
/// order, so both give the same bits (QuartetWideUnitTests, QuestWideTests).
extension QuartetKernels {
    /// Columns per wide unit (one zmm of floats).
    @inline(__always) static var wideColumns: Int { 16 }

    /// True when `gradientRows` and `verticalOperand` should use the C kernels: the condition of
    /// `CounterDraws.batched` (AVX-512 DQ, and the packed GEMMs on the `avx512vnni` path, so
    /// FP4SWIFT_GEMM_ISA=avx2 keeps the Swift kernels and tests cover both). Read once per call.
    static var wideUnits: Bool { CounterDraws.batched }

    /// `questRows(_:rows:cols:into:)` through the C kernel: chunks of consecutive blocks (the
    /// blocks of A [rows, cols] are contiguous), written straight into the targets.
    static func questRowsWide(_ a: UnsafePointer<Float>, rows: Int, cols: Int, into t: QuestTargets) -> Bool {
        let b = QuartetKernels.block, blocks = rows * cols / b
        guard blocks > 0 else { return true }
        return Parallel.allChunks(count: blocks, grain: Parallel.grain(count: blocks, minItems: 512)) { range in
            let i = range.lowerBound * b
            return fp4isa_quest_blocks_avx512(a + i, Int64(b), Int64(range.count), norm, t.codes.map { $0 + i / 2 },
                                              t.scales.map { $0 + i / b }, t.mask.map { $0 + i / 8 },
                                              t.xhat.map { $0 + i }, Int64(b)) == 0
        }
    }

    /// Scratch of one worker's wide units: the C kernel's outputs before `VerticalOutput`
    /// stores them.
    struct WideScratch {
        /// 16 group scales.
        let scales: UnsafeMutablePointer<Float>
        /// Code words [4][16] (word j of column l at 16·j + l).
        let words: UnsafeMutablePointer<UInt32>
        /// x̂ [32][16].
        let xhat: UnsafeMutablePointer<Float>

        static func allocate() -> WideScratch {
            WideScratch(scales: .allocate(capacity: 16), words: .allocate(capacity: 4 * 16),
                        xhat: .allocate(capacity: QuartetKernels.block * 16))
        }

        func deallocate() {
            scales.deallocate()
            words.deallocate()
            xhat.deallocate()
        }
    }

    /// `verticalUnit` for the 16 columns src[0 ..< 16] of a 32-row stage tile (stride 32; columns
    /// past `valid` are zeros in the tile and are not stored), handed to `output` as two 8-column
    /// halves. False when a code output met a non-finite group among the valid columns.
    @inline(__always)
    static func verticalWideUnit<O: VerticalOutput>(_ src: UnsafePointer<Float>, signs: UnsafePointer<Float>,
                                                    key: UInt64, rp: Int, n0: Int, t0: Int, valid: Int,
                                                    scratch: WideScratch, output: O) -> Bool {
        let b = QuartetKernels.block, w = wideColumns
        let nonFinite = fp4isa_quartet_vertical_avx512(src, Int64(b), signs, norm, key, UInt64(rp), UInt64(n0), UInt64(t0),
                                                       O.emitsCodes ? scratch.words : nil, scratch.scales,
                                                       O.emitsCodes ? nil : scratch.xhat)
        let low = Swift.min(valid, 8), high = valid - low
        if O.emitsCodes {
            for j in 0..<(b / 8) {
                let p = UnsafeRawPointer(scratch.words + w * j)
                output.storeCodes(p.loadUnaligned(as: SIMD8<UInt32>.self), word: j, n0: n0, t0: t0, rp: rp, valid: low)
                if high > 0 {
                    output.storeCodes(p.loadUnaligned(fromByteOffset: 32, as: SIMD8<UInt32>.self), word: j, n0: n0 + 8,
                                      t0: t0, rp: rp, valid: high)
                }
            }
            output.storeScales(scratch.scales, n0: n0, t0: t0, rp: rp, valid: low)
            if high > 0 { output.storeScales(scratch.scales + 8, n0: n0 + 8, t0: t0, rp: rp, valid: high) }
            return nonFinite & ((1 << UInt32(valid)) - 1) == 0
        }
        for i in 0..<b {
            output.storeRow(load8(UnsafePointer(scratch.xhat + w * i)), t: t0 + i, n0: n0, valid: low)
            if high > 0 { output.storeRow(load8(UnsafePointer(scratch.xhat + w * i + 8)), t: t0 + i, n0: n0 + 8, valid: high) }
        }
        return true
    }

    /// Where the row kernel writes one row: codes + scales (both set) or x̂.
    struct WideRowTarget {
        var codes: UnsafeMutablePointer<UInt8>? = nil
        var scales: UnsafeMutablePointer<Float>? = nil
        var xhat: UnsafeMutablePointer<Float>? = nil
    }

    /// `gradientRows` for the rows `range` of A [rows, cols] through the row kernel; false when
    /// some group held NaN or ±inf. `signs` holds the 32 signs of `Hadamard.rotate32`.
    static func gradientRowsWide<O: GradientRowsOutput>(_ a: UnsafePointer<Float>, rows range: Range<Int>, cols: Int,
                                                        signs: UnsafePointer<Float>, key: UInt64, output: O) -> Bool {
        let b = QuartetKernels.block, cp = (cols + b - 1) / b * b
        var ok = true
        for r in range {
            let target = output.wideRow(at: r * cp)
            if fp4isa_quartet_rows_avx512(a + r * cols, Int64(cols), signs, norm, key, UInt64(r * cp), target.codes,
                                          target.scales, target.xhat) != 0 {
                ok = false
            }
        }
        return ok
    }
}
