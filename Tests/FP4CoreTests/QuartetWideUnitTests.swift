import XCTest
import FP4ISA
import Glibc
@testable import FP4Core

/// The AVX-512 units of Quartet's backward operands (`fp4isa_quartet_vertical_avx512` through
/// `QuartetKernels.verticalWideUnit`) against the Swift `verticalUnit`, bit for bit: codes,
/// scales, x̂ and the non-finite report, on stage tiles whose columns are drawn from the
/// awkward cases (zero and −0 groups, NaN and ±inf, sums that overflow, subnormal groups whose
/// scale underflows, wide dynamic range, exact ties of the stochastic rounding); and whole
/// operands (`gradientRows`, `verticalOperand` from each source) with the wide kernels on
/// (default path) and off (FP4SWIFT_GEMM_ISA=avx2), for widths that are not multiples of 8,
/// 16 or 32.
final class QuartetWideUnitTests: XCTestCase {

    /// Records what a `VerticalOutput` receives for the 16 columns n0 ..< n0 + 16 of one band.
    struct Recorder {
        let n0: Int, t0: Int
        /// x̂ [32][16], code words [4][16], scales [16]; NaN / 0xFFFF_FFFF where nothing was stored.
        let rows: UnsafeMutablePointer<Float>, words: UnsafeMutablePointer<UInt32>, scales: UnsafeMutablePointer<Float>
        func storeRow(_ y: SIMD8<Float>, t: Int, n0: Int, valid: Int) {
            for l in 0..<valid { rows[16 * (t - t0) + n0 - self.n0 + l] = y[l] }
        }
        func storeCodes(_ w: SIMD8<UInt32>, word j: Int, n0: Int, t0: Int, rp: Int, valid: Int) {
            XCTAssertEqual(t0, self.t0)
            for l in 0..<valid { words[16 * j + n0 - self.n0 + l] = w[l] }
        }
        func storeScales(_ s: UnsafePointer<Float>, n0: Int, t0: Int, rp: Int, valid: Int) {
            for l in 0..<valid { scales[n0 - self.n0 + l] = s[l] }
        }
    }

    /// `Recorder` as a code output.
    struct CodeRecorder: QuartetKernels.VerticalOutput {
        let r: Recorder
        static var emitsCodes: Bool { true }
        func storeRow(_ y: SIMD8<Float>, t: Int, n0: Int, valid: Int) { XCTFail("a code output got rows") }
        func storeCodes(_ w: SIMD8<UInt32>, word j: Int, n0: Int, t0: Int, rp: Int, valid: Int) {
            r.storeCodes(w, word: j, n0: n0, t0: t0, rp: rp, valid: valid)
        }
        func storeScales(_ s: UnsafePointer<Float>, n0: Int, t0: Int, rp: Int, valid: Int) {
            r.storeScales(s, n0: n0, t0: t0, rp: rp, valid: valid)
        }
    }

    /// `Recorder` as an x̂ output.
    struct FloatRecorder: QuartetKernels.VerticalOutput {
        let r: Recorder
        static var emitsCodes: Bool { false }
        func storeRow(_ y: SIMD8<Float>, t: Int, n0: Int, valid: Int) { r.storeRow(y, t: t, n0: n0, valid: valid) }
        func storeCodes(_ w: SIMD8<UInt32>, word j: Int, n0: Int, t0: Int, rp: Int, valid: Int) { XCTFail("codes") }
        func storeScales(_ s: UnsafePointer<Float>, n0: Int, t0: Int, rp: Int, valid: Int) { XCTFail("scales") }
    }

    /// What one path produced for a unit.
    struct Result: Equatable {
        var rows: [UInt32], words: [UInt32], scales: [UInt32], codesOK: Bool
    }

    /// Runs the unit at stage column `u` (0 or 16) through the Swift kernel (two 8-column
    /// units) or the wide one, into both kinds of output.
    func run(wide: Bool, stage: UnsafePointer<Float>, u: Int, signs: UnsafePointer<Float>, key: UInt64, rp: Int, n0: Int,
             t0: Int, valid: Int) -> Result {
        let rows = UnsafeMutablePointer<Float>.allocate(capacity: 32 * 16)
        let words = UnsafeMutablePointer<UInt32>.allocate(capacity: 4 * 16)
        let scales = UnsafeMutablePointer<Float>.allocate(capacity: 16)
        let v = UnsafeMutablePointer<Float>.allocate(capacity: 32 * 8 + 3 * 8)
        let scratch = QuartetKernels.WideScratch.allocate()
        defer { rows.deallocate(); words.deallocate(); scales.deallocate(); v.deallocate(); scratch.deallocate() }
        rows.initialize(repeating: .nan, count: 32 * 16)
        words.initialize(repeating: .max, count: 4 * 16)
        scales.initialize(repeating: .nan, count: 16)
        let rec = Recorder(n0: n0, t0: t0, rows: rows, words: words, scales: scales)
        var codesOK = true
        if wide {
            _ = QuartetKernels.verticalWideUnit(stage + u, signs: signs, key: key, rp: rp, n0: n0, t0: t0, valid: valid,
                                                scratch: scratch, output: FloatRecorder(r: rec))
            codesOK = QuartetKernels.verticalWideUnit(stage + u, signs: signs, key: key, rp: rp, n0: n0, t0: t0, valid: valid,
                                                      scratch: scratch, output: CodeRecorder(r: rec))
        } else {
            var h = 0
            while h < valid {
                let part = Swift.min(8, valid - h)
                _ = QuartetKernels.verticalUnit(stage + u + h, signs: signs, key: key, rp: rp, n0: n0 + h, t0: t0, valid: part,
                                                v: v, lane: v + 32 * 8, output: FloatRecorder(r: rec))
                if !QuartetKernels.verticalUnit(stage + u + h, signs: signs, key: key, rp: rp, n0: n0 + h, t0: t0, valid: part,
                                                v: v, lane: v + 32 * 8, output: CodeRecorder(r: rec)) {
                    codesOK = false
                }
                h += 8
            }
        }
        return Result(rows: (0..<(32 * 16)).map { rows[$0].bitPattern }, words: Array(UnsafeBufferPointer(start: words, count: 64)),
                      scales: (0..<16).map { scales[$0].bitPattern }, codesOK: codesOK)
    }

    /// The uniform draw of operand element (n, t) (`verticalUnit`'s counter, wrapping).
    func draw(key: UInt64, n: UInt64, rp: UInt64, t: UInt64) -> Float {
        let z = CounterRNG.mix(key &+ (n &* rp &+ t &+ 1) &* CounterRNG.gamma)
        return Float(UInt32(truncatingIfNeeded: z >> 40)) * 0x1p-24
    }

    /// A group with one non-zero input (its 32 rotated values then have the same magnitude X)
    /// chosen so that x / s = 3 + u, u the draw of some element: the rounding compares u with a
    /// fraction equal to it. Nil when no draw is a multiple of 2^-22 (needed for 3 + u to be a
    /// float) or the search for X fails.
    func tieGroup(draws: [Float], _ rng: inout TestRNG) -> [Float]? {
        let norm = QuartetKernels.norm
        for u in draws {
            guard u > 0, (u * 0x1p22).rounded(.towardZero) == u * 0x1p22 else { continue }
            let target: Float = 3 + u
            let s = ScaleRule.absmaxDiv3Scale(amax: 1)  // X in [1, 2)
            var x = target * s
            for _ in 0..<8 where x / s != target { x = x / s < target ? x.nextUp : x.nextDown }
            guard x / s == target, x >= 1, x < 2 else { continue }
            var c = x / norm
            for _ in 0..<8 where c * norm != x { c = c * norm < x ? c.nextUp : c.nextDown }
            guard c * norm == x else { continue }
            // A power of two moves X, s and c together exactly (all stay normal).
            let p = Float(sign: .plus, exponent: Int.random(in: -40...40, using: &rng), significand: 1)
            var group = [Float](repeating: 0, count: 32)
            group[Int.random(in: 0..<32, using: &rng)] = (Bool.random(using: &rng) ? c : -c) * p
            return group
        }
        return nil
    }

    /// How many of the draws tie with the rounding fraction of a `tieGroup` group (0 for other
    /// groups).
    func ties(group: [Float], draws: [Float]) -> Int {
        let nz = group.filter { $0 != 0 }
        guard nz.count == 1 else { return 0 }
        let x = abs(nz[0]) * QuartetKernels.norm
        let v = x / ScaleRule.absmaxDiv3Scale(amax: x)
        return draws.filter { v - 3 == $0 }.count
    }

    func testWideUnitsEqualTheSwiftUnits() throws {
        try XCTSkipIf(fp4isa_cpu_has(FP4ISA_AVX512DQ) == 0, "this CPU has no AVX-512 DQ")
        var (rng, seed) = TestRNG.fresh()
        var ties = 0, nonFiniteUnits = 0, zeroGroups = 0
        for trial in 0..<300 {
            let key = UInt64.random(in: 0...UInt64.max, using: &rng)
            let signs = QuartetLinear.signs(seed: key, call: UInt64(trial))
            let rp = 32 * [1, 2, 64, Int.random(in: 1...100_000, using: &rng)][trial % 4]
            let t0 = 32 * Int.random(in: 0..<(rp / 32), using: &rng)
            // Operand rows near 2^63 too: the counters wrap.
            let n0 = trial % 7 == 0 ? Int.max / rp - 20 : Int.random(in: 0..<100_000, using: &rng)
            var stage = [Float](repeating: 0, count: 32 * 32)
            for c in 0..<32 {
                let kind = Int.random(in: 0..<12, using: &rng)
                var col = [Float](repeating: 0, count: 32)
                let scale = Float(sign: .plus, exponent: Int.random(in: -30...30, using: &rng), significand: 1)
                for i in 0..<32 {
                    let g = Float.random(in: -1...1, using: &rng)
                    col[i] = switch kind {
                    case 0: 0
                    case 1: -0.0
                    case 2: g * 1e38  // sums overflow to ±inf
                    case 3: g * 0x1p-148  // subnormal: the scale underflows (a zero group)
                    case 4: g * 0x1p-130  // subnormal values
                    case 5: g * Float(sign: .plus, exponent: Int.random(in: -60...60, using: &rng), significand: 1)
                    case 6: i == 7 ? [.nan, .infinity, -.infinity][trial % 3] : g
                    case 7: Float(Int.random(in: -8...8, using: &rng)) * 0.25 * scale  // many equal magnitudes
                    default: g * scale
                    }
                }
                let draws = (0..<32).map { draw(key: key, n: UInt64(truncatingIfNeeded: n0 + c), rp: UInt64(rp), t: UInt64(t0 + $0)) }
                if kind >= 10, let t = tieGroup(draws: draws, &rng) {
                    col = t
                }
                for i in 0..<32 { stage[32 * i + c] = col[i] }
            }
            var compared = [Bool](repeating: false, count: 32)
            for u in [0, 16] {
                let valid = trial % 3 == 0 ? 16 : Int.random(in: 1...16, using: &rng)
                for c in u..<(u + valid) { compared[c] = true }
                let unitN0 = n0 + u
                let (a, b) = stage.withUnsafeBufferPointer { sp in
                    signs.withUnsafeBufferPointer { d in
                        (run(wide: false, stage: sp.baseAddress!, u: u, signs: d.baseAddress!, key: key, rp: rp, n0: unitN0,
                             t0: t0, valid: valid),
                         run(wide: true, stage: sp.baseAddress!, u: u, signs: d.baseAddress!, key: key, rp: rp, n0: unitN0,
                             t0: t0, valid: valid))
                    }
                }
                XCTAssertEqual(a.scales, b.scales, "scales, trial \(trial), u \(u), valid \(valid), seed \(seed)")
                XCTAssertEqual(a.words, b.words, "codes, trial \(trial), u \(u), valid \(valid), seed \(seed)")
                XCTAssertEqual(a.rows, b.rows, "x̂, trial \(trial), u \(u), valid \(valid), seed \(seed)")
                XCTAssertEqual(a.codesOK, b.codesOK, "non-finite report, trial \(trial), u \(u), seed \(seed)")
                if !a.codesOK { nonFiniteUnits += 1 }
                zeroGroups += (0..<valid).filter { a.scales[$0] == Float(1).bitPattern }.count
            }
            for c in 0..<32 where compared[c] {
                let draws = (0..<32).map { draw(key: key, n: UInt64(truncatingIfNeeded: n0 + c), rp: UInt64(rp), t: UInt64(t0 + $0)) }
                ties += self.ties(group: (0..<32).map { stage[32 * $0 + c] }, draws: draws)
            }
        }
        XCTAssertGreaterThan(ties, 20, "the tie columns produced too few ties")
        XCTAssertGreaterThan(nonFiniteUnits, 10)
        XCTAssertGreaterThan(zeroGroups, 100)
    }

    /// Matrix entries from the unit test's column kinds, one kind per 8 consecutive entries.
    func matrix(rows: Int, cols: Int, _ rng: inout TestRNG) -> [Float] {
        var a = [Float](repeating: 0, count: rows * cols)
        var kind = 0
        for i in 0..<a.count {
            if i % 8 == 0 { kind = Int.random(in: 0..<40, using: &rng) }
            let g = Float.random(in: -1...1, using: &rng)
            a[i] = switch kind {
            case 0: 0
            case 1: -0.0
            case 2: g * 0x1p-148
            case 3: g * 1e36
            case 4: g * Float(sign: .plus, exponent: Int.random(in: -60...60, using: &rng), significand: 1)
            default: g
            }
        }
        return a
    }

    /// Every operand kernel's outputs (codes, scales, x̂ and the ok flags) with the wide
    /// kernels on or off.
    func operands(wide: Bool, a: [Float], w: [Float], rows: Int, cols: Int, key: UInt64, signs: [Float]) -> [[UInt32]] {
        if wide { unsetenv(PackedGEMM.pathVariable) } else { setenv(PackedGEMM.pathVariable, "avx2", 1) }
        defer { unsetenv(PackedGEMM.pathVariable) }
        XCTAssertEqual(QuartetKernels.wideUnits, wide)
        let b = 32, cp = (cols + b - 1) / b * b
        var out: [[UInt32]] = []
        // Along the rows.
        var codes = [UInt8](repeating: 0xAA, count: rows * cp / 2), scales = [Float](repeating: .nan, count: rows * cp / b)
        var floats = [Float](repeating: 7, count: rows * cp)
        let sb = signs.withUnsafeBufferPointer { Block32($0.baseAddress!) }
        let ok = codes.withUnsafeMutableBufferPointer { c in
            scales.withUnsafeMutableBufferPointer { sc in
                QuartetKernels.gradientRows(a, rows: rows, cols: cols, signs: sb, key: key,
                                            output: QuartetKernels.RowsAsCodes(codes: c.baseAddress!, scales: sc.baseAddress!))
            }
        }
        let okF = floats.withUnsafeMutableBufferPointer { f in
            QuartetKernels.gradientRows(a, rows: rows, cols: cols, signs: sb, key: key,
                                        output: QuartetKernels.RowsAsFloats(out: f.baseAddress!))
        }
        out += [codes.map { UInt32($0) }, scales.map(\.bitPattern), floats.map(\.bitPattern), [ok ? 1 : 0, okF ? 1 : 0]]
        // Down the columns, from each source: the matrix, codes + scales (cols a multiple of 32:
        // the row operand's codes), a weight matrix through QuEST.
        func vertical<S: QuartetKernels.RowTiles>(_ src: S, rows: Int, cols: Int) {
            let rp = (rows + b - 1) / b * b
            var codesT = [UInt8](repeating: 0x55, count: cols * rp / 2), scalesT = [Float](repeating: .nan, count: cols * rp / b)
            var floatsT = [Float](repeating: 7, count: rp * cols)
            let (okT, okTF) = signs.withUnsafeBufferPointer { d in
                (codesT.withUnsafeMutableBufferPointer { c in
                    scalesT.withUnsafeMutableBufferPointer { sc in
                        QuartetKernels.verticalOperand(src, rows: rows, cols: cols, signs: d.baseAddress!, key: key,
                                                       output: QuartetKernels.ColumnsAsCodes(codes: c.baseAddress!,
                                                                                             scales: sc.baseAddress!))
                    }
                },
                 QuartetKernels.verticalOperand(src, rows: rows, cols: cols, signs: d.baseAddress!, key: key, into: &floatsT))
            }
            out += [codesT.map { UInt32($0) }, scalesT.map(\.bitPattern), floatsT.map(\.bitPattern), [okT ? 1 : 0, okTF ? 1 : 0]]
        }
        a.withUnsafeBufferPointer { ap in
            vertical(QuartetKernels.MatrixRows(a: ap.baseAddress!, rows: rows, cols: cols), rows: rows, cols: cols)
        }
        let table = ElementCodec.of(.e2m1).decodeTable
        table.withUnsafeBufferPointer { tb in
            codes.withUnsafeBufferPointer { c in
                scales.withUnsafeBufferPointer { sc in
                    vertical(QuartetKernels.CodeRows(codes: c.baseAddress!, scales: sc.baseAddress!, table: tb.baseAddress!,
                                                     rows: rows, cols: cp), rows: rows, cols: cp)
                }
            }
        }
        var mask = [UInt8](repeating: 0, count: rows * cp / 8)
        w.withUnsafeBufferPointer { wp in
            mask.withUnsafeMutableBufferPointer { m in
                vertical(QuartetKernels.WeightRows(w: wp.baseAddress!, rows: rows, cols: cp, mask: m.baseAddress!),
                         rows: rows, cols: cp)
            }
        }
        out.append(mask.map { UInt32($0) })
        return out
    }

    func testWideOperandsEqualTheSwiftOperands() throws {
        try XCTSkipIf(fp4isa_cpu_has(FP4ISA_AVX512DQ) == 0 || !GEMMPath.avx512vnni.isSupported,
                      "this CPU runs no AVX-512 units")
        try XCTSkipIf(getenv(PackedGEMM.pathVariable) != nil, "FP4SWIFT_GEMM_ISA is set")
        var (rng, seed) = TestRNG.fresh()
        var ties = 0
        for (rows, cols) in [(1, 1), (3, 7), (37, 45), (33, 96), (64, 40), (70, 17), (5, 200), (96, 24)] {
            var a = matrix(rows: rows, cols: cols, &rng)
            let cp = (cols + 31) / 32 * 32
            let w = matrix(rows: rows, cols: cp, &rng)
            let key = UInt64.random(in: 0...UInt64.max, using: &rng)
            // Tie groups along the rows (full blocks only: the tail is zero-padded).
            for r in 0..<rows {
                for j in 0..<(cols / 32) where Bool.random(using: &rng) {
                    let draws = (0..<32).map { draw(key: key, n: UInt64(r), rp: UInt64(cp), t: UInt64(32 * j + $0)) }
                    guard let g = tieGroup(draws: draws, &rng) else { continue }
                    for k in 0..<32 { a[r * cols + 32 * j + k] = g[k] }
                    ties += self.ties(group: g, draws: draws)
                }
            }
            let signs = QuartetLinear.signs(seed: key, call: 1)
            for round in 0..<2 {
                if round == 1 { a[Int.random(in: 0..<a.count, using: &rng)] = [Float.nan, .infinity, -.infinity][rows % 3] }
                let swift = operands(wide: false, a: a, w: w, rows: rows, cols: cols, key: key, signs: signs)
                let wide = operands(wide: true, a: a, w: w, rows: rows, cols: cols, key: key, signs: signs)
                XCTAssertEqual(swift.count, wide.count)
                for (k, (u, v)) in zip(swift, wide).enumerated() {
                    XCTAssertEqual(u, v, "output \(k), \(rows)x\(cols), round \(round), seed \(seed)")
                }
            }
        }
        XCTAssertGreaterThan(ties, 20, "the tie groups produced too few ties")
    }
}
