/// The named recipes of numerics.md §6–7 as Swift data, the same ones Python's `f4.recipes()`
/// lists (`fp4swift_linear_recipe_named` exports them, and python/tests/test_recipe_table.py
/// checks the two sides field by field). Python adds what only it uses: module-role policies,
/// descriptions, the schedule.
extension LinearRecipe {
    /// Every name `named(_:)` knows, in Python's order; "quartet" runs `QuartetLinear`, and its
    /// entry holds the quantizers that layer uses.
    public static let names = ["fp32", "fp4-direct", "wang2025", "mxfp4", "nvfp4", "quartet", "fp8", "zhou2025"]

    /// The built-in recipe called `name` (nil for an unknown name). `zhou2025` is its MLP
    /// recipe (its attention projections use `fp8`).
    public static func named(_ name: String) -> LinearRecipe? {
        let e2m1Row = Quantizer(format: .e2m1, granularity: .row, scaleRule: .absmax)
        let e4m3Row = Quantizer(format: .e4m3, granularity: .row, scaleRule: .absmax)
        let e4m3Column = Quantizer(format: .e4m3, granularity: .column, scaleRule: .absmax)
        // dY in FP8: e5m2 with a per-tensor power-of-two scale (MS-AMP).
        let fp8Gradient = Quantizer(format: .e5m2, granularity: .tensor, scaleRule: .pow2)
        let mxfp4 = Quantizer(format: .e2m1, granularity: .block(32), scaleRule: .e8m0)
        switch name {
        case "fp32":
            return LinearRecipe()
        case "fp4-direct":
            let q = Quantizer(format: .e2m1, granularity: .tensor, scaleRule: .absmax)
            return LinearRecipe(input: q, weight: q)
        case "wang2025":
            return LinearRecipe(input: e2m1Row, weight: e2m1Row, occ: OCCConfig(alpha: 0.99, perRow: false, compensate: true),
                                dge: DGEConfig(k: 5, clamp: 3))
        case "mxfp4":
            return LinearRecipe(input: mxfp4, weight: mxfp4, gradient: mxfp4, backwardGrouping: .reduction)
        case "nvfp4":
            return LinearRecipe(input: Quantizer(format: .e2m1, granularity: .block(16), scaleRule: .nvfp4),
                                weight: Quantizer(format: .e2m1, granularity: .block2d(16), scaleRule: .nvfp4),
                                gradient: Quantizer(format: .e2m1, granularity: .block(16), scaleRule: .nvfp4, rounding: .stochastic),
                                wgradHadamard: WgradHadamard(block: 16, seed: 0))
        case "quartet":
            return LinearRecipe(input: QuartetLinear.forwardQuantizer, weight: QuartetLinear.forwardQuantizer,
                                gradient: QuartetLinear.backwardQuantizer(seed: 0))
        case "fp8":
            return LinearRecipe(input: e4m3Row, weight: e4m3Row, gradient: fp8Gradient,
                                backwardWeight: .own(e4m3Column), backwardInput: .own(e4m3Column))
        case "zhou2025":
            let block16 = Quantizer(format: .e2m1, granularity: .block(16), scaleRule: .absmax)
            return LinearRecipe(input: block16, weight: block16, gradient: fp8Gradient,
                                backwardWeight: .own(e4m3Column), backwardInput: .own(e4m3Column))
        default:
            return nil
        }
    }
}
