/// Caller-owned buffers of what the forward saves for the backward (numerics.md §6): X_q as
/// codes + scales and the sparse OCC residual, never a float32 copy of X. W is not
/// saved: the backward recomputes W_q from W. Scales are kept in their stored form: the
/// exponent bytes of `e8m0` and the e4m3 bytes of `nvfp4` (`xScaleBytes`), float32 otherwise
/// (`xScales`), so MXFP4 saves 4.25 and NVFP4 4.5 bits per element.
public struct LinearSaved {
    public var xCodes: UnsafeMutablePointer<UInt8>?
    public var xCodesCount: Int
    public var xScales: UnsafeMutablePointer<Float>?
    public var xScalesCount: Int
    public var xScaleBytes: UnsafeMutablePointer<UInt8>?
    public var xScaleBytesCount: Int
    public var xTensorScale: Float
    public var residualIndptr: UnsafeMutablePointer<Int64>?
    public var residualIndices: UnsafeMutablePointer<Int32>?
    public var residualValues: UnsafeMutablePointer<Float>?
    public var residualCapacity: Int
    public var residualNNZ: Int

    public init(xCodes: UnsafeMutablePointer<UInt8>?, xCodesCount: Int, xScales: UnsafeMutablePointer<Float>?,
                xScalesCount: Int, xTensorScale: Float = 1,
                residualIndptr: UnsafeMutablePointer<Int64>?, residualIndices: UnsafeMutablePointer<Int32>?,
                residualValues: UnsafeMutablePointer<Float>?, residualCapacity: Int, residualNNZ: Int = 0,
                xScaleBytes: UnsafeMutablePointer<UInt8>? = nil, xScaleBytesCount: Int = 0) {
        self.xCodes = xCodes
        self.xScaleBytes = xScaleBytes
        self.xScaleBytesCount = xScaleBytesCount
        self.xCodesCount = xCodesCount
        self.xScales = xScales
        self.xScalesCount = xScalesCount
        self.xTensorScale = xTensorScale
        self.residualIndptr = residualIndptr
        self.residualIndices = residualIndices
        self.residualValues = residualValues
        self.residualCapacity = residualCapacity
        self.residualNNZ = residualNNZ
    }

    /// Writes a quantization's scales in the stored form of its rule.
    mutating func storeScales(_ ts: TensorScales, rule: ScaleRule) throws {
        if rule.storesScaleByte {
            guard let out = xScaleBytes else { throw FP4Error.invalid("the saved state has no scale-byte buffer") }
            for g in 0..<ts.groups.count { out[g] = ts.groups[g].byte }
        } else {
            guard let out = xScales else { throw FP4Error.invalid("the saved state has no scale buffer") }
            for g in 0..<ts.groups.count { out[g] = ts.groups[g].scale }
        }
        xTensorScale = ts.tensorScale
    }

    /// Calls `body` with the saved X's float scales (decoded from the stored bytes for rules
    /// that store them: the same floats the quantizer used).
    func withFloatScales<R>(_ q: Quantizer, count: Int, _ body: (UnsafePointer<Float>) throws -> R) throws -> R {
        if q.scaleRule.storesScaleByte {
            guard let bytes = xScaleBytes else { throw FP4Error(.invalidState, "the saved state holds no scale bytes") }
            var floats = [Float](repeating: 0, count: Swift.max(count, 1))
            for g in 0..<count {
                guard let v = q.scaleRule.floatScale(ofStoredByte: bytes[g], tensorScale: xTensorScale) else {
                    throw FP4Error(.invalidState, "saved scale byte \(g) (\(bytes[g])) is NaN in the \(q.scaleRule.name) encoding")
                }
                floats[g] = v
            }
            return try floats.withUnsafeBufferPointer { try body($0.baseAddress!) }
        }
        guard let scales = xScales else { throw FP4Error(.invalidState, "the saved state holds no scales") }
        return try body(UnsafePointer(scales))
    }
}

/// Sizes of the saved-state buffers for a [tokens, inFeatures] input.
public struct LinearSavedSizes: Sendable, Equatable {
    public var xCodes: Int
    /// Float32 scales (rules without a stored byte).
    public var xScales: Int
    /// Scale bytes (`e8m0`, `nvfp4`).
    public var xScaleBytes: Int = 0
    /// Upper bound on the residual's non-zeros (0 without OCC compensation).
    public var residualCapacity: Int
    /// Rows of the residual's CSR (indptr holds residualRows + 1 entries).
    public var residualRows: Int
}

/// A GEMM operand: the input itself when its quantizer is nil (float32), otherwise its
/// fake-quantized copy in scratch memory, with the scales used.
struct Operand {
    let pointer: UnsafePointer<Float>
    let scales: TensorScales?
    private let storage: Scratch?

    init(_ source: UnsafePointer<Float>, rows: Int, cols: Int, quantizer: Quantizer?, nonFinite: NonFinitePolicy) throws {
        guard let q = quantizer else {
            (pointer, scales, storage) = (source, nil, nil)
            return
        }
        let buffer = Scratch(rows * cols)
        scales = try q.fakeQuantizeReturningScales(source, rows: rows, cols: cols, into: buffer.pointer, nonFinite: nonFinite)
        pointer = UnsafePointer(buffer.pointer)
        storage = buffer
    }
}

/// The FP4 linear layer Y = X·Wᵀ + b under a `LinearRecipe` (numerics.md §6).
/// Shapes: X [T, K], W [N, K], b [N], Y and dY [T, N].
/// Every entry point takes a recipe that passed `LinearRecipe.validate()`: the C exports check
/// a descriptor once, when they read it (`linearRecipe`), and callers in Swift do the same.
public enum LinearLayer {
    public static func savedSizes(tokens T: Int, inFeatures K: Int, recipe: LinearRecipe) throws -> LinearSavedSizes {
        guard let q = recipe.savedInput else { return LinearSavedSizes(xCodes: 0, xScales: 0, residualCapacity: 0, residualRows: 0) }
        let L = try q.granularity.layout(rows: T, cols: K)
        var cap = 0
        if let occ = recipe.occ, occ.compensate, recipe.savesForwardInput {
            cap = OCC.residualCapacity(rows: T, cols: K, alpha: occ.alpha, perRow: occ.perRow)
        }
        let bytes = q.scaleRule.storesScaleByte
        return LinearSavedSizes(xCodes: q.codeBytes(count: T * K), xScales: bytes ? 0 : L.groupCount,
                                xScaleBytes: bytes ? L.groupCount : 0, residualCapacity: cap, residualRows: T)
    }

    static func checkShapes(_ T: Int, _ K: Int, _ N: Int) throws {
        guard T >= 0, K >= 0, N >= 0 else { throw FP4Error.invalid("shapes must be non-negative, got T=\(T) K=\(K) N=\(N)") }
        let limit = Int(Int32.max)
        guard T <= limit, K <= limit, N <= limit else { throw FP4Error.invalid("dimensions above 2^31 − 1 are not supported by the BLAS interface") }
    }

    /// Forward. Non-finite X or W under a quantized recipe throws (codes cannot hold them);
    /// the float32 recipe lets them propagate like any GEMM.
    public static func forward(x: UnsafePointer<Float>, tokens T: Int, inFeatures K: Int,
                               w: UnsafePointer<Float>, outFeatures N: Int, bias: UnsafePointer<Float>?,
                               recipe: LinearRecipe, y: UnsafeMutablePointer<Float>,
                               saved: inout LinearSaved) throws {
        try checkShapes(T, K, N)
        // On codes, the GEMM reads X_q from the saved state: no float32 operand.
        let onCodes = forwardRunsOnCodes(recipe: recipe, inFeatures: K)
        // Codes in the operand buffer take a fraction of it (OperandCodes.floats).
        let operandFloats = recipe.input.flatMap { q in
            forwardCodesInOperand(recipe: recipe, tokens: T, inFeatures: K) ? OperandCodes(q, tokens: T, inFeatures: K)?.floats : nil
        } ?? T * K
        let xq = recipe.input == nil || onCodes ? nil : Scratch(operandFloats)
        try prepareInput(x: x, tokens: T, inFeatures: K, recipe: recipe, operand: xq?.pointer, saved: &saved)
        try forwardPrepared(operand: recipe.input == nil ? x : xq.map { UnsafePointer($0.pointer) }, tokens: T, inFeatures: K,
                            w: w, outFeatures: N, bias: bias, recipe: recipe, y: y, saved: saved)
        withExtendedLifetime(xq) {}
    }

    /// The forward's work on X alone: OCC, the saved codes, scales and residual, and the
    /// forward GEMM's X operand (Q(X_c) + ΔX) written to `operand` ([T, K]; needed, and
    /// written, only when the recipe quantizes X and the forward GEMM does not run on codes,
    /// `forwardRunsOnCodes`). When the forward runs on codes but the saved X is the recipe's own
    /// (`forwardCodesInOperand`), `operand` receives X_q's packed codes and scales instead of
    /// floats. Layers that read the same X under the same recipe (q/k/v projections) can share
    /// one result: it does not depend on W.
    public static func prepareInput(x: UnsafePointer<Float>, tokens T: Int, inFeatures K: Int, recipe: LinearRecipe,
                                    operand: UnsafeMutablePointer<Float>?, saved: inout LinearSaved) throws {
        try checkShapes(T, K, 0)
        let sizes = try savedSizes(tokens: T, inFeatures: K, recipe: recipe)
        guard saved.xCodesCount >= sizes.xCodes, saved.xScalesCount >= sizes.xScales,
              saved.xScaleBytesCount >= sizes.xScaleBytes, saved.residualCapacity >= sizes.residualCapacity else {
            throw FP4Error.invalid("saved-state buffers are smaller than fp4swift_linear_saved_sizes reports")
        }
        saved.residualNNZ = 0
        saved.xTensorScale = 1

        // Activations: OCC clamp (+ sparse residual), then quantize to saved codes; the GEMM
        // reads the dequantized values.
        if let q = recipe.input {
            let buffer = operand
            guard buffer != nil || forwardRunsOnCodes(recipe: recipe, inFeatures: K) else {
                throw FP4Error.invalid("a quantized input needs the X operand buffer")
            }
            var source = x
            var clamped: Scratch?
            // The OCC clamp applied inside the quantizer, row by row (no float32 X_c buffer).
            var clampInQuantizer: (thresholds: [OCCThresholds], perRow: Bool, minMax: Bool)?
            if let occ = recipe.occ {
                let thresholds = try OCC.thresholds(x, rows: T, cols: K, alpha: occ.alpha, perRow: occ.perRow)
                let compensated = occ.compensate && sizes.residualCapacity > 0
                let xc: Scratch? = recipe.savesForwardInput && q.clampsWhileQuantizing(rows: T, cols: K) ? nil : Scratch(T * K)
                clamped = xc
                if compensated {
                    guard let ip = saved.residualIndptr, let ix = saved.residualIndices, let vs = saved.residualValues else {
                        throw FP4Error.invalid("OCC compensation needs the residual buffers of the saved state")
                    }
                    saved.residualNNZ = try OCC.clampAndResidual(x, rows: T, cols: K, thresholds: thresholds, clamped: xc?.pointer,
                                                                 indptr: ip, indices: ix, values: vs, capacity: saved.residualCapacity)
                } else if let xc {
                    // No compensation, or a group too small for any value to lie outside its thresholds.
                    clampOnly(x, T, K, thresholds, occ.perRow, into: xc.pointer)
                }
                if let xc {
                    source = UnsafePointer(xc.pointer)
                } else {
                    // The clamp expression of the path it replaces (they differ only in signed zeros).
                    clampInQuantizer = (thresholds, occ.perRow, !compensated)
                }
            }
            if let c = clampInQuantizer {
                guard let codes = saved.xCodes else {
                    throw FP4Error.invalid("a quantized input needs the code buffer of the saved state")
                }
                // Compensation: ΔX is added to each row of the operand right after it is written.
                guard let ts = try q.quantizeClamped(x, rows: T, cols: K, thresholds: c.thresholds, perRow: c.perRow, minMax: c.minMax,
                                                     codes: codes, dequantized: buffer, residual: residualAdded(saved)) else {
                    throw FP4Error.invalid("internal: the input quantizer cannot clamp while quantizing")
                }
                try saved.storeScales(ts, rule: q.scaleRule)
            } else if recipe.savesForwardInput {
                try saveInput(q, source, rows: T, cols: K, saved: &saved, dequantized: buffer)
            } else if let buffer {
                if forwardCodesInOperand(recipe: recipe, tokens: T, inFeatures: K),
                   let layout = OperandCodes(q, tokens: T, inFeatures: K) {
                    try layout.write(q, source, tokens: T, inFeatures: K, into: buffer)
                } else {
                    try q.fakeQuantize(source, rows: T, cols: K, into: buffer, nonFinite: .raise)
                }
            }
            withExtendedLifetime(clamped) {}
            if clampInQuantizer == nil, let buffer, let occ = recipe.occ, occ.compensate, saved.residualNNZ > 0 {
                // Q(X_c)·W_qᵀ + ΔX·W_qᵀ = (Q(X_c) + ΔX)·W_qᵀ: one GEMM on the sum.
                scatterResidual(saved, rows: T, cols: K, into: buffer)
            }
        }

        if !recipe.savesForwardInput, let q = recipe.savedInput {
            // The weight-gradient GEMM's own X quantization (e.g. FP8 under an FP4 forward).
            try saveInput(q, x, rows: T, cols: K, saved: &saved, dequantized: nil)
        }
    }

    /// The forward GEMM on a prepared X operand (`prepareInput`; X itself when the recipe
    /// keeps X in float32): Y = X_op·W_qᵀ + b. When the forward runs on codes
    /// (`forwardRunsOnCodes`), X_q comes from `saved` (the state `prepareInput` filled) and
    /// `operand` is not read; under `forwardCodesInOperand` it holds X_q's codes (`OperandCodes`).
    public static func forwardPrepared(operand: UnsafePointer<Float>?, tokens T: Int, inFeatures K: Int,
                                       w: UnsafePointer<Float>, outFeatures N: Int, bias: UnsafePointer<Float>?,
                                       recipe: LinearRecipe, y: UnsafeMutablePointer<Float>, saved: LinearSaved?) throws {
        try checkShapes(T, K, N)
        try checkBackwardShapes(recipe, tokens: T, inFeatures: K, outFeatures: N)
        if forwardRunsOnCodes(recipe: recipe, inFeatures: K) {
            guard let saved else { throw FP4Error.invalid("the packed forward needs the prepared (saved) state") }
            try forwardOnCodes(saved: saved, tokens: T, inFeatures: K, w: w, outFeatures: N, bias: bias, recipe: recipe, y: y)
            return
        }
        guard let xOperand = operand else { throw FP4Error.invalid("the forward needs the prepared X operand") }
        if forwardCodesInOperand(recipe: recipe, tokens: T, inFeatures: K) {
            try forwardOnOperandCodes(xOperand, tokens: T, inFeatures: K, w: w, outFeatures: N, bias: bias, recipe: recipe, y: y)
            return
        }
        let wq = try Operand(w, rows: N, cols: K, quantizer: recipe.weight, nonFinite: .raise)
        let wOperand = wq.pointer

        if let bias {
            for t in 0..<T { (y + t * N).update(from: bias, count: N) }
        }
        BLAS.gemm(transA: false, transB: true, m: T, n: N, k: K, a: xOperand, b: wOperand,
                  beta: bias == nil ? 0 : 1, c: y)
        withExtendedLifetime(wq) {}
    }

    /// Refuses, at the forward, shapes the backward's quantizers cannot group (rather than
    /// failing after the forward has run): dY [T, N] under the gradient quantizer, and with
    /// grouping along the reduction, Wᵀ [K, N] under the input-gradient weight quantizer.
    static func checkBackwardShapes(_ recipe: LinearRecipe, tokens T: Int, inFeatures K: Int, outFeatures N: Int) throws {
        func check(_ q: Quantizer?, rows: Int, cols: Int, _ what: String) throws {
            guard let q else { return }
            do { _ = try q.granularity.layout(rows: rows, cols: cols) } catch let e as FP4Error {
                throw FP4Error.invalid("\(what): \(e.message)")
            }
        }
        try check(recipe.gradient, rows: T, cols: N, "the backward quantizes dY [T, N] (out_features = \(N))")
        if recipe.backwardGrouping == .reduction {
            try check(recipe.inputGradientWeight, rows: K, cols: N,
                      "the backward groups W along N (out_features = \(N)) for dX")
        }
    }

    /// Quantizes X into the saved codes and scales (non-finite X throws).
    static func saveInput(_ q: Quantizer, _ x: UnsafePointer<Float>, rows T: Int, cols K: Int, saved: inout LinearSaved,
                          dequantized: UnsafeMutablePointer<Float>?) throws {
        guard let codes = saved.xCodes else {
            throw FP4Error.invalid("a quantized input needs the code buffer of the saved state")
        }
        let ts = try q.quantize(x, rows: T, cols: K, codes: codes, dequantized: dequantized)
        try saved.storeScales(ts, rule: q.scaleRule)
    }

    /// Backward. `x` is needed only when the recipe keeps X in float32 (it is then the
    /// saved input itself); otherwise X comes from the saved codes. Any of dx, dw, db may
    /// be nil to skip that gradient.
    public static func backward(dy: UnsafePointer<Float>, tokens T: Int, outFeatures N: Int,
                                x: UnsafePointer<Float>?, w: UnsafePointer<Float>, inFeatures K: Int,
                                recipe: LinearRecipe, saved: LinearSaved,
                                dx: UnsafeMutablePointer<Float>?, dw: UnsafeMutablePointer<Float>?,
                                db: UnsafeMutablePointer<Float>?) throws {
        try checkShapes(T, K, N)

        // dX on codes when its operands allow it (false when dY holds NaN/inf: then simulated).
        let dxOnCodes = try dx.map { dx in
            try inputGradientRunsOnCodes(recipe: recipe)
                && inputGradientOnCodes(dy: dy, tokens: T, outFeatures: N, w: w, inFeatures: K, recipe: recipe, dx: dx)
        } ?? false
        // dW from dYᵀ and X_bᵀ re-grouped along T (rotated first under wgradHadamard).
        let regroupedWeightGradient = recipe.wgradHadamard != nil || recipe.backwardGrouping == .reduction
        // Q_g(dY) in float32, for the simulated GEMMs that read it.
        let needsGradient = dx != nil && !dxOnCodes || dw != nil && !regroupedWeightGradient
        let gq = needsGradient ? try Operand(dy, rows: T, cols: N, quantizer: recipe.gradient, nonFinite: .propagate) : nil

        // W_q is recomputed, with the same scales the forward used (DGE needs them).
        let transposedW = recipe.backwardGrouping == .reduction
        let needsForwardW = dx != nil && !dxOnCodes && recipe.reusesForwardWeight && !transposedW || dw != nil && recipe.dge != nil
        let wq = needsForwardW ? try Operand(w, rows: N, cols: K, quantizer: recipe.weight, nonFinite: .raise) : nil
        let wScales = wq?.scales

        if let dx, !dxOnCodes, let gq {
            if transposedW {
                // W_b grouped along N: quantize Wᵀ [K, N]; dX = Q_g(dY)·(Q(Wᵀ))ᵀ.
                let wt = Scratch(K * N)
                transpose(w, rows: N, cols: K, into: wt.pointer)
                let wb = try Operand(UnsafePointer(wt.pointer), rows: K, cols: N, quantizer: recipe.inputGradientWeight,
                                     nonFinite: .raise)
                BLAS.gemm(transA: false, transB: true, m: T, n: K, k: N, a: gq.pointer, b: wb.pointer, c: dx)
                withExtendedLifetime((wt, wb)) {}
            } else {
                let wb: Operand
                if recipe.reusesForwardWeight, let wq { wb = wq } else {
                    wb = try Operand(w, rows: N, cols: K, quantizer: recipe.inputGradientWeight, nonFinite: .raise)
                }
                BLAS.gemm(transA: false, transB: false, m: T, n: K, k: N, a: gq.pointer, b: wb.pointer, c: dx)
                withExtendedLifetime(wb) {}
            }
        }

        if let dw {
            var xd: Scratch?
            let xOperand: UnsafePointer<Float>
            if let q = recipe.savedInput {
                guard let codes = saved.xCodes else {
                    throw FP4Error(.invalidState, "the saved state holds no activation codes")
                }
                let buffer = Scratch(T * K)
                xd = buffer
                // dYᵀ·X_q + dYᵀ·ΔX = dYᵀ·(X_q + ΔX): ΔX added row by row as X_q is decoded.
                let compensated = recipe.occ?.compensate == true && recipe.savesForwardInput
                let groups = try q.granularity.layout(rows: T, cols: K).groupCount
                try saved.withFloatScales(q, count: groups) { scales in
                    try q.dequantize(codes: codes, rows: T, cols: K, scales: scales, tensorScale: saved.xTensorScale,
                                     into: buffer.pointer, residual: compensated ? residualAdded(saved) : nil)
                }
                xOperand = UnsafePointer(buffer.pointer)
            } else {
                guard let x else { throw FP4Error.invalid("a float32-input recipe needs x in the backward") }
                xOperand = x
            }
            if regroupedWeightGradient {
                try rotatedWeightGradient(dy: dy, x: xOperand, T: T, N: N, K: K, h: recipe.wgradHadamard,
                                          gradient: recipe.gradient, input: recipe.savedInput, gemm: recipe.gemm, into: dw)
            } else if let gq {
                BLAS.gemm(transA: true, transB: false, m: N, n: K, k: T, a: gq.pointer, b: xOperand, c: dw)
            }
            withExtendedLifetime(xd) {}
            if let cfg = recipe.dge, let q = recipe.weight, let ts = wScales {
                let dge = try DGE(format: q.format, k: cfg.k, clamp: cfg.clamp)
                // dW ⊙ f'(W / s_w) with v computed exactly as the quantizer computes it;
                // |v| counts as at most fmax when the scale rule cannot clip (ScaleRule.neverClips).
                dge.scaleGradient(dw, weight: w, scales: ts, clampToRange: q.scaleRule.neverClips,
                                  twoLevel: q.scaleRule.dividesByTensorScale)
            }
        }

        if let db {
            columnSums(dy, rows: T, cols: N, into: db)
        }
        withExtendedLifetime((gq, wq)) {}
    }

    /// dW = Q_g(dYᵀ·H_b) · Q_x(Xᵀ·H_b)ᵀ (see `WgradHadamard`; without `h`, no rotation): both
    /// operands transposed into zero-padded [·, Tp] buffers, rotated blockwise along T,
    /// quantized with groups along T (nil: float32). Tp is T rounded up to the rotation block
    /// and to the quantizers' blocks. With `gemm == .packed` and two FP4 quantizers, the
    /// product runs on their codes (unless the rotated dY holds NaN/inf, which only the
    /// simulated path carries).
    static func rotatedWeightGradient(dy: UnsafePointer<Float>, x: UnsafePointer<Float>, T: Int, N: Int, K: Int,
                                      h: WgradHadamard?, gradient: Quantizer?, input: Quantizer?, gemm: GEMMMode,
                                      into dw: UnsafeMutablePointer<Float>) throws {
        var unit = h?.block ?? 1
        for q in [gradient, input] {
            if case .block(let n)? = q?.granularity { unit = lcm(unit, n) }
        }
        let tp = (T + unit - 1) / unit * unit
        if gemm == .packed, let qg = gradient, let qx = input, feedsPackedGEMM(qg), feedsPackedGEMM(qx),
           groupsNest(qg, qx, reduction: tp), N * tp > 0, K * tp > 0 {
            let g = try rotatedTransposed(dy, T: T, rows: N, tp: tp, h: h)
            let xr = try rotatedTransposed(x, T: T, rows: K, tp: tp, h: h)
            if let gc = try codesIfFinite(UnsafePointer(g.pointer), rows: N, cols: tp, qg) {
                let xc = try CodedOperand(UnsafePointer(xr.pointer), rows: K, cols: tp, qx)
                try gc.withOperand { a in try xc.withOperand { b in try PackedGEMM.multiply(a, b, into: dw) } }
                withExtendedLifetime((g, xr)) {}
                return
            }
        }
        func operand(_ src: UnsafePointer<Float>, rows: Int, _ q: Quantizer?, nonFinite: NonFinitePolicy) throws -> Scratch {
            let a = try rotatedTransposed(src, T: T, rows: rows, tp: tp, h: h)
            if let q, rows * tp > 0 {
                try q.fakeQuantize(UnsafePointer(a.pointer), rows: rows, cols: tp, into: a.pointer, nonFinite: nonFinite)
            }
            return a
        }
        let g = try operand(dy, rows: N, gradient, nonFinite: .propagate)
        let xr = try operand(x, rows: K, input, nonFinite: .propagate)
        BLAS.gemm(transA: false, transB: true, m: N, n: K, k: tp, a: g.pointer, b: xr.pointer, c: dw)
        withExtendedLifetime((g, xr)) {}
    }

    /// srcᵀ [rows, tp] for src [T, rows], zero-padded along T and rotated blockwise along T
    /// by diag(d)·H_block (no rotation without `h`).
    static func rotatedTransposed(_ src: UnsafePointer<Float>, T: Int, rows: Int, tp: Int,
                                  h: WgradHadamard?) throws -> Scratch {
        let a = Scratch(rows * tp)
        if tp > T {
            for r in 0..<rows { (a.pointer + r * tp + T).initialize(repeating: 0, count: tp - T) }
        }
        transpose(src, rows: T, cols: rows, into: a.pointer, ldb: tp)
        if let h {
            try h.signs.withUnsafeBufferPointer { dp in
                try Hadamard.transform(UnsafePointer(a.pointer), rows: rows, cols: tp, block: h.block,
                                       signs: dp.baseAddress!, into: a.pointer)
            }
        }
        return a
    }

    /// The saved residual for a kernel that adds it row by row (nil when it is empty).
    static func residualAdded(_ saved: LinearSaved) -> CSRResidual? {
        guard saved.residualNNZ > 0, let ip = saved.residualIndptr, let ix = saved.residualIndices,
              let vs = saved.residualValues else { return nil }
        return CSRResidual(indptr: ip, indices: ix, values: vs)
    }

    static func scatterResidual(_ saved: LinearSaved, rows: Int, cols: Int, into x: UnsafeMutablePointer<Float>) {
        guard let ip = saved.residualIndptr, let ix = saved.residualIndices, let vs = saved.residualValues else { return }
        OCC.scatterAdd(indptr: ip, indices: ix, values: vs, rows: rows, cols: cols, into: x)
    }

    static func clampOnly(_ x: UnsafePointer<Float>, _ T: Int, _ K: Int, _ th: [OCCThresholds], _ perRow: Bool,
                          into xc: UnsafeMutablePointer<Float>) {
        // An empty tensor (K = 0) has no thresholds (OCC.thresholds returns []) and nothing to clamp.
        guard T > 0, K > 0, !th.isEmpty else { return }
        th.withUnsafeBufferPointer { th in
            Parallel.forChunks(count: T, grain: Parallel.grain(count: T, minItems: Swift.max(1, 8192 / Swift.max(1, K)))) { rows in
                for r in rows {
                    let t = th[perRow ? r : 0]
                    ClampKernel.clampRow(x + r * K, xc + r * K, K, t.lo, t.hi, true)
                }
            }
        }
    }

    /// out[c] = Σ_r m[r, c] (the bias gradient), summed in row order for each column.
    public static func columnSums(_ m: UnsafePointer<Float>, rows: Int, cols: Int, into out: UnsafeMutablePointer<Float>) {
        Parallel.forChunks(count: cols, grain: Parallel.grain(count: cols, minItems: 256)) { cs in
            for c in cs { out[c] = 0 }
            for r in 0..<rows {
                let row = m + r * cols
                for c in cs { out[c] += row[c] }
            }
        }
    }
}

/// Least common multiple of two positive integers.
func lcm(_ a: Int, _ b: Int) -> Int {
    var (x, y) = (a, b)
    while y != 0 { (x, y) = (y, x % y) }
    return a / x * b
}
