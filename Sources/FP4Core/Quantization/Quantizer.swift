#if arch(x86_64)
import _Builtin_intrinsics.intel
#endif
import Synchronization

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

/// `NearestEvenRounder` for e2m1, in fewer operations (same bits): a = min(a0, 6) is rounded
/// to a multiple of its binade's quantum 2^(e − 1), e = max(floor(log2 a), 0), by adding and
/// subtracting 2^(e + 22) (the IEEE add rounds ties to even at exactly that bit; the
/// subtraction is exact). Loops over it vectorize with a few constants.
struct E2M1NearestEvenRounder: MagnitudeRounder {
    @inline(__always) func round(_ a0: Float, index: Int) -> Float {
        let a = Swift.min(a0, 6)
        let e = Int32(bitPattern: a.bitPattern & 0x7F80_0000) &- 0x3F80_0000
        let magic = Float(bitPattern: UInt32(bitPattern: (e & ~(e &>> 31)) &+ 0x4A80_0000))
        return (a + magic) - magic
    }
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
            if format == .e2m1 { return v.visit(E2M1NearestEvenRounder()) }
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
    /// under `.raise`. `out` may be `x` itself.
    @discardableResult
    public func fakeQuantize(_ x: UnsafePointer<Float>, rows: Int, cols: Int,
                             into out: UnsafeMutablePointer<Float>,
                             nonFinite policy: NonFinitePolicy = .propagate) throws -> Int {
        try fakeQuantizeReturningScales(x, rows: rows, cols: cols, into: out, nonFinite: policy).nonFiniteCount
    }

    /// `fakeQuantize` that also hands back the group scales (the DGE of the weight
    /// gradient needs v = W / s with the very scales the forward used).
    ///
    /// Groups that lie within one row under a scale rule that needs only the group's amax
    /// (row, block; every rule but nvfp4 and quest) take one sweep over the rows: a row's
    /// amax pass pulls it into cache and the element pass reads it from there, so x is read
    /// from memory once. Other layouts take a scale pass over the tensor, then the element
    /// pass. Both give the same bits. Under `.raise` with non-finite input, `out` is left
    /// unspecified (untouched when it overlaps x).
    public func fakeQuantizeReturningScales(_ x: UnsafePointer<Float>, rows: Int, cols: Int,
                                            into out: UnsafeMutablePointer<Float>,
                                            nonFinite policy: NonFinitePolicy = .propagate) throws -> TensorScales {
        try validate()
        let L = try granularity.layout(rows: rows, cols: cols)
        let overlaps = UnsafeRawPointer(out) < UnsafeRawPointer(x + L.count) && UnsafeRawPointer(x) < UnsafeRawPointer(out + L.count)
        if L.groupRows == 1 && scaleRule != .nvfp4 && scaleRule != .quest && !(policy == .raise && overlaps) {
            var ts = TensorScales(layout: L, groups: [], tensorScale: 1, nonFinite: [], nonFiniteCount: 0)
            ts.groups = [GroupScale](repeating: GroupScale(scale: 1, tensorScale: 1, byte: 0, isZero: true), count: L.groupCount)
            ts.nonFinite = [Bool](repeating: false, count: L.groupCount)
            let rule = scaleRule, fmt = format
            ts.groups.withUnsafeMutableBufferPointer { gp in
                ts.nonFinite.withUnsafeMutableBufferPointer { bp in
                    guard let g = gp.baseAddress, let b = bp.baseAddress else { return }
                    withRounder(FusedRun(x: x, out: out, layout: L, rule: rule, format: fmt, groups: g, bad: b))
                }
            }
            for flag in ts.nonFinite where flag { ts.nonFiniteCount += 1 }
            if ts.nonFiniteCount > 0 && policy == .raise {
                let i = Quantizer.firstNonFiniteIndex(x, count: L.count)
                throw FP4Error(.nonFinite, "non-finite value (\(x[i])) at flat index \(i)")
            }
            return ts
        }
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

    struct FusedRun: RounderVisitor {
        let x: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>, layout: GroupLayout
        let rule: ScaleRule, format: MiniFloatFormat
        let groups: UnsafeMutablePointer<GroupScale>, bad: UnsafeMutablePointer<Bool>
        func visit<R: MagnitudeRounder>(_ rounder: R) {
            Quantizer.fakeQuantizeFusedRows(x, out, layout, rule, format, groups, bad, rounder)
        }
    }

    /// Floats of the per-worker output tile (16 KB: stays in L1 next to the row being read).
    static let tileFloats = 4096
    /// Outputs of at least this many elements (32 MB, the L3 size of the machines measured)
    /// are written with non-temporal stores: they cannot stay cached anyway, and streaming
    /// skips the read-for-ownership of every output line.
    nonisolated(unsafe) static var streamingMinElements = 1 << 23

    /// One sweep over rows whose groups lie within the row (groupRows == 1): per row, the
    /// group amaxima, the scales (as `scales(of:)` computes them), then the elements.
    static func fakeQuantizeFusedRows<R: MagnitudeRounder>(
        _ x: UnsafePointer<Float>, _ out: UnsafeMutablePointer<Float>, _ L: GroupLayout, _ rule: ScaleRule,
        _ format: MiniFloatFormat, _ groups: UnsafeMutablePointer<GroupScale>, _ bad: UnsafeMutablePointer<Bool>, _ rounder: R
    ) {
        let tc = L.tileCols, gc = L.groupCols, cols = L.cols
        let stream = L.count >= streamingMinElements
        let grain = Parallel.grain(count: L.rows, minItems: Swift.max(1, 8192 / Swift.max(1, cols)))
        // Rows of 96+ floats take the pipelined loop (measured with the e2m1 rounder: 1.2x
        // at 2048 x 96 and x 128; at 64 columns the per-row bookkeeping makes it slower).
        if tc == 1 && cols >= 96 {
            Parallel.forChunks(count: L.rows, grain: grain) { rowRange in
                pipelinedRows(x, out, cols, rowRange, rule, format, groups, bad, stream, rounder)
            }
            return
        }
        Parallel.forChunks(count: L.rows, grain: grain) { rowRange in
            var writer = TileWriter(out: out, stream: stream)
            let amax = UnsafeMutablePointer<UInt32>.allocate(capacity: Swift.max(tc, 1))
            defer { amax.deallocate(); writer.finish() }
            for r in rowRange {
                amax.update(repeating: 0, count: tc)
                rowAmax(x + r * cols, L, amax)
                writer.begin(at: r * cols)
                for j in 0..<tc {
                    let g = r * tc + j, start = r * cols + j * gc
                    if amax[j] >= 0x7F80_0000 {
                        bad[g] = true
                        writer.emit(x, start, gc, GroupScale(scale: 1, tensorScale: 1, byte: 0, isZero: true), bad: true, rounder)
                    } else {
                        let s = rule.groupScale(amax: Float(bitPattern: amax[j]), format: format, tensorScale: 1)
                        groups[g] = s
                        writer.emit(x, start, gc, s, bad: false, rounder)
                    }
                }
                writer.flush()
            }
        }
    }

    /// One scale per row: while row r is quantized (from cache), the same loop reads row r + 1
    /// for its amax, so the reads from memory never pause for the element pass.
    static func pipelinedRows<R: MagnitudeRounder>(
        _ x: UnsafePointer<Float>, _ out: UnsafeMutablePointer<Float>, _ cols: Int, _ rows: Range<Int>, _ rule: ScaleRule,
        _ format: MiniFloatFormat, _ groups: UnsafeMutablePointer<GroupScale>, _ bad: UnsafeMutablePointer<Bool>,
        _ stream: Bool, _ rounder: R
    ) {
        var writer = TileWriter(out: out, stream: stream)
        defer { writer.finish() }
        var amax = rowAmaxBits(x + rows.lowerBound * cols, cols)
        for r in rows {
            let start = r * cols
            let next: UnsafePointer<Float>? = r + 1 < rows.upperBound ? x + start + cols : nil
            writer.begin(at: start)
            var s = GroupScale(scale: 1, tensorScale: 1, byte: 0, isZero: true)
            let isBad = amax >= 0x7F80_0000
            if isBad {
                bad[r] = true
            } else {
                s = rule.groupScale(amax: Float(bitPattern: amax), format: format, tensorScale: 1)
                groups[r] = s
            }
            if isBad || s.isZero || next == nil {
                writer.emit(x, start, cols, s, bad: isBad, rounder)
                writer.flush()
                if let next { amax = rowAmaxBits(next, cols) }
                continue
            }
            var m: UInt32 = 0, a = start, left = cols
            let ahead = next! - start
            let scaling = DivideScaling(s: s.scale)
            while left > 0 {
                let n = Swift.min(left, Quantizer.tileFloats - writer.filled)
                m = Swift.max(m, fakeQuantizeRunAhead(x, writer.tile + writer.filled, a, n, scaling, rounder, ahead + a))
                writer.filled += n
                a += n
                left -= n
                if writer.filled == Quantizer.tileFloats { writer.flush() }
            }
            writer.flush()
            amax = m
        }
    }

    /// max |x[i]| over a row, as bits.
    @inline(__always)
    static func rowAmaxBits(_ row: UnsafePointer<Float>, _ n: Int) -> UInt32 {
        var m: UInt32 = 0
        for i in 0..<n { m = Swift.max(m, row[i].bitPattern & 0x7FFF_FFFF) }
        return m
    }

    /// `fakeQuantizeRun` that also returns the amax bits of ahead[0 ..< n].
    @inline(__always)
    static func fakeQuantizeRunAhead<S: ElementScaling, R: MagnitudeRounder>(
        _ x: UnsafePointer<Float>, _ dst: UnsafeMutablePointer<Float>, _ start: Int, _ n: Int, _ scaling: S, _ rounder: R,
        _ ahead: UnsafePointer<Float>
    ) -> UInt32 {
        let src = x + start
        var m: UInt32 = 0
        for i in 0..<n {
            let v = scaling.toGrid(src[i])
            dst[i] = scaling.fromGrid(withSign(of: v, rounder.round(abs(v), index: start &+ i)))
            m = Swift.max(m, ahead[i].bitPattern & 0x7FFF_FFFF)
        }
        return m
    }

    static func fakeQuantizeRows<R: MagnitudeRounder>(_ x: UnsafePointer<Float>, _ out: UnsafeMutablePointer<Float>,
                                                     _ ts: TensorScales, _ twoLevel: Bool, _ rounder: R) {
        let L = ts.layout
        let stream = L.count >= streamingMinElements
        ts.groups.withUnsafeBufferPointer { gs in
            ts.nonFinite.withUnsafeBufferPointer { bad in
                let grain = Parallel.grain(count: L.rows, minItems: Swift.max(1, 8192 / Swift.max(1, L.cols)))
                Parallel.forChunks(count: L.rows, grain: grain) { rowRange in
                    var writer = TileWriter(out: out, stream: stream)
                    defer { writer.finish() }
                    for r in rowRange {
                        writer.begin(at: r * L.cols)
                        let gbase = (r / L.groupRows) * L.tileCols
                        for j in 0..<L.tileCols {
                            let g = gbase + j
                            let start = r * L.cols + j * L.groupCols
                            if twoLevel && !bad[g] && !gs[g].isZero {
                                writer.emitTwoLevel(x, start, L.groupCols, gs[g], rounder)
                            } else {
                                writer.emit(x, start, L.groupCols, gs[g], bad: bad[g], rounder)
                            }
                        }
                        writer.flush()
                    }
                }
            }
        }
    }

    /// Element pass of one group's run x[start ..< start + n] into `dst` (n elements), by a
    /// loop that reads only x and writes only dst, so it vectorizes even when `out` is `x`.
    @inline(__always)
    static func fakeQuantizeRun<S: ElementScaling, R: MagnitudeRounder>(
        _ x: UnsafePointer<Float>, _ dst: UnsafeMutablePointer<Float>, _ start: Int, _ n: Int, _ scaling: S, _ rounder: R
    ) {
        let src = x + start
        for i in 0..<n {
            let v = scaling.toGrid(src[i])
            dst[i] = scaling.fromGrid(withSign(of: v, rounder.round(abs(v), index: start &+ i)))
        }
    }
}

/// Collects a row's outputs in a small private tile, then copies the tile to the output
/// (non-temporal stores when `stream`). The element loops thus never write where they read,
/// so in-place calls (out == x) take the same vector code as out-of-place ones.
struct TileWriter {
    let out: UnsafeMutablePointer<Float>
    let stream: Bool
    let tile: UnsafeMutablePointer<Float>
    /// Flat index of tile[0], and how many tile entries are filled.
    var base = 0
    var filled = 0

    init(out: UnsafeMutablePointer<Float>, stream: Bool) {
        self.out = out
        self.stream = stream
        tile = .allocate(capacity: Quantizer.tileFloats)
    }

    /// Starts a contiguous run of outputs at flat index `index` (after a `flush`).
    @inline(__always) mutating func begin(at index: Int) {
        base = index
        filled = 0
    }

    /// Writes the tile out and moves the run on past it.
    @inline(__always) mutating func flush() {
        guard filled > 0 else { return }
        TileWriter.store(tile, out + base, filled, stream)
        base += filled
        filled = 0
    }

    /// Elements x[start ..< start + n] of one group with scale s (NaN when `bad`; signed
    /// zeros for a zero group); `start` must continue the current run.
    @inline(__always)
    mutating func emit<R: MagnitudeRounder>(_ x: UnsafePointer<Float>, _ start: Int, _ n: Int, _ s: GroupScale,
                                            bad: Bool, _ rounder: R) {
        var a = start, left = n
        while left > 0 {
            let m = Swift.min(left, Quantizer.tileFloats - filled)
            let dst = tile + filled, src = x + a
            if bad {
                dst.update(repeating: .nan, count: m)
            } else if s.isZero {
                for i in 0..<m { dst[i] = src[i] * 0 }  // signed zeros
            } else {
                Quantizer.fakeQuantizeRun(x, dst, a, m, DivideScaling(s: s.scale), rounder)
            }
            filled += m
            a += m
            left -= m
            if filled == Quantizer.tileFloats { flush() }
        }
    }

    /// `emit` for an nvfp4 group (finite, non-zero).
    @inline(__always)
    mutating func emitTwoLevel<R: MagnitudeRounder>(_ x: UnsafePointer<Float>, _ start: Int, _ n: Int, _ s: GroupScale, _ rounder: R) {
        var a = start, left = n
        let scaling = TwoLevelScaling(sb: s.scale, tensorScale: s.tensorScale)
        while left > 0 {
            let m = Swift.min(left, Quantizer.tileFloats - filled)
            Quantizer.fakeQuantizeRun(x, tile + filled, a, m, scaling, rounder)
            filled += m
            a += m
            left -= m
            if filled == Quantizer.tileFloats { flush() }
        }
    }

    /// Flushes and releases the tile; after non-temporal stores, a fence orders them before
    /// whatever the worker does next (the join of the parallel loop, a read of `out`).
    mutating func finish() {
        flush()
        tile.deallocate()
        if stream { atomicMemoryFence(ordering: .sequentiallyConsistent) }
    }

    /// dst[0 ..< n] = src[0 ..< n]; with `stream`, 16-byte aligned quads go out as
    /// non-temporal stores (x86-64; elsewhere a plain copy).
    @inline(__always)
    static func store(_ src: UnsafePointer<Float>, _ dst: UnsafeMutablePointer<Float>, _ n: Int, _ stream: Bool) {
        #if arch(x86_64)
        let mis = Int(bitPattern: dst) & 15
        if stream && mis & 3 == 0 {
            let head = Swift.min(((16 - mis) & 15) >> 2, n)
            var i = 0
            while i < head { dst[i] = src[i]; i += 1 }
            while i + 4 <= n {
                _mm_stream_ps(dst + i, UnsafeRawPointer(src + i).loadUnaligned(as: SIMD4<Float>.self))
                i += 4
            }
            while i < n { dst[i] = src[i]; i += 1 }
            return
        }
        #endif
        dst.update(from: src, count: n)
    }
}

// MARK: - Codes of an OCC-clamped input

/// A CSR residual (OCC outliers) of a [rows, cols] tensor: row r's entries are
/// indices/values[indptr[r] ..< indptr[r + 1]]; out-of-range column indices are skipped,
/// like `OCC.scatterAdd`.
public struct CSRResidual {
    public var indptr: UnsafePointer<Int64>
    public var indices: UnsafePointer<Int32>
    public var values: UnsafePointer<Float>

    public init(indptr: UnsafePointer<Int64>, indices: UnsafePointer<Int32>, values: UnsafePointer<Float>) {
        self.indptr = indptr
        self.indices = indices
        self.values = values
    }

    /// row[c] += v for each entry (r, c, v) of row r, in entry order (`OCC.scatterAdd` of
    /// one row: the same additions).
    @inline(__always)
    func add(row r: Int, into row: UnsafeMutablePointer<Float>, cols: Int) {
        let a = Int(indptr[r]), b = Int(indptr[r + 1])
        guard b > a else { return }
        for k in a..<b {
            let c = Int(indices[k])
            guard c >= 0 && c < cols else { continue }
            row[c] += values[k]
        }
    }
}

extension Quantizer {
    /// `quantize(_:rows:cols:codes:dequantized:)` of the OCC-clamped input X_c (spec §5),
    /// without a float32 copy of X_c: each row is clamped into a private tile, and its scales
    /// and codes come from there. `thresholds` holds one pair, or one per row when `perRow`;
    /// `minMax` picks the clamp expression min(max(x, lo), hi), else the one of
    /// `OCC.clampAndResidual` (x < lo ? lo : x > hi ? hi : x); they differ only in the sign of
    /// a zero at a zero threshold, and each caller keeps the one it used before.
    /// Returns nil (nothing written) unless groups lie within rows under a scale rule that
    /// needs only the group's amax; the caller then clamps into a buffer and calls `quantize`.
    /// Whether `quantizeClamped` handles a [rows, cols] input (groups within rows, a scale
    /// rule that needs only the group's amax).
    public func clampsWhileQuantizing(rows: Int, cols: Int) -> Bool {
        guard let L = try? granularity.layout(rows: rows, cols: cols) else { return false }
        return L.groupRows == 1 && scaleRule != .nvfp4 && scaleRule != .quest
    }

    ///
    /// `residual`, when given with `dequantized`, is added into x̂ row by row right after the
    /// row is written (the same additions as `OCC.scatterAdd` on x̂ afterwards, while the row
    /// is still in cache); ignored without `dequantized`.
    public func quantizeClamped(_ x: UnsafePointer<Float>, rows: Int, cols: Int, thresholds: [OCCThresholds], perRow: Bool,
                                minMax: Bool, codes: UnsafeMutablePointer<UInt8>,
                                dequantized: UnsafeMutablePointer<Float>?,
                                residual: CSRResidual? = nil) throws -> TensorScales? {
        try validate()
        guard clampsWhileQuantizing(rows: rows, cols: cols) else { return nil }
        let L = try granularity.layout(rows: rows, cols: cols)
        var ts = TensorScales(layout: L, groups: [GroupScale](repeating: GroupScale(scale: 1, tensorScale: 1, byte: 0, isZero: true),
                                                              count: L.groupCount),
                              tensorScale: 1, nonFinite: [Bool](repeating: false, count: L.groupCount), nonFiniteCount: 0)
        guard L.count > 0 else { return ts }
        guard thresholds.count >= (perRow ? rows : 1) else {
            throw FP4Error.invalid("OCC needs 1 threshold pair or one per row (\(rows)), got \(thresholds.count)")
        }
        let enc = CodeWriter(grid: GridParameters(format), signBit: UInt8(format.signBit),
                             infCode: Int32(format.infMagnitudeCode ?? format.maxFiniteMagnitudeCode))
        let perRowTh = perRow && thresholds.count > 1
        ts.groups.withUnsafeMutableBufferPointer { gp in
            ts.nonFinite.withUnsafeMutableBufferPointer { bp in
                thresholds.withUnsafeBufferPointer { tb in
                    withRounder(ClampedRun(q: self, x: x, layout: L, th: tb.baseAddress!, perRow: perRowTh, minMax: minMax,
                                           codes: codes, fake: dequantized, enc: enc,
                                           fp4: rounding == .nearestEven ? FP4NearestEven(format) : nil,
                                           groups: gp.baseAddress!, bad: bp.baseAddress!, residual: residual))
                }
            }
        }
        for flag in ts.nonFinite where flag { ts.nonFiniteCount += 1 }
        if ts.nonFiniteCount > 0 {
            let i = Quantizer.firstNonFiniteIndex(x, count: L.count)
            throw FP4Error(.nonFinite, "cannot quantize a non-finite value (\(i >= 0 ? x[i] : .nan)) at flat index \(i)")
        }
        return ts
    }

    struct ClampedRun: RounderVisitor {
        let q: Quantizer, x: UnsafePointer<Float>, layout: GroupLayout, th: UnsafePointer<OCCThresholds>, perRow: Bool
        let minMax: Bool, codes: UnsafeMutablePointer<UInt8>, fake: UnsafeMutablePointer<Float>?, enc: CodeWriter
        /// Set for FP4 nearest-even: codes go straight into packed bytes (no scratch, no packing pass).
        let fp4: FP4NearestEven?
        let groups: UnsafeMutablePointer<GroupScale>, bad: UnsafeMutablePointer<Bool>
        let residual: CSRResidual?
        func visit<R: MagnitudeRounder>(_ rounder: R) {
            let L = layout, cols = L.cols, tc = L.tileCols, gc = L.groupCols
            let residual = fake == nil ? nil : residual
            let packed = q.format.isFP4, rule = q.scaleRule, fmt = q.format
            let x = x, th = th, perRow = perRow, minMax = minMax, codes = codes, fake = fake, enc = enc, fp4 = fp4
            let direct = fp4 != nil
            let groups = groups, bad = bad
            // Chunks start at an even flat index so no two chunks share a packed byte.
            var grain = Parallel.grain(count: L.rows, minItems: Swift.max(1, 8192 / Swift.max(1, cols)))
            if packed && cols % 2 == 1 && grain % 2 == 1 { grain += 1 }
            Parallel.forChunks(count: L.rows, grain: grain) { rowRange in
                let first = rowRange.lowerBound * cols, n = rowRange.count * cols
                let useScratch = packed && !direct
                let scratch = useScratch ? UnsafeMutablePointer<UInt8>.allocate(capacity: Swift.max(n, 1)) : codes + first
                let tile = UnsafeMutablePointer<Float>.allocate(capacity: cols)
                let amax = UnsafeMutablePointer<UInt32>.allocate(capacity: Swift.max(tc, 1))
                defer {
                    if useScratch { scratch.deallocate() }
                    tile.deallocate()
                    amax.deallocate()
                }
                for r in rowRange {
                    let t = th[perRow ? r : 0]
                    if tc == 1 {
                        amax[0] = Quantizer.clampRowAmax(x + r * cols, tile, cols, t.lo, t.hi, minMax)
                    } else {
                        Quantizer.clampRow(x + r * cols, tile, cols, t.lo, t.hi, minMax)
                        amax.update(repeating: 0, count: tc)
                        Quantizer.rowAmax(UnsafePointer(tile), L, amax)
                    }
                    let rowStart = r * cols
                    // Indices below are flat; the tile holds the row's entries.
                    let src = UnsafePointer(tile) - rowStart, dst = scratch - first
                    for j in 0..<tc {
                        let g = r * tc + j, start = rowStart + j * gc, end = start + gc
                        if amax[j] >= 0x7F80_0000 {
                            bad[g] = true
                            continue
                        }
                        let s = rule.groupScale(amax: Float(bitPattern: amax[j]), format: fmt, tensorScale: 1)
                        groups[g] = s
                        if let fp4 {
                            if s.isZero {
                                Quantizer.zeroSegmentPacked(src, codes, fake, start..<end)
                            } else {
                                Quantizer.codeSegmentPackedDivide(src, codes, fake, start..<end, s.scale, fp4)
                            }
                        } else if s.isZero {
                            for i in start..<end { dst[i] = src[i].sign == .minus ? enc.signBit : 0 }
                            if let fake { for i in start..<end { fake[i] = src[i] * 0 } }
                        } else {
                            Quantizer.codeSegment(src, dst, fake, start..<end, DivideScaling(s: s.scale), rounder, enc)
                        }
                    }
                    if let residual, let fake { residual.add(row: r, into: fake + rowStart, cols: cols) }
                }
                if useScratch { packNibbles(scratch, count: n, into: codes + first / 2) }
            }
        }
    }

    /// `clampRow` that also returns max |tile[i]| as bits (`rowAmax` of a one-group row).
    @inline(__always)
    static func clampRowAmax(_ x: UnsafePointer<Float>, _ tile: UnsafeMutablePointer<Float>, _ n: Int, _ lo: Float, _ hi: Float,
                             _ minMax: Bool) -> UInt32 {
        var m: UInt32 = 0
        if minMax {
            for i in 0..<n {
                let c = Swift.min(Swift.max(x[i], lo), hi)
                tile[i] = c
                m = Swift.max(m, c.bitPattern & 0x7FFF_FFFF)
            }
        } else {
            for i in 0..<n {
                let v = x[i]
                let c = v < lo ? lo : (v > hi ? hi : v)
                tile[i] = c
                m = Swift.max(m, c.bitPattern & 0x7FFF_FFFF)
            }
        }
        return m
    }

    /// tile[i] = x[i] clamped to [lo, hi] (see `quantizeClamped` for the two expressions).
    @inline(__always)
    static func clampRow(_ x: UnsafePointer<Float>, _ tile: UnsafeMutablePointer<Float>, _ n: Int, _ lo: Float, _ hi: Float,
                         _ minMax: Bool) {
        if minMax {
            for i in 0..<n { tile[i] = Swift.min(Swift.max(x[i], lo), hi) }
        } else {
            for i in 0..<n {
                let v = x[i]
                tile[i] = v < lo ? lo : (v > hi ? hi : v)
            }
        }
    }
}
