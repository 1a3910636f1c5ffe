import FP4ISA

/// The backward kernels of `QuartetLinear`: Q_b (e2m1, absmax_div3 scales, stochastic
/// rounding) of operands rotated by diag(d)·H, built in one pass each, and the clip-mask +
/// un-rotation of the GEMM results. Same bits as the general path (see QuestKernels.swift).
///
/// Each operand can be emitted as float32 x̂ (the simulated GEMMs' sgemm operands) or as
/// packed e2m1 codes + one float scale per group (the packed GEMMs' operands, numerics.md §11):
/// the output is a type parameter (`GradientRowsOutput`, `VerticalOutput`), the rounding
/// (`stochasticEncode`) and the draws are the same code for both, so codes × scales are x̂.
///
/// These Swift kernels are the reference and the AVX2 / generic path; on AVX-512 machines the
/// arithmetic of `gradientRows` and of `verticalOperand`'s units runs in C with the same
/// operations (QuartetWideUnits.swift).
extension QuartetKernels {

    @inline(__always) static var gamma: UInt64 { CounterRNG.gamma }

    /// CounterRNG.uniform for the 8 counters base + (k + l)·γ, l = 0..<8.
    @inline(__always)
    static func uniforms(_ base: UInt64, _ k: UInt64) -> SIMD8<Float> {
        uniformsFromCounters(SIMD8<UInt64>(repeating: base) &+ (SIMD8<UInt64>(0, 1, 2, 3, 4, 5, 6, 7) &+ k) &* gamma)
    }

    /// e2m1 stochastic rounding of v = x / s (`roundStochastic`): the code (sign bit 8 | k + 2e
    /// for k = fl + up grid steps of binade e, as `E2M1Kernel.encode`) and x̂ = q·s. Callers that
    /// use only one of the two get the other's instructions removed by the optimizer.
    @inline(__always)
    static func stochasticEncode(_ x: SIMD8<Float>, _ s: SIMD8<Float>, _ u: SIMD8<Float>)
        -> (code: SIMD8<UInt32>, xhat: SIMD8<Float>) {
        let r = stochasticGrid(x / s, u)
        return (r.code, r.q * s)
    }

    /// e2m1 stochastic rounding of the grid-scaled v (`roundStochastic` + `CodeWriter.code`):
    /// the code and the signed grid value q.
    @inline(__always)
    static func stochasticGrid(_ v: SIMD8<Float>, _ u: SIMD8<Float>) -> (code: SIMD8<UInt32>, q: SIMD8<Float>) {
        let a = minNonNegative(magnitude(v), fmax)
        let e = binade(a)
        let q = a * toUnits(e)  // < 4
        let fl = floorNonNegative(q)
        // fl + (q − fl > u ? 1 : 0); q − fl and u lie in [0, 1).
        let up = float(lessMask(bits(u), bits(q - fl)) & Float(1).bitPattern)
        let k = fl + up  // 0 ... 4, an integer
        // k + 2^23 holds k in its low mantissa bits (exact).
        let code = (bits(k + SIMD8<Float>(repeating: 0x1p23)) & 7) &+ (uint(e) &<< 1) | ((bits(v) & 0x8000_0000) &>> 28)
        return (code, withSign(v, k * toValue(e)))
    }

    /// x̂ of `stochasticEncode`.
    @inline(__always)
    static func stochasticLanes(_ x: SIMD8<Float>, _ s: SIMD8<Float>, _ u: SIMD8<Float>) -> SIMD8<Float> {
        stochasticEncode(x, s, u).xhat
    }

    /// Codes of ±0 with the signs of x (a zero group: `Quantizer` writes the sign bit alone).
    @inline(__always)
    static func signCodes(_ x: SIMD8<Float>) -> SIMD8<UInt32> { (bits(x) &>> 28) & signBit }

    /// Q_b of one rotated block: x̂, and the same values as codes + scale.
    struct Gradient {
        /// x̂ = q·s (NaN for a non-finite group).
        var xhat: Block32
        /// 32 codes packed two per byte (element 2i low nibble), as four little-endian words.
        var codes: SIMD4<UInt32>
        /// The group's scale (1 for a zero group, as `ScaleRule.groupScale`).
        var scale: Float
        /// False when the block held NaN or ±inf (codes and scale are then meaningless).
        var finite: Bool
    }

    /// Q_b (e2m1, absmax_div3, stochastic with the draws of flat indices index ..< index + 32
    /// under `key`, NaN for a non-finite group) of one rotated block.
    @inline(__always)
    static func quantizeGradientBlock(_ x: Block32, key: UInt64, index: Int) -> Gradient {
        let amax = amaxBits(x)
        if amax >= 0x7F80_0000 {
            let nan = SIMD8<Float>(repeating: .nan)
            return Gradient(xhat: Block32(nan, nan, nan, nan), codes: .zero, scale: 1, finite: false)
        }
        // ScaleRule.absmaxDiv3: s = 2^floor(log2 amax) / 3; amax 0 or s 0: a zero group.
        let scale = amax == 0 ? 0 : ScaleRule.absmaxDiv3Scale(amax: Float(bitPattern: amax))
        if !(scale > 0) {
            let z = SIMD8<Float>(repeating: 0)
            return Gradient(xhat: Block32(x.v0 * z, x.v1 * z, x.v2 * z, x.v3 * z),
                            codes: SIMD4(packLanes(signCodes(x.v0), step: 4), packLanes(signCodes(x.v1), step: 4),
                                         packLanes(signCodes(x.v2), step: 4), packLanes(signCodes(x.v3), step: 4)),
                            scale: 1, finite: true)
        }
        let s = SIMD8<Float>(repeating: scale)
        let base = key &+ (UInt64(bitPattern: Int64(index)) &+ 1) &* gamma
        let r0 = stochasticEncode(x.v0, s, uniforms(base, 0)), r1 = stochasticEncode(x.v1, s, uniforms(base, 8))
        let r2 = stochasticEncode(x.v2, s, uniforms(base, 16)), r3 = stochasticEncode(x.v3, s, uniforms(base, 24))
        return Gradient(xhat: Block32(r0.xhat, r1.xhat, r2.xhat, r3.xhat),
                        codes: SIMD4(packLanes(r0.code, step: 4), packLanes(r1.code, step: 4),
                                     packLanes(r2.code, step: 4), packLanes(r3.code, step: 4)),
                        scale: scale, finite: true)
    }

    /// x̂ of `quantizeGradientBlock`.
    @inline(__always)
    static func quantizeGradient(_ x: Block32, key: UInt64, index: Int) -> Block32 {
        quantizeGradientBlock(x, key: key, index: index).xhat
    }

    /// Where `gradientRows` puts the Q_b block at flat index `index` of the padded operand.
    protocol GradientRowsOutput {
        func store(_ q: Gradient, at index: Int)
        /// Where `fp4isa_quartet_rows_avx512` writes the row that starts at flat index `index`:
        /// its codes and scales, or its x̂ (`QuartetWideUnits.swift`).
        func wideRow(at index: Int) -> WideRowTarget
    }

    /// x̂ as float32 [rows, colsPadded].
    struct RowsAsFloats: GradientRowsOutput {
        let out: UnsafeMutablePointer<Float>
        @inline(__always) func store(_ q: Gradient, at index: Int) { q.xhat.store(out + index) }
        @inline(__always) func wideRow(at index: Int) -> WideRowTarget { WideRowTarget(xhat: out + index) }
    }

    /// Packed codes of [rows, colsPadded] and one scale per 32-group (`GroupLayout` order).
    struct RowsAsCodes: GradientRowsOutput {
        let codes: UnsafeMutablePointer<UInt8>, scales: UnsafeMutablePointer<Float>
        @inline(__always) func store(_ q: Gradient, at index: Int) {
            storeCodes(q.codes, codes + index / 2)
            scales[index / QuartetKernels.block] = q.scale
        }
        @inline(__always) func wideRow(at index: Int) -> WideRowTarget {
            WideRowTarget(codes: codes + index / 2, scales: scales + index / QuartetKernels.block)
        }
    }

    /// Q_b(A·H_b) for A [rows, cols] into out [rows, colsPadded] (zero columns up to a
    /// multiple of 32; draw index = flat index in out).
    static func gradientRows(_ a: UnsafePointer<Float>, rows: Int, cols: Int, signs: Block32, key: UInt64,
                             into out: UnsafeMutablePointer<Float>) {
        _ = gradientRows(a, rows: rows, cols: cols, signs: signs, key: key, output: RowsAsFloats(out: out))
    }

    /// `gradientRows` into any output; false when some group held NaN or ±inf (the float
    /// output then holds NaN there, the code output nothing meaningful).
    static func gradientRows<O: GradientRowsOutput>(_ a: UnsafePointer<Float>, rows: Int, cols: Int, signs: Block32,
                                                    key: UInt64, output: O) -> Bool {
        let b = QuartetKernels.block
        let cp = (cols + b - 1) / b * b, full = cols / b
        guard rows > 0, cp > 0 else { return true }
        let grain = Parallel.grain(count: rows, minItems: Swift.max(1, 16384 / cp))
        let wide = wideUnits
        let d = UnsafeMutablePointer<Float>.allocate(capacity: b)
        defer { d.deallocate() }
        signs.store(d)
        return Parallel.allChunks(count: rows, grain: grain) { range in
            if wide { return gradientRowsWide(a, rows: range, cols: cols, signs: d, key: key, output: output) }
            var tail = Block32(.zero, .zero, .zero, .zero)
            var ok = true
            for r in range {
                let src = a + r * cols
                for j in 0..<full {
                    let q = quantizeGradientBlock(Hadamard.rotate32(Block32(src + j * b), signs: signs, norm: norm),
                                                  key: key, index: r * cp + j * b)
                    if !q.finite { ok = false }
                    output.store(q, at: r * cp + j * b)
                }
                if full * b < cols {
                    withUnsafeMutableBytes(of: &tail) { raw in
                        let t = raw.baseAddress!.assumingMemoryBound(to: Float.self)
                        t.initialize(repeating: 0, count: b)
                        t.update(from: src + full * b, count: cols - full * b)
                    }
                    let q = quantizeGradientBlock(Hadamard.rotate32(tail, signs: signs, norm: norm),
                                                  key: key, index: r * cp + full * b)
                    if !q.finite { ok = false }
                    output.store(q, at: r * cp + full * b)
                }
            }
            return ok
        }
    }



    /// A source matrix S [rows, cols] handed out in 32×32 row-major tiles (the layout of S).
    protocol RowTiles {
        /// stage[i·32 + c] = S[32·band + i, c0 + c] for i, c < 32 (0 past the last row or
        /// column); false when a non-finite value made the tile invalid.
        func fill(_ stage: UnsafeMutablePointer<Float>, band: Int, c0: Int) -> Bool
    }

    /// A float32 matrix.
    struct MatrixRows: RowTiles {
        let a: UnsafePointer<Float>, rows: Int, cols: Int
        @inline(__always)
        func fill(_ stage: UnsafeMutablePointer<Float>, band: Int, c0: Int) -> Bool {
            let b = QuartetKernels.block, width = Swift.min(b, cols - c0)
            for i in 0..<b {
                let r = band * b + i, dst = stage + i * b
                if r < rows && width == b {
                    Block32(a + r * cols + c0).store(dst)
                } else {
                    dst.initialize(repeating: 0, count: b)
                    if r < rows { dst.update(from: a + r * cols + c0, count: width) }
                }
            }
            return true
        }
    }

    /// X_q from its packed e2m1 codes and per-block scales (`Quantizer.dequantize`); cols a
    /// multiple of 32.
    struct CodeRows: RowTiles {
        let codes: UnsafePointer<UInt8>, scales: UnsafePointer<Float>, table: UnsafePointer<Float>, rows: Int, cols: Int
        @inline(__always)
        func fill(_ stage: UnsafeMutablePointer<Float>, band: Int, c0: Int) -> Bool {
            let b = QuartetKernels.block
            for i in 0..<b {
                let r = band * b + i, dst = stage + i * b
                if r < rows {
                    let start = r * cols + c0, s = scales[start / b]
                    let p = codes + start / 2
                    for c in 0..<(b / 2) {
                        let byte = p[c]
                        dst[2 * c] = table[Int(byte & 0xF)] * s
                        dst[2 * c + 1] = table[Int(byte >> 4)] * s
                    }
                } else {
                    dst.initialize(repeating: 0, count: b)
                }
            }
            return true
        }
    }

    /// W_q = QuEST(W·H) computed block by block (cols a multiple of 32); writes the clip
    /// mask m_w on the way. A tile's column of blocks goes to `fp4isa_quest_blocks_avx512` where
    /// `wideUnits` (read when the value is made).
    struct WeightRows: RowTiles {
        let w: UnsafePointer<Float>, rows: Int, cols: Int, mask: UnsafeMutablePointer<UInt8>
        let wide = QuartetKernels.wideUnits
        @inline(__always)
        func fill(_ stage: UnsafeMutablePointer<Float>, band: Int, c0: Int) -> Bool {
            let b = QuartetKernels.block
            var ok = true
            let r0 = band * b, valid = Swift.max(0, Swift.min(b, rows - r0))
            var i = 0
            if wide && valid > 0 {
                // Block i at w + s + i·cols, its mask word at flat index s + i·cols, x̂ into stage
                // row i (zeros for a non-finite block, as below).
                let s = r0 * cols + c0
                ok = fp4isa_quest_blocks_avx512(w + s, Int64(cols), Int64(valid), norm, nil, nil, mask + s / 8,
                                                stage, Int64(b)) == 0
                i = valid
            }
            while i + 4 <= valid {
                let s = (r0 + i) * cols + c0
                let q = quest4(Hadamard.rotate32(Block32(w + s), signs: nil, norm: norm),
                               Hadamard.rotate32(Block32(w + s + cols), signs: nil, norm: norm),
                               Hadamard.rotate32(Block32(w + s + 2 * cols), signs: nil, norm: norm),
                               Hadamard.rotate32(Block32(w + s + 3 * cols), signs: nil, norm: norm))
                for k in 0..<4 {
                    let qk = k == 0 ? q.0 : k == 1 ? q.1 : k == 2 ? q.2 : q.3
                    if qk.finite {
                        storeWord(qk.mask, mask + (s + k * cols) / 8)
                        qk.xhat.store(stage + (i + k) * b)
                    } else {
                        ok = false
                        (stage + (i + k) * b).initialize(repeating: 0, count: b)
                    }
                }
                i += 4
            }
            while i < valid {
                let s = (r0 + i) * cols + c0
                let q = quest(Hadamard.rotate32(Block32(w + s), signs: nil, norm: norm))
                if q.finite {
                    storeWord(q.mask, mask + s / 8)
                    q.xhat.store(stage + i * b)
                } else {
                    ok = false
                    (stage + i * b).initialize(repeating: 0, count: b)
                }
                i += 1
            }
            if valid < b { (stage + valid * b).initialize(repeating: 0, count: (b - valid) * b) }
            return ok
        }
    }

    /// Where `verticalOperand` puts Q_b(Sᵀ·H_b) [cols, rowsPadded]: per 32-row band and
    /// 8 columns n0 ..< n0 + valid, either row by row (x̂) or lane by lane (codes + scales).
    protocol VerticalOutput {
        /// Whether `storeCodes` / `storeScales` (true) or `storeRow` (false) are called.
        static var emitsCodes: Bool { get }
        /// x̂ of row t of the band (t0 + i) for the 8 columns.
        func storeRow(_ y: SIMD8<Float>, t: Int, n0: Int, valid: Int)
        /// Codes of elements t0 + 8j ..< t0 + 8j + 8 of the 8 operand rows n0 + l (lane l: 8
        /// nibbles, element t0 + 8j + m in bits 4m ..< 4m + 4).
        func storeCodes(_ w: SIMD8<UInt32>, word j: Int, n0: Int, t0: Int, rp: Int, valid: Int)
        /// The group scales of operand rows n0 + l, band t0.
        func storeScales(_ s: UnsafePointer<Float>, n0: Int, t0: Int, rp: Int, valid: Int)
    }

    /// x̂ stored transposed: out[t, n] = Q_b(Sᵀ·H_b)[n, t], out [rowsPadded, cols] (the
    /// layout of S), which sgemm takes with a transposition flag.
    struct ColumnsAsFloats: VerticalOutput {
        let out: UnsafeMutablePointer<Float>, ldOut: Int
        static var emitsCodes: Bool { false }
        @inline(__always) func storeRow(_ y: SIMD8<Float>, t: Int, n0: Int, valid: Int) {
            let dst = out + t * ldOut + n0
            if valid == 8 {
                Hadamard.store8(y, dst)
            } else {
                for l in 0..<valid { dst[l] = y[l] }
            }
        }
        func storeCodes(_ w: SIMD8<UInt32>, word j: Int, n0: Int, t0: Int, rp: Int, valid: Int) {}
        func storeScales(_ s: UnsafePointer<Float>, n0: Int, t0: Int, rp: Int, valid: Int) {}
    }

    /// Packed codes of the operand [cols, rowsPadded], row-major (the packed GEMM's layout),
    /// and one scale per 32-group (`GroupLayout` order: n·rowsPadded/32 + t/32).
    struct ColumnsAsCodes: VerticalOutput {
        let codes: UnsafeMutablePointer<UInt8>, scales: UnsafeMutablePointer<Float>
        static var emitsCodes: Bool { true }
        func storeRow(_ y: SIMD8<Float>, t: Int, n0: Int, valid: Int) {}
        @inline(__always) func storeCodes(_ w: SIMD8<UInt32>, word j: Int, n0: Int, t0: Int, rp: Int, valid: Int) {
            let p = codes + (n0 * rp + t0) / 2 + 4 * j
            for l in 0..<valid { storeWord(w[l], p + l * (rp / 2)) }
        }
        @inline(__always) func storeScales(_ s: UnsafePointer<Float>, n0: Int, t0: Int, rp: Int, valid: Int) {
            let g = rp / QuartetKernels.block, p = scales + n0 * g + t0 / QuartetKernels.block
            for l in 0..<valid { p[l * g] = s[l] }
        }
    }

    /// Q_b(Sᵀ·H_b) for S [rows, cols], stored transposed: out[t, n] = Q_b(Sᵀ·H_b)[n, t], out
    /// [rowsPadded, cols] (the layout of S, rows zero-padded to a multiple of 32); the draw
    /// index is still the flat index n·rowsPadded + t of the operand Q_b(Sᵀ·H_b).
    static func verticalOperand<S: RowTiles>(_ src: S, rows: Int, cols: Int, signs: UnsafePointer<Float>, key: UInt64,
                                             into out: UnsafeMutablePointer<Float>) -> Bool {
        verticalOperand(src, rows: rows, cols: cols, signs: signs, key: key, output: ColumnsAsFloats(out: out, ldOut: cols))
    }

    /// Q_b(Sᵀ·H_b) for S [rows, cols] into any output. False when `src` reported a non-finite
    /// tile or, for a code output, some group held NaN or ±inf (codes cannot carry it; the
    /// float output holds NaN there).
    ///
    /// No transpose: the rotation runs down the columns, 8 columns at a time (SIMD lanes are 8
    /// different groups): the same butterflies as `Hadamard.rotate32` (stage h pairs rows
    /// j, j + h into (a + c, a − c); the in-register form computes c + a and a + (−c), the same
    /// IEEE results), then a per-lane scale and per-lane draws. Chunks are 32-row bands.
    static func verticalOperand<S: RowTiles, O: VerticalOutput>(_ src: S, rows: Int, cols: Int, signs: UnsafePointer<Float>,
                                                                key: UInt64, output: O) -> Bool {
        let b = QuartetKernels.block
        let rp = (rows + b - 1) / b * b, bands = rp / b
        guard bands > 0, cols > 0 else { return true }
        let wide = wideUnits
        return Parallel.allChunks(count: bands, grain: Parallel.grain(count: bands, minItems: 1)) { range in
            let stage = UnsafeMutablePointer<Float>.allocate(capacity: b * b + b * 8 + 3 * 8)
            defer { stage.deallocate() }
            let v = stage + b * b, lane = v + b * 8
            let scratch = WideScratch.allocate()
            defer { scratch.deallocate() }
            var ok = true
            for band in range {
                var c0 = 0
                while c0 < cols {
                    if !src.fill(stage, band: band, c0: c0) { ok = false }
                    let width = Swift.min(b, cols - c0)
                    var u = 0
                    // The stage is 32 columns wide (zeros past `width`), so a 16-column unit
                    // at u = 0 or 16 stays inside it.
                    while wide && u < width {
                        if !verticalWideUnit(stage + u, signs: signs, key: key, rp: rp, n0: c0 + u, t0: band * b,
                                             valid: Swift.min(wideColumns, width - u), scratch: scratch, output: output) {
                            ok = false
                        }
                        u += wideColumns
                    }
                    while u < width {
                        if !verticalUnit(stage + u, signs: signs, key: key, rp: rp, n0: c0 + u, t0: band * b,
                                         valid: Swift.min(8, width - u), v: v, lane: lane, output: output) {
                            ok = false
                        }
                        u += 8
                    }
                    c0 += b
                }
            }
            return ok
        }
    }

    /// One 32-row × 8-column unit of `verticalOperand`: rows of `src` (stride 32), rotated down
    /// the column, quantized per column group, handed to the output. False when a code output
    /// met a non-finite group.
    @inline(__always)
    static func verticalUnit<O: VerticalOutput>(_ src: UnsafePointer<Float>, signs d: UnsafePointer<Float>, key: UInt64,
                                                rp: Int, n0: Int, t0: Int, valid: Int, v: UnsafeMutablePointer<Float>,
                                                lane: UnsafeMutablePointer<Float>, output: O) -> Bool {
        let b = QuartetKernels.block
        @inline(__always) func row(_ i: Int) -> SIMD8<Float> { load8(v + 8 * i) }
        @inline(__always) func set(_ i: Int, _ x: SIMD8<Float>) { Hadamard.store8(x, v + 8 * i) }
        for i in 0..<b { set(i, load8(src + i * b) * SIMD8(repeating: d[i])) }
        var h = 1
        while h < b {
            var j = 0
            while j < b {
                for k in j..<(j + h) {
                    let a = row(k), c = row(k + h)
                    set(k, a + c)
                    set(k + h, a - c)
                }
                j += 2 * h
            }
            h *= 2
        }
        let n = SIMD8<Float>(repeating: norm)
        var m = SIMD8<UInt32>(repeating: 0)
        for i in 0..<b {
            let x = row(i) * n
            set(i, x)
            let a = bits(x) & 0x7FFF_FFFF
            m = m ^ ((m ^ a) & lessMask(m, a))
        }
        // Per-lane scale (ScaleRule.absmaxDiv3) and group kind, in scalar code.
        let scales = lane, zero = lane + 8, nan = lane + 16
        var finite = true
        for l in 0..<8 {
            let amax = m[l]
            let scale = amax == 0 || amax >= 0x7F80_0000 ? 0 : ScaleRule.absmaxDiv3Scale(amax: Float(bitPattern: amax))
            let isNaN = amax >= 0x7F80_0000, isZero = !isNaN && !(scale > 0)
            scales[l] = scale > 0 ? scale : 1
            zero[l] = Float(bitPattern: isZero ? UInt32.max : 0)
            nan[l] = Float(bitPattern: isNaN ? UInt32.max : 0)
            if O.emitsCodes && isNaN && l < valid { finite = false }
        }
        let s = load8(scales), zm = bits(load8(zero)), nm = bits(load8(nan))
        let keep = ~(zm | nm)
        // Counter of lane l, row i: key + ((n0 + l)·rp + t0 + i + 1)·γ.
        let col = SIMD8<UInt64>(repeating: UInt64(n0)) &+ SIMD8<UInt64>(0, 1, 2, 3, 4, 5, 6, 7)
        let base = SIMD8<UInt64>(repeating: key) &+ (col &* UInt64(rp) &+ UInt64(t0 + 1)) &* gamma
        @inline(__always) func uniform(_ i: Int) -> SIMD8<Float> { uniformsFromCounters(base &+ UInt64(i) &* gamma) }
        if O.emitsCodes {
            // Zero groups: the sign codes of x (x̂ = x·0); NaN groups were reported.
            for j in 0..<(b / 8) {
                var w = SIMD8<UInt32>(repeating: 0)
                for k in 0..<8 {
                    let i = 8 * j + k, x = row(i)
                    let c = stochasticEncode(x, s, uniform(i)).code
                    w |= ((c & keep) | (signCodes(x) & zm)) &<< UInt32(4 * k)
                }
                output.storeCodes(w, word: j, n0: n0, t0: t0, rp: rp, valid: valid)
            }
            output.storeScales(scales, n0: n0, t0: t0, rp: rp, valid: valid)
        } else {
            let nanBits = SIMD8<UInt32>(repeating: Float.nan.bitPattern) & nm
            for i in 0..<b {
                let x = row(i)
                let q = stochasticLanes(x, s, uniform(i))
                let y = float((bits(q) & keep) | (bits(x * 0) & zm) | nanBits)
                output.storeRow(y, t: t0 + i, n0: n0, valid: valid)
            }
        }
        return finite
    }

    /// CounterRNG.uniform for 8 given counters (key + (index + 1)·γ). The last xor-shift of
    /// `mix` (z ^ z >> 31) leaves the top 24 bits, the only ones used, alone.
    @inline(__always)
    static func uniformsFromCounters(_ c: SIMD8<UInt64>) -> SIMD8<Float> {
        var z = c
        z = (z ^ (z &>> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z &>> 27)) &* 0x94D0_49BB_1331_11EB
        return toFloat(low32(z &>> 40)) * SIMD8<Float>(repeating: 0x1p-24)
    }

    /// g = (g ⊙ m)·Hᵀ in place (m packed bits, H symmetric so Hᵀ = H); cols a multiple of 32.
    static func maskAndUnrotate(_ g: UnsafeMutablePointer<Float>, rows: Int, cols: Int, mask: UnsafePointer<UInt8>) {
        let blocks = rows * cols / QuartetKernels.block
        guard blocks > 0 else { return }
        /// v where bit i of m is set, +0 where it is clear.
        @inline(__always) func keep(_ v: SIMD8<Float>, _ m: UInt32) -> SIMD8<Float> {
            let bit = (SIMD8<UInt32>(repeating: m) &>> SIMD8<UInt32>(0, 1, 2, 3, 4, 5, 6, 7)) & 1
            return float(bits(v) & (SIMD8<UInt32>(repeating: 0) &- bit))
        }
        Parallel.forChunks(count: blocks, grain: Parallel.grain(count: blocks, minItems: 512)) { range in
            for j in range {
                let i = j * QuartetKernels.block
                let m = loadWord(mask + i / 8)
                let x = Block32(g + i)
                let y = Block32(keep(x.v0, m), keep(x.v1, m >> 8), keep(x.v2, m >> 16), keep(x.v3, m >> 24))
                Hadamard.rotate32(y, signs: nil, norm: norm).store(g + i)
            }
        }
    }
}
