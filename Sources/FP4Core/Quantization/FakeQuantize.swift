#if arch(x86_64)
import _Builtin_intrinsics.intel
#endif
import Synchronization


/// Fake quantization (float in, float out, numerics.md §2): the fused one-sweep path for
/// groups within rows, the two-pass path otherwise, and the per-worker output tile.
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
        if L.groupRows == 1 && scaleRule.needsOnlyGroupAmax && !(policy == .raise && overlaps) {
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
        withRounder(Run(x: x, out: out, ts: ts, twoLevel: scaleRule.dividesByTensorScale))
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
            if isBad || s.isZero || s.multiplier != 0 || next == nil {
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
            } else if s.multiplier != 0 {
                Quantizer.fakeQuantizeRun(x, dst, a, m, MultiplyScaling(s), rounder)
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

