/// What a quantizer does with a group that holds NaN or ±inf (numerics.md §3).
public enum NonFinitePolicy: Int, Sendable {
    /// Every output of the group is NaN; the call reports how many groups were affected.
    case propagate = 0
    /// The call fails with an error naming the first offending flat index.
    case raise = 1
}

/// A quantizer is data: (format, granularity, scale rule, rounding, seed) (numerics.md §2).
/// It splits a row-major [rows, cols] tensor into groups, computes one scale per group,
/// and maps every element x to v = x / s, q = round(v), x̂ = q · s, in float32.
public struct Quantizer: Sendable {
    public var format: MiniFloatFormat
    public var granularity: Granularity
    public var scaleRule: ScaleRule
    public var rounding: Rounding
    /// Seed of the counter-based draws of stochastic rounding.
    public var seed: UInt64
    /// Stochastic rounding with r random bits (1...32) added below the kept precision, then
    /// truncation, as hardware does it; 0: exact-probability rounding (numerics.md §1).
    public var stochasticBits: Int

    public static let maxStochasticBits = 32

    public init(format: MiniFloatFormat = .e2m1, granularity: Granularity = .row,
                scaleRule: ScaleRule = .absmax, rounding: Rounding = .nearestEven, seed: UInt64 = 0,
                stochasticBits: Int = 0) {
        self.format = format
        self.granularity = granularity
        self.scaleRule = scaleRule
        self.rounding = rounding
        self.seed = seed
        self.stochasticBits = stochasticBits
    }

    /// Checks the combination before any work: scale-only formats hold no elements, and
    /// nvfp4 scales are defined for e2m1 elements only.
    public func validate() throws {
        if format.isScaleOnly {
            throw FP4Error.invalid("\(format.name) is a scale-only format and cannot hold elements")
        }
        if scaleRule.isTwoLevel && format != .e2m1 {
            throw FP4Error.invalid("the \(scaleRule.name) scale rule needs e2m1 elements, got \(format.name)")
        }
        if stochasticBits < 0 || stochasticBits > Quantizer.maxStochasticBits {
            throw FP4Error.invalid("stochastic_bits must lie in 0...\(Quantizer.maxStochasticBits) (0: exact-probability rounding), got \(stochasticBits)")
        }
        if stochasticBits != 0 && rounding != .stochastic {
            throw FP4Error.invalid("stochastic_bits = \(stochasticBits) applies to stochastic rounding only, not \(rounding.name)")
        }
        if scaleRule == .quest && format.overflow != .saturate {
            throw FP4Error.invalid("the quest scale rule clips, so it needs a saturating element format, got \(format.name)")
        }
    }
}

/// The scales of every group of one tensor, plus what the non-finite scan found.
public struct TensorScales: Sendable {
    public let layout: GroupLayout
    public var groups: [GroupScale]
    public var tensorScale: Float
    /// Groups holding NaN or ±inf (their `groups` entry is meaningless).
    public var nonFinite: [Bool]
    public var nonFiniteCount: Int
}

// MARK: - Element kernels

/// How a group's scale maps x to the grid and back.
protocol ElementScaling {
    func toGrid(_ x: Float) -> Float
    func fromGrid(_ q: Float) -> Float
}

/// v = x / s, x̂ = q · s.
struct DivideScaling: ElementScaling {
    let s: Float
    @inline(__always) func toGrid(_ x: Float) -> Float { x / s }
    @inline(__always) func fromGrid(_ q: Float) -> Float { q * s }
}

/// nvfp4: v = x · (S / sb), x̂ = (q · sb) / S.
struct TwoLevelScaling: ElementScaling {
    let ratio: Float, sb: Float, tensorScale: Float
    init(sb: Float, tensorScale: Float) {
        self.sb = sb
        self.tensorScale = tensorScale
        self.ratio = tensorScale / sb
    }
    @inline(__always) func toGrid(_ x: Float) -> Float { x * ratio }
    @inline(__always) func fromGrid(_ q: Float) -> Float { (q * sb) / tensorScale }
}

/// v = x · multiplier, x̂ = q · decode (nvfp4_torchao; the byte-0 groups of e8m0_ceil / e8m0_even).
struct MultiplyScaling: ElementScaling {
    let multiplier: Float, decode: Float
    init(_ g: GroupScale) {
        multiplier = g.multiplier
        decode = g.scale
    }
    @inline(__always) func toGrid(_ x: Float) -> Float { x * multiplier }
    @inline(__always) func fromGrid(_ q: Float) -> Float { q * decode }
}

/// Rounds one grid magnitude; a type per rounding mode so each loop is specialized.
protocol MagnitudeRounder {
    func round(_ a: Float, index: Int) -> Float
}

/// Ties to even for formats with mantissa bits (one IEEE round per element).
struct NearestEvenRounder: MagnitudeRounder {
    let grid: GridParameters
    @inline(__always) func round(_ a: Float, index: Int) -> Float { grid.roundNearestEvenMantissa(a) }
}


/// Ties to the even code for formats without mantissa bits (e3m0).
struct NearestEvenExponentRounder: MagnitudeRounder {
    let grid: GridParameters
    @inline(__always) func round(_ a: Float, index: Int) -> Float { grid.roundNearestEvenExponent(a) }
}

struct NearestAwayRounder: MagnitudeRounder {
    let grid: GridParameters
    @inline(__always) func round(_ a: Float, index: Int) -> Float { grid.roundNearestAway(a) }
}

struct StochasticRounder: MagnitudeRounder {
    let grid: GridParameters
    let key: UInt64
    @inline(__always) func round(_ a: Float, index: Int) -> Float {
        grid.roundStochastic(a, CounterRNG.uniform(key: key, index: index))
    }
}

/// Stochastic rounding with r random bits (`Quantizer.stochasticBits`): up iff
/// F + R ≥ 2^r, F = floor(frac · 2^r), R the draw's top r bits.
struct LimitedStochasticRounder: MagnitudeRounder {
    let grid: GridParameters
    let key: UInt64
    let bits: Int
    @inline(__always) func round(_ a: Float, index: Int) -> Float {
        grid.roundStochastic(a, randomBits: CounterRNG.bits(key: key, index: index, count: bits), count: bits)
    }
}

/// Calls back with the rounder of a quantizer's mode and format, as a concrete type, so
/// every kernel loop is specialized (no dynamic dispatch per element).
protocol RounderVisitor {
    associatedtype Result
    func visit<R: MagnitudeRounder>(_ rounder: R) -> Result
}

extension Quantizer {
    func withRounder<V: RounderVisitor>(_ v: V) -> V.Result {
        // Inside a quantizer every format saturates (e5m2 included), numerics.md §1.
        let grid = GridParameters(format, saturating: true)
        switch rounding {
        case .nearestEven:
            // The format's entry of the kernel table (Kernels/KernelTable.swift).
            switch FormatKernels.of(format).nearestEven {
            case .e2m1Magic: return v.visit(E2M1NearestEvenRounder())
            case .gridMantissa: return v.visit(NearestEvenRounder(grid: grid))
            case .gridExponent: return v.visit(NearestEvenExponentRounder(grid: grid))
            }
        case .nearestAway: return v.visit(NearestAwayRounder(grid: grid))
        case .stochastic:
            if stochasticBits > 0 {
                return v.visit(LimitedStochasticRounder(grid: grid, key: CounterRNG.key(seed: seed), bits: stochasticBits))
            }
            return v.visit(StochasticRounder(grid: grid, key: CounterRNG.key(seed: seed)))
        }
    }
}

/// Sign of v carried onto a magnitude (keeps −0).
@inline(__always) func withSign(of v: Float, _ m: Float) -> Float {
    Float(bitPattern: m.bitPattern | (v.bitPattern & 0x8000_0000))
}

