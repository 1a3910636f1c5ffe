/// The differentiable gradient estimator of Wang et al. (numerics.md §4).
///
/// Each quantization step [a, a+δ] is modelled by the smooth
///     f(x) = (δ/2) · (1 + sign(2x/δ − 1) · |2x/δ − 1|^(1/k)),   x = |v| − a ∈ [0, δ],
/// whose derivative f'(x) = (1/k) · |2x/δ − 1|^(1/k − 1), clamped to at most C, replaces
/// the straight-through estimator's 1 in the weight gradient. Intervals come from the
/// format's grid: half-open [a, a+δ), except the last, which is closed [g₆, max];
/// |v| > max gives 0.
public struct DGE: Sendable {
    public let format: MiniFloatFormat
    public let k: Float
    public let clamp: Float
    /// The per-element arithmetic, in a struct of plain floats so loops over it vectorize.
    let kernel: DGEKernel

    public init(format: MiniFloatFormat = .e2m1, k: Float = 5, clamp: Float = 3) throws {
        guard format.isFP4 else { throw FP4Error.invalid("DGE is defined for FP4 grids (e2m1, e1m2, e3m0), got \(format.name)") }
        guard k > 0, k.isFinite else { throw FP4Error.invalid("DGE needs k > 0, got \(k)") }
        guard clamp > 0, !clamp.isNaN else { throw FP4Error.invalid("DGE needs a positive clamp, got \(clamp)") }
        self.format = format
        self.k = k
        self.clamp = clamp
        let g = ElementCodec.of(format).decodeTable
        let exponent = 1 / k - 1
        kernel = DGEKernel(
            grid: GridParameters(format), k: k, clamp: clamp, exponent: exponent,
            lastInterval: g[format.maxFiniteMagnitudeCode] - g[format.maxFiniteMagnitudeCode - 1],
            atMidpoint: exponent < 0 ? clamp : (exponent == 0 ? Swift.min(1 / k, clamp) : 0))
    }

    /// f'(v): the DGE derivative for a value v on the grid scale (v = W / s_w).
    public func derivative(_ v: Float) -> Float { kernel.derivative(v) }

    /// The smooth surrogate f applied to v: sign(v) · (a + f(|v| − a)); |v| > max saturates.
    public func surrogate(_ v: Float) -> Float { kernel.surrogate(v) }

    /// out[i] = f'(v[i]) for a buffer.
    public func derivatives(_ v: UnsafePointer<Float>, count: Int, into out: UnsafeMutablePointer<Float>) {
        // The loop lives in a function of its own: written inline in the closure, it read the
        // kernel's constants from the closure context on every element (a store to out[i]
        // might change them), so LLVM kept it scalar and branchy: 8x the CPU time.
        let kern = kernel
        Parallel.forChunks(count: count, grain: Parallel.grain(count: count, minItems: 1 << 15)) { range in
            kern.derivatives(v + range.lowerBound, into: out + range.lowerBound, count: range.count)
        }
    }

    /// g ⊙= f'(W / s_w) over a weight gradient, group by group (row-major [rows, cols] with
    /// the layout of `scales`), v computed exactly as the quantizer computes it. With
    /// `clampToRange`, |v| counts as at most fmax (the scale rule cannot clip; see
    /// ScaleRule.neverClips), so a group's largest weight keeps its gradient. An all-zero
    /// weight group sits at v = 0, a grid point: f' = 1/k. Parallel over rows; every element
    /// is computed alone, so the result does not depend on the thread count. `twoLevel`: the
    /// weight quantizer's rule divides by a tensor scale (nvfp4): v = w · (S / sb), its own order.
    public func scaleGradient(_ g: UnsafeMutablePointer<Float>, weight w: UnsafePointer<Float>, scales ts: TensorScales,
                              clampToRange: Bool, twoLevel: Bool = false) {
        let L = ts.layout, kern = kernel
        guard L.count > 0 else { return }
        ts.groups.withUnsafeBufferPointer { gs in
            guard let gp = gs.baseAddress else { return }
            let grain = Parallel.grain(count: L.rows, minItems: Swift.max(1, 16384 / Swift.max(1, L.cols)))
            Parallel.forChunks(count: L.rows, grain: grain) { rows in
                kern.scaleGradientRows(g, w, L, gp, rows, clampToRange: clampToRange, twoLevel: twoLevel)
            }
        }
    }
}

/// DGE arithmetic on plain values (no references), so element loops vectorize.
struct DGEKernel {
    let grid: GridParameters
    let k: Float
    let clamp: Float
    let exponent: Float  // 1/k − 1
    let lastInterval: Float  // δ of the interval ending at max
    let atMidpoint: Float  // f' at t = 0: C when 1/k − 1 < 0, min(1/k, C) when k = 1, 0 when k < 1

    /// Interval of |v| on the grid: (left end a, width δ), with max in the closed last interval.
    @inline(__always)
    func interval(_ a: Float) -> (lo: Float, delta: Float) {
        let e = grid.binade(a)
        let delta = grid.toValue(e)
        let lo = (a * grid.toUnits(e)).rounded(.down) * delta
        let atMax = a >= grid.maxValue
        return (atMax ? grid.maxValue - lastInterval : lo, atMax ? lastInterval : delta)
    }

    @inline(__always)
    func derivative(_ v: Float) -> Float {
        DGEKernel.derivative(v, fmax: grid.maxValue, manBits: grid.manBits, minExponent: grid.minExponent, k: k,
                             clamp: clamp, exponent: exponent, lastInterval: lastInterval, atMidpoint: atMidpoint)
    }

    /// f'(v) from the kernel's constants as plain scalars. Loops call this with constants
    /// read into locals first: DGEKernel is large enough to be passed by address, and a loop
    /// that reads its fields through that address (which a store to the output might
    /// change, as far as LLVM knows) stays scalar and branchy. That was the 8x slowdown of
    /// the DGE loop under Parallel.forChunks: the kernel then lived in the closure context.
    @inline(__always)
    static func derivative(_ v: Float, fmax: Float, manBits: Int32, minExponent: Int32, k: Float, clamp: Float,
                           exponent: Float, lastInterval: Float, atMidpoint: Float) -> Float {
        let a = abs(v)
        let m = Swift.min(a, fmax)
        // interval(m): binade e, quantum δ = 2^(e − manBits), left end floor(m / δ)·δ.
        let e = Swift.max(Int32(bitPattern: m.bitPattern >> 23) &- 127, minExponent)
        let quantum = Float(bitPattern: UInt32(bitPattern: 127 &- manBits &+ e) << 23)
        let units = Float(bitPattern: UInt32(bitPattern: 127 &+ manBits &- e) << 23)
        let atMax = m >= fmax
        let lo = atMax ? fmax - lastInterval : (m * units).rounded(.down) * quantum
        let delta = atMax ? lastInterval : quantum
        let t = abs(2 * (m - lo) / delta - 1)
        // (1/k)·|t|^(1/k − 1), clamped; t = 0 (interval midpoint) is taken separately.
        let d = Swift.min(exp2Approx(exponent * log2Approx(t)) / k, clamp)
        // NaN in, NaN out (numerics.md §4): the bit tricks above would turn it into a number.
        return a > fmax ? 0 : (t == 0 ? atMidpoint : (a.isNaN ? v : d))
    }

    func surrogate(_ v: Float) -> Float {
        let a = Swift.min(abs(v), grid.maxValue)
        let (lo, delta) = interval(a)
        let t = 2 * (a - lo) / delta - 1
        let p = t == 0 ? 0 : exp2Approx(log2Approx(abs(t)) / k)
        let f = (delta / 2) * (1 + (t < 0 ? -p : p))
        return v.isNaN ? v : withSign(of: v, lo + f)
    }

    /// out[i] = f'(v[i]) for i in 0..<n (constants read into locals first: see `derivative`).
    func derivatives(_ v: UnsafePointer<Float>, into out: UnsafeMutablePointer<Float>, count n: Int) {
        let fmax = grid.maxValue, mb = grid.manBits, me = grid.minExponent, k = k, c = clamp
        let ex = exponent, last = lastInterval, mid = atMidpoint
        for i in 0..<n {
            out[i] = DGEKernel.derivative(v[i], fmax: fmax, manBits: mb, minExponent: me, k: k, clamp: c,
                                          exponent: ex, lastInterval: last, atMidpoint: mid)
        }
    }

    /// `DGE.scaleGradient` on the rows `rows`.
    func scaleGradientRows(_ g: UnsafeMutablePointer<Float>, _ w: UnsafePointer<Float>, _ L: GroupLayout,
                           _ gs: UnsafePointer<GroupScale>, _ rows: Range<Int>, clampToRange: Bool, twoLevel: Bool) {
        let atZero = derivative(0)
        for r in rows {
            let gbase = (r / L.groupRows) * L.tileCols
            for j in 0..<L.tileCols {
                let start = r * L.cols + j * L.groupCols
                let s = gs[gbase + j]
                if s.isZero {
                    let gr = g + start
                    for i in 0..<L.groupCols { gr[i] *= atZero }
                } else if twoLevel {
                    // v = w · (S / sb), as the nvfp4 quantizer computes it (TwoLevelScaling).
                    scaleGradientMultiplying(g, w, start..<(start + L.groupCols), ratio: s.tensorScale / s.scale,
                                             clampToRange: clampToRange)
                } else if s.multiplier != 0 {
                    // Groups that encode by multiplying (nvfp4_torchao, e8m0 byte-0 groups): v = w · multiplier.
                    scaleGradientMultiplying(g, w, start..<(start + L.groupCols), ratio: s.multiplier,
                                             clampToRange: clampToRange)
                } else {
                    scaleGradient(g, w, start..<(start + L.groupCols), scale: s.scale, clampToRange: clampToRange)
                }
            }
        }
    }

    /// g[i] *= f'(w[i] / s) over one scale group, v = w / s computed exactly as the quantizer
    /// does; with `clampToRange`, |v| is first limited to the grid's max.
    @inline(__always)
    func scaleGradient(_ g: UnsafeMutablePointer<Float>, _ w: UnsafePointer<Float>, _ range: Range<Int>, scale s: Float,
                       clampToRange: Bool) {
        let limit = clampToRange ? grid.maxValue : .infinity
        let fmax = grid.maxValue, mb = grid.manBits, me = grid.minExponent, k = k, c = clamp
        let ex = exponent, last = lastInterval, mid = atMidpoint
        for i in range {
            g[i] *= DGEKernel.derivative(Swift.min(Swift.max(w[i] / s, -limit), limit), fmax: fmax, manBits: mb,
                                         minExponent: me, k: k, clamp: c, exponent: ex, lastInterval: last, atMidpoint: mid)
        }
    }
}

extension DGEKernel {
    /// `scaleGradient` for groups that encode by multiplying: v = w · ratio (nvfp4: S / sb;
    /// nvfp4_torchao and e8m0 byte-0 groups: their multiplier).
    @inline(__always)
    func scaleGradientMultiplying(_ g: UnsafeMutablePointer<Float>, _ w: UnsafePointer<Float>, _ range: Range<Int>,
                               ratio: Float, clampToRange: Bool) {
        let limit = clampToRange ? grid.maxValue : .infinity
        let fmax = grid.maxValue, mb = grid.manBits, me = grid.minExponent, k = k, c = clamp
        let ex = exponent, last = lastInterval, mid = atMidpoint
        for i in range {
            g[i] *= DGEKernel.derivative(Swift.min(Swift.max(w[i] * ratio, -limit), limit), fmax: fmax, manBits: mb,
                                         minExponent: me, k: k, clamp: c, exponent: ex, lastInterval: last, atMidpoint: mid)
        }
    }
}

// MARK: - Vectorizable log2 / exp2 (branch-free, float32, ~1e-7 relative error)

/// log2(x) for x > 0 (float32 normals and subnormals); −inf at 0. Splits x = m·2^e with
/// m ∈ [√½, √2) and sums log(m) = 2·atanh((m−1)/(m+1)) to the f¹¹ term (|f| ≤ 0.172).
@inlinable @inline(__always)
public func log2Approx(_ x0: Float) -> Float {
    // Scale subnormals into the normal range first (exact).
    let sub = x0 < 0x1p-126
    let x = sub ? x0 * 0x1p64 : x0
    let bits = x.bitPattern
    var e = Int32(bitPattern: bits >> 23) &- 127
    var m = Float(bitPattern: (bits & 0x007F_FFFF) | 0x3F80_0000)  // [1, 2)
    let big = m > 1.41421356
    m = big ? m * 0.5 : m
    e = big ? e &+ 1 : e
    let f: Float = (m - 1) / (m + 1)
    let f2: Float = f * f
    // Horner form, one typed step at a time (long literal chains make the type checker crawl).
    var series: Float = 1.0 / 11
    series = series * f2 + 1.0 / 9
    series = series * f2 + 1.0 / 7
    series = series * f2 + 1.0 / 5
    series = series * f2 + 1.0 / 3
    series = series * f2 + 1
    let lnm: Float = 2 * f * series
    let exponent: Float = Float(e) - (sub ? 64 : 0)
    let r: Float = exponent + lnm * 1.44269504088896
    return x0 == 0 ? -.infinity : r
}

/// 2^y for y in about [−126, 127]; +inf above, 0 below. 2^y = 2^n · e^(r·ln2),
/// n = round(y), |r| ≤ ½, Taylor series to r⁷ (error < 1e-8 relative).
@inlinable @inline(__always)
public func exp2Approx(_ y0: Float) -> Float {
    let y = Swift.min(Swift.max(y0, -126), 127)
    let n = y.rounded(.toNearestOrEven)
    let r: Float = (y - n) * 0.693147180559945
    var p: Float = 1.0 / 5040
    p = p * r + 1.0 / 720
    p = p * r + 1.0 / 120
    p = p * r + 1.0 / 24
    p = p * r + 1.0 / 6
    p = p * r + 0.5
    p = p * r + 1
    p = p * r + 1
    let scale = Float(bitPattern: UInt32(bitPattern: (smallIntegerSigned(n) &+ 127) << 23))
    return y0 > 127 ? .infinity : (y0 < -126 ? 0 : p * scale)
}

/// An integer-valued Float in [−2^22, 2^22] as Int32 without a trapping conversion.
@inlinable @inline(__always)
func smallIntegerSigned(_ f: Float) -> Int32 {
    Int32(bitPattern: (f + 0x1.8p23).bitPattern & 0x7F_FFFF) &- 0x40_0000
}
