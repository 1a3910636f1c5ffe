/// The backward kernels of `QuartetLinear`: Q_b (e2m1, absmax_div3 scales, stochastic
/// rounding) of operands rotated by diag(d)·H, built in one pass each, and the clip-mask +
/// un-rotation of the GEMM results. Same bits as the general path (see QuestKernels.swift).
extension QuartetKernels {

    @inline(__always) static var gamma: UInt64 { CounterRNG.gamma }

    /// CounterRNG.uniform for the 8 counters base + (k + l)·γ, l = 0..<8.
    @inline(__always)
    static func uniforms(_ base: UInt64, _ k: UInt64) -> SIMD8<Float> {
        uniformsFromCounters(SIMD8<UInt64>(repeating: base) &+ (SIMD8<UInt64>(0, 1, 2, 3, 4, 5, 6, 7) &+ k) &* gamma)
    }

    /// e2m1 stochastic rounding of v = x / s (`roundStochastic`), back to x̂ = q·s.
    @inline(__always)
    static func stochasticLanes(_ x: SIMD8<Float>, _ s: SIMD8<Float>, _ u: SIMD8<Float>) -> SIMD8<Float> {
        let v = x / s
        let a = minNonNegative(magnitude(v), fmax)
        let e = binade(a)
        let q = a * toUnits(e)  // < 4
        let fl = floorNonNegative(q)
        // fl + (q − fl > u ? 1 : 0); q − fl and u lie in [0, 1).
        let up = float(lessMask(bits(u), bits(q - fl)) & Float(1).bitPattern)
        return withSign(v, (fl + up) * toValue(e)) * s
    }

    /// Q_b (e2m1, absmax_div3, stochastic with the draws of flat indices index ..< index + 32
    /// under `key`, NaN for a non-finite group) of one rotated block.
    @inline(__always)
    static func quantizeGradient(_ x: Block32, key: UInt64, index: Int) -> Block32 {
        let amax = amaxBits(x)
        if amax >= 0x7F80_0000 {
            let nan = SIMD8<Float>(repeating: .nan)
            return Block32(nan, nan, nan, nan)
        }
        // ScaleRule.absmaxDiv3: s = 2^floor(log2 amax) / 3; amax 0 or s 0: a zero group.
        let scale = amax == 0 ? 0 : ScaleRule.absmaxDiv3Scale(amax: Float(bitPattern: amax))
        if !(scale > 0) {
            let z = SIMD8<Float>(repeating: 0)
            return Block32(x.v0 * z, x.v1 * z, x.v2 * z, x.v3 * z)
        }
        let s = SIMD8<Float>(repeating: scale)
        let base = key &+ (UInt64(bitPattern: Int64(index)) &+ 1) &* gamma
        return Block32(stochasticLanes(x.v0, s, uniforms(base, 0)), stochasticLanes(x.v1, s, uniforms(base, 8)),
                       stochasticLanes(x.v2, s, uniforms(base, 16)), stochasticLanes(x.v3, s, uniforms(base, 24)))
    }

    /// Q_b(A·H_b) for A [rows, cols] into out [rows, colsPadded] (zero columns up to a
    /// multiple of 32; draw index = flat index in out).
    static func gradientRows(_ a: UnsafePointer<Float>, rows: Int, cols: Int, signs: Block32, key: UInt64,
                             into out: UnsafeMutablePointer<Float>) {
        let b = QuartetKernels.block
        let cp = (cols + b - 1) / b * b, full = cols / b
        guard rows > 0, cp > 0 else { return }
        let grain = Parallel.grain(count: rows, minItems: Swift.max(1, 16384 / cp))
        Parallel.forChunks(count: rows, grain: grain) { range in
            var tail = Block32(.zero, .zero, .zero, .zero)
            for r in range {
                let src = a + r * cols, dst = out + r * cp
                for j in 0..<full {
                    quantizeGradient(Hadamard.rotate32(Block32(src + j * b), signs: signs, norm: norm),
                                     key: key, index: r * cp + j * b).store(dst + j * b)
                }
                if full * b < cols {
                    withUnsafeMutableBytes(of: &tail) { raw in
                        let t = raw.baseAddress!.assumingMemoryBound(to: Float.self)
                        t.initialize(repeating: 0, count: b)
                        t.update(from: src + full * b, count: cols - full * b)
                    }
                    quantizeGradient(Hadamard.rotate32(tail, signs: signs, norm: norm),
                                     key: key, index: r * cp + full * b).store(dst + full * b)
                }
            }
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
    /// mask m_w on the way.
    struct WeightRows: RowTiles {
        let w: UnsafePointer<Float>, rows: Int, cols: Int, mask: UnsafeMutablePointer<UInt8>
        @inline(__always)
        func fill(_ stage: UnsafeMutablePointer<Float>, band: Int, c0: Int) -> Bool {
            let b = QuartetKernels.block
            var ok = true
            let r0 = band * b, valid = Swift.max(0, Swift.min(b, rows - r0))
            var i = 0
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

    /// Q_b(Sᵀ·H_b) for S [rows, cols], stored transposed: out[t, n] = Q_b(Sᵀ·H_b)[n, t], out
    /// [rowsPadded, cols] (the layout of S, rows zero-padded to a multiple of 32); the draw
    /// index is still the flat index n·rowsPadded + t of the operand Q_b(Sᵀ·H_b).
    ///
    /// No transpose: the rotation runs down the columns, 8 columns at a time (SIMD lanes are 8
    /// different groups): the same butterflies as `Hadamard.rotate32` (stage h pairs rows
    /// j, j + h into (a + c, a − c); the in-register form computes c + a and a + (−c), the same
    /// IEEE results), then a per-lane scale and per-lane draws. Chunks are 32-row bands.
    static func verticalOperand<S: RowTiles>(_ src: S, rows: Int, cols: Int, signs: UnsafePointer<Float>, key: UInt64,
                                             into out: UnsafeMutablePointer<Float>) -> Bool {
        let b = QuartetKernels.block
        let rp = (rows + b - 1) / b * b, bands = rp / b
        guard bands > 0, cols > 0 else { return true }
        let grain = Parallel.grain(count: bands, minItems: 1)
        let chunks = (bands + grain - 1) / grain
        let bad = UnsafeMutablePointer<Bool>.allocate(capacity: chunks)
        bad.initialize(repeating: false, count: chunks)
        defer { bad.deallocate() }
        Parallel.forChunks(count: bands, grain: grain) { range in
            let stage = UnsafeMutablePointer<Float>.allocate(capacity: b * b + b * 8 + 3 * 8)
            defer { stage.deallocate() }
            let v = stage + b * b, lane = v + b * 8
            var ok = true
            for band in range {
                var c0 = 0
                while c0 < cols {
                    if !src.fill(stage, band: band, c0: c0) { ok = false }
                    let width = Swift.min(b, cols - c0)
                    var u = 0
                    while u < width {
                        verticalUnit(stage + u, signs: signs, key: key, rp: rp, n0: c0 + u, t0: band * b,
                                     valid: Swift.min(8, width - u), v: v, lane: lane, out: out, ldOut: cols)
                        u += 8
                    }
                    c0 += b
                }
            }
            bad[range.lowerBound / grain] = !ok
        }
        for c in 0..<chunks where bad[c] { return false }
        return true
    }

    /// One 32-row × 8-column unit of `verticalOperand`: rows of `src` (stride 32), rotated down
    /// the column, quantized per column group, stored to out[(t0 + i)·ldOut + n0 + l].
    @inline(__always)
    static func verticalUnit(_ src: UnsafePointer<Float>, signs d: UnsafePointer<Float>, key: UInt64, rp: Int,
                             n0: Int, t0: Int, valid: Int, v: UnsafeMutablePointer<Float>,
                             lane: UnsafeMutablePointer<Float>, out: UnsafeMutablePointer<Float>, ldOut: Int) {
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
        for l in 0..<8 {
            let amax = m[l]
            let scale = amax == 0 || amax >= 0x7F80_0000 ? 0 : ScaleRule.absmaxDiv3Scale(amax: Float(bitPattern: amax))
            let isNaN = amax >= 0x7F80_0000, isZero = !isNaN && !(scale > 0)
            scales[l] = scale > 0 ? scale : 1
            zero[l] = Float(bitPattern: isZero ? UInt32.max : 0)
            nan[l] = Float(bitPattern: isNaN ? UInt32.max : 0)
        }
        let s = load8(scales), zm = bits(load8(zero)), nm = bits(load8(nan))
        let keep = ~(zm | nm), nanBits = SIMD8<UInt32>(repeating: Float.nan.bitPattern) & nm
        // Counter of lane l, row i: key + ((n0 + l)·rp + t0 + i + 1)·γ.
        let col = SIMD8<UInt64>(repeating: UInt64(n0)) &+ SIMD8<UInt64>(0, 1, 2, 3, 4, 5, 6, 7)
        let base = SIMD8<UInt64>(repeating: key) &+ (col &* UInt64(rp) &+ UInt64(t0 + 1)) &* gamma
        for i in 0..<b {
            let x = row(i)
            let q = stochasticLanes(x, s, uniformsFromCounters(base &+ UInt64(i) &* gamma))
            let y = float((bits(q) & keep) | (bits(x * 0) & zm) | nanBits)
            let dst = out + (t0 + i) * ldOut + n0
            if valid == 8 {
                Hadamard.store8(y, dst)
            } else {
                for l in 0..<valid { dst[l] = y[l] }
            }
        }
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
