import FP4CABI
import FP4Core

// @_cdecl exports of DGE, OCC and the linear layer. Signatures: fp4swift.h.

func checkAlpha(_ alpha: Double) throws {
    guard alpha > 0.5, alpha <= 1 else { throw invalid("alpha must lie in (0.5, 1], got \(alpha)") }
}

/// X [T, K], W [N, K] and Y / dY [T, N] must each have a valid, non-overflowing size.
func checkLinearShapes(_ T: Int64, _ K: Int64, _ N: Int64) throws {
    _ = try elementCount(T, K)
    _ = try elementCount(N, K)
    _ = try elementCount(T, N)
}

/// A CSR matrix from C must be well-formed before any kernel indexes with it.
func checkCSR(_ indptr: UnsafePointer<Int64>, _ indices: UnsafePointer<Int32>, nnz: Int, rows: Int, cols: Int) throws {
    guard indptr[0] == 0, indptr[rows] == Int64(nnz) else {
        throw invalid("CSR row pointers must start at 0 and end at nnz (\(nnz))")
    }
    for r in 0..<rows where indptr[r + 1] < indptr[r] {
        throw invalid("CSR row pointers must be non-decreasing (row \(r))")
    }
    for i in 0..<nnz where indices[i] < 0 || Int(indices[i]) >= cols {
        throw invalid("CSR column index \(indices[i]) at entry \(i) is outside 0..<\(cols)")
    }
}

@_cdecl("fp4swift_dge_derivative")
public func fp4swift_dge_derivative(_ v: UnsafePointer<Float>?, _ n: Int64, _ fmt: Int32, _ k: Float, _ clamp: Float,
                                    _ out: UnsafeMutablePointer<Float>?) -> Int32 {
    guarded {
        let count = try elementCount(1, n)
        let dge = try DGE(format: try format(fmt), k: k, clamp: clamp)
        guard count > 0 else { return }
        dge.derivatives(try required(v, "v"), count: count, into: try required(out, "out"))
    }
}

@_cdecl("fp4swift_dge_surrogate")
public func fp4swift_dge_surrogate(_ v: UnsafePointer<Float>?, _ n: Int64, _ fmt: Int32, _ k: Float,
                                   _ out: UnsafeMutablePointer<Float>?) -> Int32 {
    guarded {
        let count = try elementCount(1, n)
        let dge = try DGE(format: try format(fmt), k: k, clamp: .infinity)
        guard count > 0 else { return }
        let vs = try required(v, "v"), o = try required(out, "out")
        for i in 0..<count { o[i] = dge.surrogate(vs[i]) }
    }
}

@_cdecl("fp4swift_occ_thresholds")
public func fp4swift_occ_thresholds(_ x: UnsafePointer<Float>?, _ rows: Int64, _ cols: Int64, _ alpha: Double, _ perRow: Int32,
                                    _ lo: UnsafeMutablePointer<Float>?, _ hi: UnsafeMutablePointer<Float>?, _ nGroups: Int64) -> Int32 {
    guarded {
        let n = try elementCount(rows, cols)
        try checkAlpha(alpha)
        guard n > 0 else { return }
        let th = try OCC.thresholds(try required(x, "x"), rows: Int(rows), cols: Int(cols), alpha: alpha, perRow: perRow != 0)
        try checkLength(Int(nGroups), atLeast: th.count, "lo/hi")
        let l = try required(lo, "lo"), h = try required(hi, "hi")
        for g in 0..<th.count {
            l[g] = th[g].lo
            h[g] = th[g].hi
        }
    }
}

@_cdecl("fp4swift_occ_residual_capacity")
public func fp4swift_occ_residual_capacity(_ rows: Int64, _ cols: Int64, _ alpha: Double, _ perRow: Int32,
                                           _ capacity: UnsafeMutablePointer<Int64>?) -> Int32 {
    guarded {
        _ = try elementCount(rows, cols)
        try checkAlpha(alpha)
        try required(capacity, "capacity").pointee =
            Int64(OCC.residualCapacity(rows: Int(rows), cols: Int(cols), alpha: alpha, perRow: perRow != 0))
    }
}

@_cdecl("fp4swift_occ_clamp")
public func fp4swift_occ_clamp(_ x: UnsafePointer<Float>?, _ rows: Int64, _ cols: Int64, _ alpha: Double, _ perRow: Int32,
                               _ xc: UnsafeMutablePointer<Float>?, _ indptr: UnsafeMutablePointer<Int64>?,
                               _ indices: UnsafeMutablePointer<Int32>?, _ values: UnsafeMutablePointer<Float>?,
                               _ capacity: Int64, _ nnz: UnsafeMutablePointer<Int64>?) -> Int32 {
    guarded {
        let n = try elementCount(rows, cols)
        try checkAlpha(alpha)
        guard cols <= Int64(Int32.max) else { throw invalid("cols above 2^31 − 1 do not fit CSR column indices") }
        let ip = try required(indptr, "indptr")
        let need = OCC.residualCapacity(rows: Int(rows), cols: Int(cols), alpha: alpha, perRow: perRow != 0)
        try checkLength(Int(capacity), atLeast: need, "residual")
        for r in 0...Int(rows) { ip[r] = 0 }
        try required(nnz, "nnz").pointee = 0
        guard n > 0 else { return }
        let th = try OCC.thresholds(try required(x, "x"), rows: Int(rows), cols: Int(cols), alpha: alpha, perRow: perRow != 0)
        let count = try OCC.clampAndResidual(try required(x, "x"), rows: Int(rows), cols: Int(cols), thresholds: th, clamped: xc,
                                             indptr: ip, indices: try required(indices, "indices"),
                                             values: try required(values, "values"), capacity: Int(capacity))
        try required(nnz, "nnz").pointee = Int64(count)
    }
}

@_cdecl("fp4swift_csr_matmul_t")
public func fp4swift_csr_matmul_t(_ indptr: UnsafePointer<Int64>?, _ indices: UnsafePointer<Int32>?, _ values: UnsafePointer<Float>?,
                                  _ nnz: Int64, _ rows: Int64, _ cols: Int64, _ w: UnsafePointer<Float>?, _ n: Int64,
                                  _ y: UnsafeMutablePointer<Float>?) -> Int32 {
    guarded {
        _ = try elementCount(rows, cols)
        _ = try elementCount(rows, n)
        _ = try elementCount(n, cols)
        guard nnz >= 0 else { throw invalid("nnz must be non-negative") }
        let ip = try required(indptr, "indptr")
        guard rows > 0, n > 0 else { return }
        let ix = try required(indices, "indices")
        try checkCSR(ip, ix, nnz: Int(nnz), rows: Int(rows), cols: Int(cols))
        OCC.csrMatmulTransposed(indptr: ip, indices: ix, values: try required(values, "values"), rows: Int(rows), cols: Int(cols),
                                w: try required(w, "w"), n: Int(n), into: try required(y, "y"))
    }
}

/// The Swift recipe a C descriptor describes.
func linearRecipe(_ rp: UnsafePointer<fp4swift_linear_recipe>?) throws -> LinearRecipe {
    let r = try required(rp, "recipe").pointee
    func quant(_ on: Int32, _ q: fp4swift_quantizer) throws -> Quantizer? {
        guard on != 0 else { return nil }
        return try withUnsafePointer(to: q) { try quantizer($0).0 }
    }
    let recipe = LinearRecipe(
        input: try quant(r.quantize_input, r.input),
        weight: try quant(r.quantize_weight, r.weight),
        gradient: try quant(r.quantize_gradient, r.gradient),
        occ: r.occ != 0 ? OCCConfig(alpha: r.occ_alpha, perRow: r.occ_per_row != 0, compensate: r.occ_compensate != 0) : nil,
        dge: r.dge != 0 ? DGEConfig(k: r.dge_k, clamp: r.dge_clamp) : nil,
        wgradHadamard: r.wgrad_hadamard != 0 ? WgradHadamard(block: Int(r.wgrad_hadamard), seed: r.wgrad_hadamard_seed) : nil,
        backwardWeight: try backwardOperand(r.backward_weight_mode, r.backward_weight, "backward_weight_mode"),
        backwardInput: try backwardOperand(r.backward_input_mode, r.backward_input, "backward_input_mode"),
        gemm: try gemmMode(r.gemm),
        backwardGrouping: try backwardGrouping(r.backward_grouping))
    try recipe.validate()
    return recipe
}

func backwardGrouping(_ v: Int32) throws -> BackwardGrouping {
    guard let g = BackwardGrouping(rawValue: Int(v)) else {
        throw invalid("backward_grouping must be \(FP4SWIFT_BACKWARD_GROUPING_STORED) (stored) or \(FP4SWIFT_BACKWARD_GROUPING_REDUCTION) (reduction), got \(v)")
    }
    return g
}

func gemmMode(_ mode: Int32) throws -> GEMMMode {
    guard let m = GEMMMode(rawValue: Int(mode)) else {
        throw invalid("gemm must be \(FP4SWIFT_GEMM_SIMULATED) (simulated) or \(FP4SWIFT_GEMM_PACKED) (packed), got \(mode)")
    }
    return m
}

func backwardOperand(_ mode: Int32, _ q: fp4swift_quantizer, _ name: String) throws -> BackwardOperand {
    switch mode {
    case FP4SWIFT_BACKWARD_FORWARD: return .forward
    case FP4SWIFT_BACKWARD_FLOAT32: return .own(nil)
    case FP4SWIFT_BACKWARD_QUANTIZE: return .own(try withUnsafePointer(to: q) { try quantizer($0).0 })
    default: throw invalid("\(name) must be 0 (forward), 1 (float32) or 2 (quantize), got \(mode)")
    }
}

func linearSaved(_ sp: UnsafePointer<fp4swift_linear_saved>?) throws -> LinearSaved {
    let s = try required(sp, "saved").pointee
    return LinearSaved(xCodes: s.x_codes, xCodesCount: Int(s.x_codes_len), xScales: s.x_scales, xScalesCount: Int(s.x_scales_len),
                       xTensorScale: s.x_tensor_scale, residualIndptr: s.residual_indptr, residualIndices: s.residual_indices,
                       residualValues: s.residual_values, residualCapacity: Int(s.residual_capacity), residualNNZ: Int(s.residual_nnz),
                       xScaleBytes: s.x_scale_bytes, xScaleBytesCount: Int(s.x_scale_bytes_len))
}

/// The saved state a forward writes into: its residual buffers must exist when it has room for a residual.
func linearSavedToFill(_ sp: UnsafeMutablePointer<fp4swift_linear_saved>) throws -> LinearSaved {
    let saved = try linearSaved(UnsafePointer(sp))
    if saved.residualCapacity > 0,
       saved.residualIndptr == nil || saved.residualIndices == nil || saved.residualValues == nil {
        throw invalid("residual buffers are NULL but residual_capacity is \(saved.residualCapacity)")
    }
    return saved
}

@_cdecl("fp4swift_linear_saved_sizes")
public func fp4swift_linear_saved_sizes(_ T: Int64, _ K: Int64, _ rp: UnsafePointer<fp4swift_linear_recipe>?,
                                        _ codes: UnsafeMutablePointer<Int64>?, _ scales: UnsafeMutablePointer<Int64>?,
                                        _ capacity: UnsafeMutablePointer<Int64>?,
                                        _ scaleBytes: UnsafeMutablePointer<Int64>?) -> Int32 {
    guarded {
        _ = try elementCount(T, K)
        let sizes = try LinearLayer.savedSizes(tokens: Int(T), inFeatures: Int(K), recipe: try linearRecipe(rp))
        try required(codes, "x_codes_len").pointee = Int64(sizes.xCodes)
        try required(scales, "x_scales_len").pointee = Int64(sizes.xScales)
        try required(capacity, "residual_capacity").pointee = Int64(sizes.residualCapacity)
        try required(scaleBytes, "x_scale_bytes_len").pointee = Int64(sizes.xScaleBytes)
    }
}

@_cdecl("fp4swift_linear_forward")
public func fp4swift_linear_forward(_ x: UnsafePointer<Float>?, _ T: Int64, _ K: Int64, _ w: UnsafePointer<Float>?, _ N: Int64,
                                    _ bias: UnsafePointer<Float>?, _ rp: UnsafePointer<fp4swift_linear_recipe>?,
                                    _ y: UnsafeMutablePointer<Float>?, _ sp: UnsafeMutablePointer<fp4swift_linear_saved>?) -> Int32 {
    guarded {
        try checkLinearShapes(T, K, N)
        let recipe = try linearRecipe(rp)
        let savedPointer = try required(sp, "saved")
        var saved = try linearSavedToFill(savedPointer)
        guard T > 0, N > 0 else { return }
        try LinearLayer.forward(x: try required(x, "x"), tokens: Int(T), inFeatures: Int(K), w: try required(w, "w"), outFeatures: Int(N),
                                bias: bias, recipe: recipe, y: try required(y, "y"), saved: &saved)
        savedPointer.pointee.x_tensor_scale = saved.xTensorScale
        savedPointer.pointee.residual_nnz = Int64(saved.residualNNZ)
    }
}

@_cdecl("fp4swift_linear_prepare_input")
public func fp4swift_linear_prepare_input(_ x: UnsafePointer<Float>?, _ T: Int64, _ K: Int64,
                                          _ rp: UnsafePointer<fp4swift_linear_recipe>?, _ operand: UnsafeMutablePointer<Float>?,
                                          _ sp: UnsafeMutablePointer<fp4swift_linear_saved>?) -> Int32 {
    guarded {
        try checkLinearShapes(T, K, 0)
        let recipe = try linearRecipe(rp)
        let savedPointer = try required(sp, "saved")
        var saved = try linearSavedToFill(savedPointer)
        guard T > 0 else { return }
        if recipe.input != nil, operand == nil, !LinearLayer.forwardRunsOnCodes(recipe: recipe, inFeatures: Int(K)) {
            throw invalid("x_operand is NULL but the recipe quantizes X and its forward GEMM is not on codes")
        }
        try LinearLayer.prepareInput(x: try required(x, "x"), tokens: Int(T), inFeatures: Int(K), recipe: recipe,
                                     operand: operand, saved: &saved)
        savedPointer.pointee.x_tensor_scale = saved.xTensorScale
        savedPointer.pointee.residual_nnz = Int64(saved.residualNNZ)
    }
}

@_cdecl("fp4swift_linear_forward_prepared")
public func fp4swift_linear_forward_prepared(_ operand: UnsafePointer<Float>?, _ T: Int64, _ K: Int64, _ w: UnsafePointer<Float>?,
                                             _ N: Int64, _ bias: UnsafePointer<Float>?,
                                             _ rp: UnsafePointer<fp4swift_linear_recipe>?, _ y: UnsafeMutablePointer<Float>?,
                                             _ sp: UnsafePointer<fp4swift_linear_saved>?) -> Int32 {
    guarded {
        try checkLinearShapes(T, K, N)
        let recipe = try linearRecipe(rp)
        guard T > 0, N > 0 else { return }
        var saved: LinearSaved?
        if LinearLayer.forwardRunsOnCodes(recipe: recipe, inFeatures: Int(K)) {
            // The GEMM reads X_q (and the residual) from the prepared state: check it fits these shapes.
            let s = try linearSaved(try required(sp, "saved"))
            try checkSavedForShapes(s, tokens: T, inFeatures: K, recipe: recipe)
            saved = s
        }
        try LinearLayer.forwardPrepared(operand: saved == nil ? try required(operand, "x_operand") : operand, tokens: Int(T),
                                        inFeatures: Int(K), w: try required(w, "w"), outFeatures: Int(N), bias: bias,
                                        recipe: recipe, y: try required(y, "y"), saved: saved)
    }
}

@_cdecl("fp4swift_linear_forward_on_codes")
public func fp4swift_linear_forward_on_codes(_ K: Int64, _ rp: UnsafePointer<fp4swift_linear_recipe>?,
                                             _ onCodes: UnsafeMutablePointer<Int32>?) -> Int32 {
    guarded {
        try checkLinearShapes(0, K, 0)
        let recipe = try linearRecipe(rp)
        try required(onCodes, "on_codes").pointee = LinearLayer.forwardRunsOnCodes(recipe: recipe, inFeatures: Int(K)) ? 1 : 0
    }
}

/// A saved state a call reads: its buffers hold what `savedSizes` reports for these shapes,
/// and its residual is a consistent CSR.
func checkSavedForShapes(_ saved: LinearSaved, tokens T: Int64, inFeatures K: Int64, recipe: LinearRecipe) throws {
    let sizes = try LinearLayer.savedSizes(tokens: Int(T), inFeatures: Int(K), recipe: recipe)
    guard saved.xCodesCount >= sizes.xCodes, saved.xScalesCount >= sizes.xScales,
          saved.xScaleBytesCount >= sizes.xScaleBytes else {
        throw FP4Error(.invalidState, "the saved state does not match these shapes and recipe")
    }
    if sizes.xCodes > 0 && saved.xCodes == nil || sizes.xScales > 0 && saved.xScales == nil
        || sizes.xScaleBytes > 0 && saved.xScaleBytes == nil {
        throw FP4Error(.invalidState, "the saved state's code or scale buffer is NULL")
    }
    if saved.residualNNZ > 0 {
        guard saved.residualNNZ <= saved.residualCapacity, let ip = saved.residualIndptr, let ix = saved.residualIndices,
              saved.residualValues != nil else {
            throw FP4Error(.invalidState, "the saved residual is inconsistent")
        }
        try checkCSR(ip, ix, nnz: saved.residualNNZ, rows: Int(T), cols: Int(K))
    }
}

@_cdecl("fp4swift_linear_backward")
public func fp4swift_linear_backward(_ dy: UnsafePointer<Float>?, _ T: Int64, _ N: Int64, _ x: UnsafePointer<Float>?,
                                     _ w: UnsafePointer<Float>?, _ K: Int64, _ rp: UnsafePointer<fp4swift_linear_recipe>?,
                                     _ sp: UnsafePointer<fp4swift_linear_saved>?, _ dx: UnsafeMutablePointer<Float>?,
                                     _ dw: UnsafeMutablePointer<Float>?, _ db: UnsafeMutablePointer<Float>?) -> Int32 {
    guarded {
        try checkLinearShapes(T, K, N)
        let recipe = try linearRecipe(rp)
        let saved = try linearSaved(sp)
        try checkSavedForShapes(saved, tokens: T, inFeatures: K, recipe: recipe)
        // Empty shapes: every gradient is zero (or empty).
        if T == 0 || N == 0 || K == 0 {
            if let dx { for i in 0..<Int(T * K) { dx[i] = 0 } }
            if let dw { for i in 0..<Int(N * K) { dw[i] = 0 } }
            if let db { for i in 0..<Int(N) { db[i] = 0 } }
            if T > 0 && N > 0, let db { LinearLayer.columnSums(try required(dy, "dy"), rows: Int(T), cols: Int(N), into: db) }
            return
        }
        if recipe.savedInput == nil && dw != nil && x == nil { throw invalid("a float32-input recipe needs x in the backward") }
        try LinearLayer.backward(dy: try required(dy, "dy"), tokens: Int(T), outFeatures: Int(N), x: x, w: try required(w, "w"),
                                 inFeatures: Int(K), recipe: recipe, saved: saved, dx: dx, dw: dw, db: db)
    }
}

// MARK: - Named recipes

/// The C descriptor of a Swift quantizer (the inverse of `quantizer(_:)`).
func cQuantizer(_ q: Quantizer, nonFinite: NonFinitePolicy) -> fp4swift_quantizer {
    var c = fp4swift_quantizer()
    c.format = Int32(MiniFloatFormat.all.firstIndex(of: q.format) ?? 0)
    switch q.granularity {
    case .tensor: c.granularity = FP4SWIFT_GRANULARITY_TENSOR
    case .row: c.granularity = FP4SWIFT_GRANULARITY_ROW
    case .column: c.granularity = FP4SWIFT_GRANULARITY_COLUMN
    case .block(let n): c.granularity = FP4SWIFT_GRANULARITY_BLOCK; c.block = Int32(n)
    case .block2d(let n): c.granularity = FP4SWIFT_GRANULARITY_BLOCK2D; c.block = Int32(n)
    }
    c.scale_rule = Int32(q.scaleRule.rawValue)
    c.rounding = Int32(q.rounding.rawValue)
    c.nonfinite = Int32(nonFinite.rawValue)
    c.seed = q.seed
    c.stochastic_bits = Int32(q.stochasticBits)
    return c
}

/// The C descriptor of a Swift recipe (the inverse of `linearRecipe(_:)`). Quantizers of X, W
/// and the backward operands raise on NaN/inf (codes cannot hold them); dY's propagates.
func cRecipe(_ r: LinearRecipe) -> fp4swift_linear_recipe {
    var c = fp4swift_linear_recipe()
    func set(_ q: Quantizer?, _ policy: NonFinitePolicy) -> (Int32, fp4swift_quantizer) {
        guard let q else { return (0, fp4swift_quantizer()) }
        return (1, cQuantizer(q, nonFinite: policy))
    }
    (c.quantize_input, c.input) = set(r.input, .raise)
    (c.quantize_weight, c.weight) = set(r.weight, .raise)
    (c.quantize_gradient, c.gradient) = set(r.gradient, .propagate)
    if let occ = r.occ {
        c.occ = 1
        c.occ_per_row = occ.perRow ? 1 : 0
        c.occ_compensate = occ.compensate ? 1 : 0
        c.occ_alpha = occ.alpha
    } else {
        (c.occ_compensate, c.occ_alpha) = (1, 0.99)  // Python's field defaults
    }
    if let dge = r.dge {
        (c.dge, c.dge_k, c.dge_clamp) = (1, dge.k, dge.clamp)
    } else {
        (c.dge_k, c.dge_clamp) = (5, 3)
    }
    if let h = r.wgradHadamard { (c.wgrad_hadamard, c.wgrad_hadamard_seed) = (Int32(h.block), h.seed) }
    func backward(_ b: BackwardOperand) -> (Int32, fp4swift_quantizer) {
        switch b {
        case .forward: return (FP4SWIFT_BACKWARD_FORWARD, fp4swift_quantizer())
        case .own(nil): return (FP4SWIFT_BACKWARD_FLOAT32, fp4swift_quantizer())
        case .own(let q?): return (FP4SWIFT_BACKWARD_QUANTIZE, cQuantizer(q, nonFinite: .raise))
        }
    }
    (c.backward_weight_mode, c.backward_weight) = backward(r.backwardWeight)
    (c.backward_input_mode, c.backward_input) = backward(r.backwardInput)
    c.gemm = Int32(r.gemm.rawValue)
    c.backward_grouping = Int32(r.backwardGrouping.rawValue)
    return c
}

@_cdecl("fp4swift_linear_recipe_named")
public func fp4swift_linear_recipe_named(_ name: UnsafePointer<CChar>?, _ out: UnsafeMutablePointer<fp4swift_linear_recipe>?) -> Int32 {
    guarded {
        let n = String(cString: try required(name, "name"))
        guard let r = LinearRecipe.named(n) else {
            throw invalid("unknown recipe \(n.debugDescription); known: \(LinearRecipe.names.joined(separator: ", "))")
        }
        try required(out, "out").pointee = cRecipe(r)
    }
}
