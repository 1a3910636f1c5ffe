/// What a quantizer does with a group that holds NaN or ±inf (spec §3).
public enum NonFinitePolicy: Int, Sendable {
    /// Every output of the group is NaN; the call reports how many groups were affected.
    case propagate = 0
    /// The call fails with an error naming the first offending flat index.
    case raise = 1
}

/// A quantizer is data: (format, granularity, scale rule, rounding, seed) (spec §2).
/// It splits a row-major [rows, cols] tensor into groups, computes one scale per group,
/// and maps every element x to v = x / s, q = round(v), x̂ = q · s, in float32.
public struct Quantizer: Sendable {
    public var format: MiniFloatFormat
    public var granularity: Granularity
    public var scaleRule: ScaleRule
    public var rounding: Rounding
    /// Seed of the counter-based draws of stochastic rounding.
    public var seed: UInt64

    public init(format: MiniFloatFormat = .e2m1, granularity: Granularity = .row,
                scaleRule: ScaleRule = .absmax, rounding: Rounding = .nearestEven, seed: UInt64 = 0) {
        self.format = format
        self.granularity = granularity
        self.scaleRule = scaleRule
        self.rounding = rounding
        self.seed = seed
    }

    /// Checks the combination before any work: scale-only formats hold no elements, and
    /// nvfp4 scales are defined for e2m1 elements only.
    public func validate() throws {
        if format.isScaleOnly {
            throw FP4Error.invalid("\(format.name) is a scale-only format and cannot hold elements")
        }
        if scaleRule == .nvfp4 && format != .e2m1 {
            throw FP4Error.invalid("the nvfp4 scale rule needs e2m1 elements, got \(format.name)")
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

// MARK: - Scale pass

extension Quantizer {
    /// Absolute maxima of every group as float bit patterns (|x| bits order like |x|, and
    /// NaN/inf compare above every finite value, so one integer max finds both).
    static func groupAmaxBits(_ x: UnsafePointer<Float>, _ L: GroupLayout) -> [UInt32] {
        var amax = [UInt32](repeating: 0, count: L.groupCount)
        let tc = L.tileCols, gr = L.groupRows
        amax.withUnsafeMutableBufferPointer { a in
            guard let ap = a.baseAddress else { return }
            if gr == 1 || L.tileRows >= 2 * Parallel.threadCount {
                // Each chunk owns whole tile rows: disjoint writes.
                let grain = Parallel.grain(count: L.tileRows, minItems: Swift.max(1, 16384 / Swift.max(1, gr * L.cols)))
                Parallel.forChunks(count: L.tileRows, grain: grain) { trs in
                    for tr in trs {
                        for r in (tr * gr)..<((tr + 1) * gr) { rowAmax(x + r * L.cols, L, ap + tr * tc) }
                    }
                }
            } else {
                // Few tall tile rows (tensor, column): split their rows, keep private maxima per chunk.
                for tr in 0..<L.tileRows {
                    let grain = Parallel.grain(count: gr, minItems: Swift.max(1, 16384 / Swift.max(1, L.cols)))
                    let chunks = (gr + grain - 1) / grain
                    var partial = [UInt32](repeating: 0, count: chunks * tc)
                    partial.withUnsafeMutableBufferPointer { p in
                        guard let pp = p.baseAddress else { return }
                        Parallel.forChunks(count: gr, grain: grain) { rows in
                            let dst = pp + (rows.lowerBound / grain) * tc
                            for r in rows { rowAmax(x + (tr * gr + r) * L.cols, L, dst) }
                        }
                    }
                    for c in 0..<chunks {
                        for j in 0..<tc { ap[tr * tc + j] = Swift.max(ap[tr * tc + j], partial[c * tc + j]) }
                    }
                }
            }
        }
        return amax
    }

    /// Folds one row into the running maxima of its tile row's groups.
    @inline(__always)
    static func rowAmax(_ row: UnsafePointer<Float>, _ L: GroupLayout, _ dst: UnsafeMutablePointer<UInt32>) {
        let gc = L.groupCols
        if gc == 1 {
            for c in 0..<L.cols { dst[c] = Swift.max(dst[c], row[c].bitPattern & 0x7FFF_FFFF) }
            return
        }
        for j in 0..<L.tileCols {
            var m = dst[j]
            let seg = row + j * gc
            for c in 0..<gc { m = Swift.max(m, seg[c].bitPattern & 0x7FFF_FFFF) }
            dst[j] = m
        }
    }

    /// The scale of every group of x (row-major [rows, cols]).
    public func scales(of x: UnsafePointer<Float>, rows: Int, cols: Int) throws -> TensorScales {
        try validate()
        let L = try granularity.layout(rows: rows, cols: cols)
        let amax = Quantizer.groupAmaxBits(x, L)
        let finiteLimit: UInt32 = 0x7F80_0000
        var nonFinite = [Bool](repeating: false, count: amax.count)
        var count = 0
        var tensorAmax: UInt32 = 0
        for g in 0..<amax.count {
            if amax[g] >= finiteLimit {
                nonFinite[g] = true
                count += 1
            } else {
                tensorAmax = Swift.max(tensorAmax, amax[g])
            }
        }
        // nvfp4's S uses the finite groups only, so one bad group does not zero the rest.
        let S = scaleRule.tensorScale(tensorAmax: Float(bitPattern: tensorAmax))
        // quest: population standard deviation of every group (float64).
        let stds = scaleRule == .quest ? Quantizer.groupStds(x, L) : []
        var groups = [GroupScale](repeating: GroupScale(scale: 1, tensorScale: 1, byte: 0, isZero: true),
                                  count: amax.count)
        let rule = scaleRule, fmt = format
        groups.withUnsafeMutableBufferPointer { gp in
            guard let g = gp.baseAddress else { return }
            amax.withUnsafeBufferPointer { ap in
                Parallel.forChunks(count: ap.count, grain: Parallel.grain(count: ap.count, minItems: 4096)) { range in
                    for i in range where ap[i] < finiteLimit {
                        g[i] = rule.groupScale(amax: Float(bitPattern: ap[i]), format: fmt, tensorScale: S,
                                               std: stds.isEmpty ? 0 : stds[i])
                    }
                }
            }
        }
        return TensorScales(layout: L, groups: groups, tensorScale: S, nonFinite: nonFinite, nonFiniteCount: count)
    }

    /// Population standard deviation σ = sqrt(max(E[x²] − μ², 0)) of every group, float64
    /// sums in row-major order within the group (independent of the thread count).
    /// Non-finite groups get meaningless values (their scales are never used).
    static func groupStds(_ x: UnsafePointer<Float>, _ L: GroupLayout) -> [Double] {
        let tc = L.tileCols, gr = L.groupRows, gc = L.groupCols
        var stds = [Double](repeating: 0, count: L.groupCount)
        let n = Double(gr * gc)
        stds.withUnsafeMutableBufferPointer { sp in
            guard let out = sp.baseAddress else { return }
            let grain = Parallel.grain(count: L.tileRows, minItems: Swift.max(1, 16384 / Swift.max(1, gr * L.cols)))
            Parallel.forChunks(count: L.tileRows, grain: grain) { trs in
                var sum = [Double](repeating: 0, count: tc), sq = [Double](repeating: 0, count: tc)
                for tr in trs {
                    for j in 0..<tc { sum[j] = 0; sq[j] = 0 }
                    for r in (tr * gr)..<((tr + 1) * gr) {
                        let row = x + r * L.cols
                        for j in 0..<tc {
                            var a = sum[j], b = sq[j]
                            for c in (j * gc)..<((j + 1) * gc) {
                                let v = Double(row[c])
                                a += v
                                b += v * v
                            }
                            sum[j] = a
                            sq[j] = b
                        }
                    }
                    for j in 0..<tc {
                        let mu = sum[j] / n
                        out[tr * tc + j] = Swift.max(sq[j] / n - mu * mu, 0).squareRoot()
                    }
                }
            }
        }
        return stds
    }

    /// Flat index of the first non-finite element (for error messages).
    static func firstNonFiniteIndex(_ x: UnsafePointer<Float>, count: Int) -> Int {
        for i in 0..<count where !x[i].isFinite { return i }
        return -1
    }
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

/// Calls back with the rounder of a quantizer's mode and format, as a concrete type, so
/// every kernel loop is specialized (no dynamic dispatch per element).
protocol RounderVisitor {
    associatedtype Result
    func visit<R: MagnitudeRounder>(_ rounder: R) -> Result
}

extension Quantizer {
    func withRounder<V: RounderVisitor>(_ v: V) -> V.Result {
        let grid = GridParameters(format)
        switch rounding {
        case .nearestEven:
            return grid.manBits > 0 ? v.visit(NearestEvenRounder(grid: grid)) : v.visit(NearestEvenExponentRounder(grid: grid))
        case .nearestAway: return v.visit(NearestAwayRounder(grid: grid))
        case .stochastic: return v.visit(StochasticRounder(grid: grid, key: CounterRNG.key(seed: seed)))
        }
    }
}

/// Sign of v carried onto a magnitude (keeps −0).
@inline(__always) func withSign(of v: Float, _ m: Float) -> Float {
    Float(bitPattern: m.bitPattern | (v.bitPattern & 0x8000_0000))
}

extension Quantizer {
    /// Fake-quantizes x (float in, float out) into `out`; both row-major [rows, cols].
    /// Returns the number of groups that held non-finite values (set to NaN), or throws
    /// under `.raise`.
    @discardableResult
    public func fakeQuantize(_ x: UnsafePointer<Float>, rows: Int, cols: Int,
                             into out: UnsafeMutablePointer<Float>,
                             nonFinite policy: NonFinitePolicy = .propagate) throws -> Int {
        try fakeQuantizeReturningScales(x, rows: rows, cols: cols, into: out, nonFinite: policy).nonFiniteCount
    }

    /// `fakeQuantize` that also hands back the group scales (the DGE of the weight
    /// gradient needs v = W / s with the very scales the forward used).
    public func fakeQuantizeReturningScales(_ x: UnsafePointer<Float>, rows: Int, cols: Int,
                                            into out: UnsafeMutablePointer<Float>,
                                            nonFinite policy: NonFinitePolicy = .propagate) throws -> TensorScales {
        let ts = try scales(of: x, rows: rows, cols: cols)
        if ts.nonFiniteCount > 0 && policy == .raise {
            let i = Quantizer.firstNonFiniteIndex(x, count: rows * cols)
            throw FP4Error(.nonFinite, "non-finite value (\(x[i])) at flat index \(i)")
        }
        struct Run: RounderVisitor {
            let x: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>, ts: TensorScales, twoLevel: Bool
            func visit<R: MagnitudeRounder>(_ rounder: R) { Quantizer.fakeQuantizeRows(x, out, ts, twoLevel, rounder) }
        }
        withRounder(Run(x: x, out: out, ts: ts, twoLevel: scaleRule == .nvfp4))
        return ts
    }

    static func fakeQuantizeRows<R: MagnitudeRounder>(_ x: UnsafePointer<Float>, _ out: UnsafeMutablePointer<Float>,
                                                     _ ts: TensorScales, _ twoLevel: Bool, _ rounder: R) {
        let L = ts.layout
        ts.groups.withUnsafeBufferPointer { gs in
            ts.nonFinite.withUnsafeBufferPointer { bad in
                let grain = Parallel.grain(count: L.rows, minItems: Swift.max(1, 8192 / Swift.max(1, L.cols)))
                Parallel.forChunks(count: L.rows, grain: grain) { rowRange in
                    for r in rowRange {
                        let gbase = (r / L.groupRows) * L.tileCols
                        for j in 0..<L.tileCols {
                            let g = gbase + j, gs = gs[g]
                            let start = r * L.cols + j * L.groupCols, end = start + L.groupCols
                            if bad[g] {
                                for i in start..<end { out[i] = .nan }
                            } else if gs.isZero {
                                for i in start..<end { out[i] = x[i] * 0 }  // signed zeros
                            } else if twoLevel {
                                fakeQuantizeSegment(x, out, start..<end,
                                                    TwoLevelScaling(sb: gs.scale, tensorScale: gs.tensorScale), rounder)
                            } else {
                                fakeQuantizeSegment(x, out, start..<end, DivideScaling(s: gs.scale), rounder)
                            }
                        }
                    }
                }
            }
        }
    }

    @inline(__always)
    static func fakeQuantizeSegment<S: ElementScaling, R: MagnitudeRounder>(
        _ x: UnsafePointer<Float>, _ out: UnsafeMutablePointer<Float>, _ range: Range<Int>, _ scaling: S, _ rounder: R
    ) {
        for i in range {
            let v = scaling.toGrid(x[i])
            out[i] = scaling.fromGrid(withSign(of: v, rounder.round(abs(v), index: i)))
        }
    }
}
