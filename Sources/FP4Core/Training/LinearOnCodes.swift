/// The linear layer's GEMMs on packed codes (numerics.md §11), used when the recipe's
/// `gemm` is `.packed` and both operands of a GEMM are FP4 codes whose scales are constant
/// along its reduction dimension. Every quantized value is the one the simulated path
/// multiplies; only the float32 rounding of the products differs (the §11 bound).
extension LinearLayer {
    /// Whether a quantizer's codes can feed a packed GEMM that reduces along their rows.
    static func feedsPackedGEMM(_ q: Quantizer?) -> Bool {
        guard let q, q.format.isFP4 else { return false }
        if case .column = q.granularity { return false }
        return true
    }

    /// Whether two quantizers' groups along the reduction dimension nest (one divides the other).
    static func groupsNest(_ a: Quantizer, _ b: Quantizer, reduction K: Int) -> Bool {
        func length(_ q: Quantizer) -> Int {
            switch q.granularity {
            case .block(let n), .block2d(let n): return n
            default: return K
            }
        }
        let la = length(a), lb = length(b)
        return la > 0 && lb > 0 && (la % lb == 0 || lb % la == 0)
    }

    /// Whether the forward GEMM Y = X_q·W_qᵀ runs on codes: the recipe asks for packed GEMMs,
    /// X and W are FP4 with groups along K, and the saved X codes are the forward's (so the
    /// GEMM reads them from the saved state; recipes with their own backward X stay simulated).
    public static func forwardRunsOnCodes(recipe: LinearRecipe, inFeatures K: Int) -> Bool {
        guard recipe.gemm == .packed, recipe.savesForwardInput, let qx = recipe.input, let qw = recipe.weight,
              feedsPackedGEMM(qx), feedsPackedGEMM(qw) else { return false }
        return groupsNest(qx, qw, reduction: K)
    }

    /// Whether the forward GEMM runs on codes that the X operand buffer holds: for recipes whose
    /// saved X is their own quantization (`zhou2025` saves FP8 X for its FP8 backward), X_q's
    /// codes are not in the saved state, so `prepareInput` writes them, with their scales, into
    /// the [T, K] float32 operand buffer it would otherwise fill with X̂ (`OperandCodes`), and
    /// `forwardPrepared` multiplies them on codes. The saved state is the same either way.
    public static func forwardCodesInOperand(recipe: LinearRecipe, tokens T: Int, inFeatures K: Int) -> Bool {
        guard recipe.gemm == .packed, !recipe.savesForwardInput, let qx = recipe.input, let qw = recipe.weight,
              feedsPackedGEMM(qx), feedsPackedGEMM(qw), groupsNest(qx, qw, reduction: K) else { return false }
        return OperandCodes(qx, tokens: T, inFeatures: K) != nil
    }

    /// Where X_q's codes, scales and tensor scale sit in a [T, K] float32 operand buffer: packed
    /// codes from byte 0, then one float32 scale per group from the next whole float, then the
    /// GEMM's tensor scale. Nil when that does not fit in T·K floats (e.g. K = 1 with row scales)
    /// or the shape does not divide into the quantizer's groups: the forward then stays simulated.
    struct OperandCodes {
        let codeBytes: Int, scalesOffset: Int, groups: Int
        var tensorScaleOffset: Int { scalesOffset + groups }
        /// Floats of the buffer the layout uses.
        var floats: Int { tensorScaleOffset + 1 }

        init?(_ q: Quantizer, tokens T: Int, inFeatures K: Int) {
            guard let layout = try? q.granularity.layout(rows: T, cols: K) else { return nil }
            codeBytes = q.codeBytes(count: T * K)
            scalesOffset = (codeBytes + 3) / 4
            groups = layout.groupCount
            guard scalesOffset + groups + 1 <= T * K else { return nil }
        }

        /// Quantizes x into the buffer (non-finite x throws, as the simulated path's quantizer does).
        func write(_ q: Quantizer, _ x: UnsafePointer<Float>, tokens T: Int, inFeatures K: Int,
                   into buffer: UnsafeMutablePointer<Float>) throws {
            // The codes are bytes of the caller's float buffer (packed GEMM panels use raw scratch the same way).
            let codes = UnsafeMutableRawPointer(buffer).assumingMemoryBound(to: UInt8.self)
            let ts = try q.quantize(x, rows: T, cols: K, codes: codes)
            for g in 0..<groups { buffer[scalesOffset + g] = ts.groups[g].scale }
            buffer[tensorScaleOffset] = q.scaleRule.gemmTensorScale(ts.tensorScale)
        }

        func operand(_ q: Quantizer, _ buffer: UnsafePointer<Float>, tokens T: Int, inFeatures K: Int) -> GEMMOperand {
            GEMMOperand(codes: UnsafeRawPointer(buffer).assumingMemoryBound(to: UInt8.self), rows: T, cols: K,
                        format: q.format, granularity: q.granularity, scales: buffer + scalesOffset,
                        tensorScale: buffer[tensorScaleOffset])
        }
    }

    /// Y = X_q·W_qᵀ + b with X_q's codes read from the operand buffer (`OperandCodes`).
    static func forwardOnOperandCodes(_ buffer: UnsafePointer<Float>, tokens T: Int, inFeatures K: Int,
                                      w: UnsafePointer<Float>, outFeatures N: Int, bias: UnsafePointer<Float>?,
                                      recipe: LinearRecipe, y: UnsafeMutablePointer<Float>) throws {
        guard let qx = recipe.input, let qw = recipe.weight, let layout = OperandCodes(qx, tokens: T, inFeatures: K) else {
            throw FP4Error(.invalidState, "the X operand buffer holds no activation codes for the packed forward")
        }
        let wc = try CodedOperand(w, rows: N, cols: K, qw)
        try wc.withOperand { try PackedGEMM.multiply(layout.operand(qx, buffer, tokens: T, inFeatures: K), $0, into: y) }
        if let bias { addBias(bias, rows: T, cols: N, into: y) }
    }

    /// Whether the input-gradient GEMM dX = Q_g(dY)·W_b runs on codes (it reduces along N, so
    /// W_b's groups must run along N: grouping along the reduction, or block2d tiles and tensor
    /// scales, which are the same groups for W and Wᵀ).
    static func inputGradientRunsOnCodes(recipe: LinearRecipe) -> Bool {
        guard recipe.gemm == .packed, let qg = recipe.gradient, let qw = recipe.inputGradientWeight,
              feedsPackedGEMM(qg), feedsPackedGEMM(qw) else { return false }
        if recipe.backwardGrouping == .reduction { return true }
        switch qw.granularity {
        case .block2d, .tensor: return true
        default: return false
        }
    }

    /// Codes and float scales of one quantized GEMM operand, in scratch memory.
    final class CodedOperand {
        let codes: UnsafeMutablePointer<UInt8>
        let rows: Int, cols: Int
        let quantizer: Quantizer
        let scales: [Float]
        let tensorScale: Float

        /// Quantizes src [rows, cols]; `dequantized` (optional) receives x̂ in the same pass.
        init(_ src: UnsafePointer<Float>, rows: Int, cols: Int, _ q: Quantizer,
             dequantized: UnsafeMutablePointer<Float>? = nil) throws {
            codes = .allocate(capacity: Swift.max(q.codeBytes(count: rows * cols), 1))
            do {
                let ts = try q.quantize(src, rows: rows, cols: cols, codes: codes, dequantized: dequantized)
                scales = ts.groups.map(\.scale)
                tensorScale = q.scaleRule.gemmTensorScale(ts.tensorScale)
            } catch {
                codes.deallocate()
                throw error
            }
            self.rows = rows
            self.cols = cols
            quantizer = q
        }

        deinit { codes.deallocate() }

        func withOperand<R>(_ body: (GEMMOperand) throws -> R) rethrows -> R {
            try scales.withUnsafeBufferPointer { s in
                try body(GEMMOperand(codes: UnsafePointer(codes), rows: rows, cols: cols, format: quantizer.format,
                                     granularity: quantizer.granularity, scales: s.baseAddress ?? UnsafePointer(bitPattern: 4)!,
                                     tensorScale: tensorScale))
            }
        }
    }

    /// Y = X_q·W_qᵀ (+ ΔX·W_qᵀ) + b with X_q read from the saved codes and W quantized to codes.
    static func forwardOnCodes(saved: LinearSaved, tokens T: Int, inFeatures K: Int, w: UnsafePointer<Float>,
                               outFeatures N: Int, bias: UnsafePointer<Float>?, recipe: LinearRecipe,
                               y: UnsafeMutablePointer<Float>) throws {
        guard let qx = recipe.input, let qw = recipe.weight, let codes = saved.xCodes else {
            throw FP4Error(.invalidState, "the saved state holds no activation codes for the packed forward")
        }
        let residual = residualAdded(saved)
        // The compensation ΔX·W_qᵀ multiplies the dequantized W_q in float32 (a sparse product).
        let wq = residual != nil ? Scratch(N * K) : nil
        let wc = try CodedOperand(w, rows: N, cols: K, qw, dequantized: wq?.pointer)
        let groups = try qx.granularity.layout(rows: T, cols: K).groupCount
        try saved.withFloatScales(qx, count: groups) { xs in
            let xOperand = GEMMOperand(codes: UnsafePointer(codes), rows: T, cols: K, format: qx.format,
                                       granularity: qx.granularity, scales: xs,
                                       tensorScale: qx.scaleRule.gemmTensorScale(saved.xTensorScale))
            try wc.withOperand { try PackedGEMM.multiply(xOperand, $0, into: y) }
        }
        if let r = residual, let wq {
            OCC.csrMatmulTransposed(indptr: r.indptr, indices: r.indices, values: r.values, rows: T, cols: K,
                                    w: UnsafePointer(wq.pointer), n: N, into: y)
        }
        if let bias { addBias(bias, rows: T, cols: N, into: y) }
        withExtendedLifetime(wq) {}
    }

    /// y[t, :] += bias for every row.
    static func addBias(_ bias: UnsafePointer<Float>, rows: Int, cols: Int, into y: UnsafeMutablePointer<Float>) {
        Parallel.forChunks(count: rows, grain: Parallel.grain(count: rows, minItems: Swift.max(1, 16384 / Swift.max(cols, 1)))) { r in
            for t in r {
                let row = y + t * cols
                for j in 0..<cols { row[j] += bias[j] }
            }
        }
    }

    /// dX = Q_g(dY)·W_b on codes: W_bᵀ [K, N] is quantized directly (block2d tiles and tensor
    /// scales are the same groups for W and Wᵀ, so its values are W_b's, transposed).
    /// Returns false (nothing written) when dY holds NaN/inf, which codes cannot carry: the
    /// caller then takes the simulated path, which propagates them.
    static func inputGradientOnCodes(dy: UnsafePointer<Float>, tokens T: Int, outFeatures N: Int,
                                     w: UnsafePointer<Float>, inFeatures K: Int, recipe: LinearRecipe,
                                     dx: UnsafeMutablePointer<Float>) throws -> Bool {
        guard let qg = recipe.gradient, let qw = recipe.inputGradientWeight,
              let g = try codesIfFinite(dy, rows: T, cols: N, qg) else { return false }
        let wt = Scratch(K * N)
        transpose(w, rows: N, cols: K, into: wt.pointer)
        let wc = try CodedOperand(UnsafePointer(wt.pointer), rows: K, cols: N, qw)
        try g.withOperand { a in try wc.withOperand { b in try PackedGEMM.multiply(a, b, into: dx) } }
        withExtendedLifetime(wt) {}
        return true
    }

    /// The codes of src, or nil when it holds NaN/inf (found by the quantizer's own scale pass).
    static func codesIfFinite(_ src: UnsafePointer<Float>, rows: Int, cols: Int, _ q: Quantizer) throws -> CodedOperand? {
        do {
            return try CodedOperand(src, rows: rows, cols: cols, q)
        } catch let e as FP4Error where e.kind == .nonFinite {
            return nil
        }
    }

    /// b[c, r] = a[r, c] for a [rows, cols]; b's rows are `ldb` apart (default rows; larger
    /// leaves padding columns untouched). `TransposeKernel` picks the fastest kernel.
    static func transpose(_ a: UnsafePointer<Float>, rows: Int, cols: Int, into b: UnsafeMutablePointer<Float>,
                          ldb: Int? = nil) {
        TransposeKernel.run(a, rows: rows, cols: cols, into: b, ldb: ldb)
    }
}
