/// Outlier clamping and compensation settings (numerics.md §5).
public struct OCCConfig: Sendable, Equatable {
    /// Quantile of the clamp thresholds, in (0.5, 1].
    public var alpha: Double
    /// Thresholds per row (token) instead of per tensor.
    public var perRow: Bool
    /// Add ΔX·W_qᵀ back (sparse residual) instead of dropping it.
    public var compensate: Bool

    public init(alpha: Double = 0.99, perRow: Bool = false, compensate: Bool = true) {
        self.alpha = alpha
        self.perRow = perRow
        self.compensate = compensate
    }
}

/// DGE settings (numerics.md §4).
public struct DGEConfig: Sendable, Equatable {
    public var k: Float
    public var clamp: Float
    public init(k: Float = 5, clamp: Float = 3) {
        self.k = k
        self.clamp = clamp
    }
}

/// A random Hadamard transform on the weight-gradient GEMM's operands (NVFP4 recipe):
/// dW = Q_gradient(dYᵀ·H_b) · Q_input(X_savedᵀ·H_b)ᵀ, with H_b = diag(d)·H_block applied
/// blockwise along T (the GEMM's reduction dimension), T zero-padded to a multiple of
/// `block`. d ∈ {±1}^block is fixed by `seed`: d_i = −1 if CounterRNG.uniform(key(seed), i) < ½.
/// Since H_b·H_bᵀ = I the product equals dYᵀ·X up to quantization, with outliers spread
/// over each block of tokens before the 1×block scale groups see them.
public struct WgradHadamard: Sendable, Equatable {
    public var block: Int
    public var seed: UInt64
    public init(block: Int = 16, seed: UInt64 = 0) {
        self.block = block
        self.seed = seed
    }

    /// The sign vector d.
    public var signs: [Float] {
        let k = CounterRNG.key(seed: seed)
        return (0..<block).map { CounterRNG.uniform(key: k, index: $0) < 0.5 ? -1 : 1 }
    }
}

/// Along which dimension the backward GEMMs' quantizers group their operands.
public enum BackwardGrouping: Int, Sendable, CaseIterable {
    /// As stored: dY [T, N], W [N, K] and the saved X [T, K] (the forward's groups).
    case stored = 0
    /// Along each backward GEMM's reduction dimension, as OCP MX training does:
    /// dX = Q_g(dY)·Q_w(Wᵀ)ᵀ with dY and W grouped along N (Wᵀ [K, N] quantized);
    /// dW = Q_g(dYᵀ)·Q_x(X_bᵀ)ᵀ with dYᵀ [N, T] and X_bᵀ [K, T] grouped along T, X_b decoded
    /// from the saved codes and T zero-padded to a whole number of groups.
    case reduction = 1

    public var name: String { self == .stored ? "stored" : "reduction" }
}

/// The operand a backward GEMM uses for W (input-gradient GEMM) or X (weight-gradient GEMM).
public enum BackwardOperand: Sendable {
    /// The forward's quantized operand: W_q recomputed, X_q from the saved codes.
    case forward
    /// The float32 tensor, or its own quantization (e.g. FP8 backward GEMMs under an FP4
    /// forward, Zhou et al.): `own(nil)` is float32.
    case own(Quantizer?)
}

/// A linear layer's precision recipe as data (numerics.md §6, §7): which operand of which GEMM is
/// quantized how. `nil` quantizers mean float32.
///
/// - forward:  Y = Q_input(OCC(X)) · Q_weight(W)ᵀ (+ ΔX · Q_weight(W)ᵀ) + b
/// - backward: dX = Q_gradient(dY) · W_b;  dW = (Q_gradient(dY)ᵀ · X_b) ⊙ DGE, where W_b and
///   X_b are the forward's W_q and X_q (`.forward`, the default) or their own quantization
///   of W and X (`backwardWeight`, `backwardInput`).
public struct LinearRecipe: Sendable {
    public var input: Quantizer?
    public var weight: Quantizer?
    public var gradient: Quantizer?
    public var occ: OCCConfig?
    public var dge: DGEConfig?
    /// Random Hadamard transform of the dW GEMM's operands along T (nil: none).
    public var wgradHadamard: WgradHadamard?
    /// W in the input-gradient GEMM.
    public var backwardWeight: BackwardOperand
    /// X in the weight-gradient GEMM; what the forward saves (codes of this quantizer).
    public var backwardInput: BackwardOperand
    /// Where the GEMMs run: on packed codes where the operands allow it, or simulated.
    public var gemm: GEMMMode
    /// Along which dimension the backward quantizers group dY, W_b and X_b.
    public var backwardGrouping: BackwardGrouping

    public init(input: Quantizer? = nil, weight: Quantizer? = nil, gradient: Quantizer? = nil,
                occ: OCCConfig? = nil, dge: DGEConfig? = nil, wgradHadamard: WgradHadamard? = nil,
                backwardWeight: BackwardOperand = .forward, backwardInput: BackwardOperand = .forward,
                gemm: GEMMMode = .packed, backwardGrouping: BackwardGrouping = .stored) {
        self.input = input
        self.weight = weight
        self.gradient = gradient
        self.occ = occ
        self.dge = dge
        self.wgradHadamard = wgradHadamard
        self.backwardWeight = backwardWeight
        self.backwardInput = backwardInput
        self.gemm = gemm
        self.backwardGrouping = backwardGrouping
    }

    /// The quantizer of W in the input-gradient GEMM (nil: float32).
    public var inputGradientWeight: Quantizer? {
        if case .own(let q) = backwardWeight { return q }
        return weight
    }

    /// The quantizer of the X the forward saves for the weight-gradient GEMM (nil: the
    /// backward needs the float32 X).
    public var savedInput: Quantizer? {
        if case .own(let q) = backwardInput { return q }
        return input
    }

    /// The input-gradient GEMM uses the forward's W_q.
    public var reusesForwardWeight: Bool {
        if case .forward = backwardWeight { return true }
        return false
    }

    /// The saved X is the forward GEMM's operand (X_q, plus the OCC residual).
    public var savesForwardInput: Bool {
        if case .forward = backwardInput { return true }
        return false
    }

    /// Checks the combination: ranges of α, k, C; OCC needs a quantized input; DGE a
    /// quantized FP4 weight.
    public func validate() throws {
        try input?.validate()
        try weight?.validate()
        try gradient?.validate()
        if case .own(let q) = backwardWeight { try q?.validate() }
        if case .own(let q) = backwardInput { try q?.validate() }
        if let occ {
            guard occ.alpha > 0.5, occ.alpha <= 1 else {
                throw FP4Error.invalid("OCC alpha must lie in (0.5, 1], got \(occ.alpha)")
            }
            guard input != nil else { throw FP4Error.invalid("OCC needs a quantized input (the recipe's input quantizer is float32)") }
            // The residual belongs to the forward's X_q; the backward's own X quantization
            // would see the unclamped X.
            guard savesForwardInput else { throw FP4Error.invalid("OCC needs the weight-gradient GEMM to use the forward's X_q") }
        }
        if let h = wgradHadamard {
            guard h.block >= 2, h.block & (h.block - 1) == 0 else {
                throw FP4Error.invalid("the weight-gradient Hadamard block must be a power of two >= 2, got \(h.block)")
            }
        }
        if let dge {
            guard let w = weight else { throw FP4Error.invalid("DGE needs a quantized weight (the recipe's weight quantizer is float32)") }
            _ = try DGE(format: w.format, k: dge.k, clamp: dge.clamp)
        }
    }
}
