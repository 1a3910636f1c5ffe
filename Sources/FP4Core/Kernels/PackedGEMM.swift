import FP4ISA
#if canImport(Glibc)
import Glibc
#endif

// GEMM on packed FP4 codes (numerics.md §11): C = A·Bᵀ for A[M, K] and B[N, K] given as
// packed codes plus per-group scales, computed with exact integer dot products inside each
// scale group and float32 across groups, in ascending group order.

/// One operand of `PackedGEMM.multiply`: the packed codes of a row-major [rows, cols]
/// tensor (cols = K, the reduction dimension) and one float scale per group.
public struct GEMMOperand {
    /// Two codes per byte over the flat index (element 2i in the low nibble, numerics.md §1).
    public let codes: UnsafePointer<UInt8>
    public let rows: Int
    public let cols: Int
    public let format: MiniFloatFormat
    public let granularity: Granularity
    /// The float scale of each group (numbered as `GroupLayout` numbers them). For the
    /// `nvfp4` rule it is float(sb), the decoded e4m3 block scale.
    public let scales: UnsafePointer<Float>
    /// x̂ = q · s / tensorScale: the `nvfp4` rule's S, 1 for every other rule.
    public let tensorScale: Float

    public init(codes: UnsafePointer<UInt8>, rows: Int, cols: Int, format: MiniFloatFormat,
                granularity: Granularity, scales: UnsafePointer<Float>, tensorScale: Float = 1) {
        self.codes = codes
        self.rows = rows
        self.cols = cols
        self.format = format
        self.granularity = granularity
        self.scales = scales
        self.tensorScale = tensorScale
    }

    /// Bytes of `codes` the operand reads.
    public var codeBytes: Int { (rows * cols + 1) / 2 }

    /// The scale groups' tiling; fails when the granularity cannot feed a packed GEMM.
    public func layout() throws -> GroupLayout {
        guard format.isFP4 else {
            throw FP4Error.invalid("packed GEMM: operands must be FP4 (e2m1, e1m2, e3m0), got \(format.name)")
        }
        if case .column = granularity {
            throw FP4Error.invalid("packed GEMM: column scales vary along the reduction dimension K; use tensor, row, block(n) or block2d(n)")
        }
        return try granularity.layout(rows: rows, cols: cols)
    }
}

/// The integer form of an FP4 grid: every value is an integer multiple of the smallest
/// step (e2m1: {0, ±1, ±2, ±3, ±4, ±6, ±8, ±12} × 0.5), so products of two codes are exact
/// small integers.
struct IntegerGrid {
    /// Signed integer of each 4-bit code (sign bit 8; −0 is 0).
    let values: [Int8]
    /// The largest |value|: the offset that makes A's values unsigned for the kernels.
    let maxMagnitude: Int
    /// log2 of the step (e2m1 and e1m2: −1, e3m0: −2).
    let stepExponent: Int

    init(_ f: MiniFloatFormat) {
        // The smallest non-zero magnitude (code 1, a subnormal) is the step of every FP4 grid.
        let step = f.magnitude(ofCode: 1)
        stepExponent = exponentFloor(step)
        var v = [Int8](repeating: 0, count: 16)
        for code in 0..<8 {
            let m = Int(f.magnitude(ofCode: code) / step)
            v[code] = Int8(m)
            v[code | 8] = Int8(-m)
        }
        values = v
        maxMagnitude = Int(f.magnitude(ofCode: f.maxFiniteMagnitudeCode) / step)
    }
}

/// The signature every tile kernel shares (see Sources/FP4ISA/include/fp4isa.h).
typealias GEMMTileFunction = (
    _ a: UnsafePointer<UInt8>, _ b: UnsafePointer<Int8>, _ corr: UnsafePointer<Int32>,
    _ sa: UnsafePointer<Float>, _ sb: UnsafePointer<Float>, _ groups: Int64, _ quads: Int64,
    _ post: Float, _ div: Float, _ c: UnsafeMutablePointer<Float>, _ ldc: Int64, _ mr: Int64, _ nr: Int64
) -> Void

/// Where a layer's GEMMs run (numerics.md §11).
public enum GEMMMode: Int, Sendable, CaseIterable {
    /// sgemm on fake-quantized float32 operands.
    case simulated = 0
    /// On packed codes wherever both operands are FP4 with scales constant along the
    /// reduction dimension; the other GEMMs as `simulated`.
    case packed = 1

    public var name: String { self == .packed ? "packed" : "simulated" }
}

/// Instruction-set paths of the packed GEMM, in the order of the C FP4SWIFT_GEMM_PATH_* constants.
public enum GEMMPath: Int, CaseIterable, Sendable {
    case generic = 0
    case avx2 = 1
    case avx512vnni = 2

    public var name: String {
        switch self {
        case .generic: return "generic"
        case .avx2: return "avx2"
        case .avx512vnni: return "avx512vnni"
        }
    }

    public static func named(_ s: String) -> GEMMPath? { allCases.first { $0.name == s } }

    /// Whether this CPU runs the path.
    public var isSupported: Bool {
        switch self {
        case .generic: return true
        case .avx2: return fp4isa_cpu_has(FP4ISA_AVX2) != 0
        case .avx512vnni: return fp4isa_cpu_has(FP4ISA_AVX512VNNI) != 0
        }
    }
}

/// A tile kernel and its tile shape: the table the driver picks from, the portable Swift
/// kernel (`PackedGEMM.genericTile`) being the reference the others must equal bit for bit.
struct GEMMTileKernel {
    let path: GEMMPath
    let mr: Int
    let nr: Int
    let run: GEMMTileFunction

    static let table: [GEMMTileKernel] = [
        GEMMTileKernel(path: .generic, mr: PackedGEMM.genericMR, nr: PackedGEMM.genericNR, run: PackedGEMM.genericTile),
        GEMMTileKernel(path: .avx2, mr: Int(FP4ISA_AVX2_MR), nr: Int(FP4ISA_AVX2_NR), run: fp4isa_gemm_tile_avx2),
        GEMMTileKernel(path: .avx512vnni, mr: Int(FP4ISA_AVX512VNNI_MR), nr: Int(FP4ISA_AVX512VNNI_NR),
                       run: fp4isa_gemm_tile_avx512vnni),
    ]
}

public enum PackedGEMM {
    /// The environment variable that forces a path (generic, avx2, avx512vnni).
    public static let pathVariable = "FP4SWIFT_GEMM_ISA"

    /// The path calls take: FP4SWIFT_GEMM_ISA when set, else the fastest this CPU supports.
    /// Fails when the variable names an unknown path or one this CPU cannot run.
    public static func selectedPath() throws -> GEMMPath {
        if let env = getenv(pathVariable), env.pointee != 0 {
            let name = String(cString: env)
            guard let p = GEMMPath.named(name) else {
                let known = GEMMPath.allCases.map(\.name).joined(separator: ", ")
                throw FP4Error.invalid("\(pathVariable)=\(name) is not a GEMM path (known: \(known))")
            }
            guard p.isSupported else { throw FP4Error.invalid("\(pathVariable)=\(name): this CPU does not support that path") }
            return p
        }
        return GEMMPath.allCases.reversed().first { $0.isSupported } ?? .generic
    }

    /// Largest |integer sum| of one group must stay below 2^31 (int32 accumulators).
    static func checkGroupLength(_ length: Int, _ ga: IntegerGrid, _ gb: IntegerGrid) throws {
        let perProduct = 2 * ga.maxMagnitude * gb.maxMagnitude
        guard length <= (Int(Int32.max) / perProduct) else {
            throw FP4Error.invalid("packed GEMM: a scale group spans \(length) elements of K; int32 accumulation allows at most \(Int(Int32.max) / perProduct) for these formats")
        }
    }

    /// C[M, N] = A·Bᵀ, row-major, for A[M, K] and B[N, K] (numerics.md §11). Operands are
    /// checked; `path` defaults to `selectedPath()`. Bit-identical for every path and thread count.
    public static func multiply(_ a: GEMMOperand, _ b: GEMMOperand, into c: UnsafeMutablePointer<Float>,
                                path: GEMMPath? = nil) throws {
        let la = try a.layout(), lb = try b.layout()
        guard a.cols == b.cols else {
            throw FP4Error.invalid("packed GEMM: A is [\(a.rows), \(a.cols)] and B is [\(b.rows), \(b.cols)]; both need the same K (C = A·Bᵀ)")
        }
        let chosen = try path ?? selectedPath()
        guard chosen.isSupported else { throw FP4Error.invalid("packed GEMM: this CPU does not support the \(chosen.name) path") }
        let M = a.rows, N = b.rows, K = a.cols
        if M == 0 || N == 0 { return }
        if K == 0 {
            c.update(repeating: 0, count: M * N)
            return
        }
        // Scale groups along K: the finer of the two granularities, which must divide the other.
        let gk = Swift.min(la.groupCols, lb.groupCols)
        guard la.groupCols % gk == 0, lb.groupCols % gk == 0 else {
            throw FP4Error.invalid("packed GEMM: scale groups of \(la.groupCols) and \(lb.groupCols) along K do not nest; use equal blocks or one row-scaled operand")
        }
        let ga = IntegerGrid(a.format), gb = IntegerGrid(b.format)
        try checkGroupLength(gk, ga, gb)
        let kernel = GEMMTileKernel.table[chosen.rawValue]
        let shape = PanelShape(K: K, groupLength: gk, mr: kernel.mr, nr: kernel.nr)
        let post = exactPow2(ga.stepExponent + gb.stepExponent)
        let div = a.tensorScale * b.tensorScale

        let packedA = PanelsA(a, la, ga, shape)
        let packedB = PanelsB(b, lb, gb, offset: ga.maxMagnitude, shape)
        run(kernel, packedA, packedB, shape, M: M, N: N, post: post, div: div, c: c)
    }

    /// Work items are (block of A tiles) × (block of B strips); each output element is
    /// computed by one kernel call over all of K, so the split never changes a result.
    static func run(_ kernel: GEMMTileKernel, _ A: PanelsA, _ B: PanelsB, _ shape: PanelShape,
                    M: Int, N: Int, post: Float, div: Float, c: UnsafeMutablePointer<Float>) {
        let mr = kernel.mr, nr = kernel.nr, tile = kernel.run
        let tilesA = A.tiles, stripsB = B.strips
        // ~192 rows of A (a block that stays in L2 while B's strips stream past it) and
        // 256 columns of B per work item.
        let tilesPerBlock = Swift.max(1, 192 / mr), stripsPerBlock = Swift.max(1, 256 / nr)
        let blocksA = (tilesA + tilesPerBlock - 1) / tilesPerBlock
        let blocksB = (stripsB + stripsPerBlock - 1) / stripsPerBlock
        let G = Int64(shape.groups), Q = Int64(shape.quadsPerGroup)
        Parallel.forChunks(count: blocksA * blocksB, grain: 1) { items in
            for item in items {
                let ba = item / blocksB, bb = item % blocksB
                for s in (bb * stripsPerBlock)..<Swift.min(stripsB, (bb + 1) * stripsPerBlock) {
                    let j0 = s * nr, nValid = Swift.min(nr, N - j0)
                    for t in (ba * tilesPerBlock)..<Swift.min(tilesA, (ba + 1) * tilesPerBlock) {
                        let i0 = t * mr, mValid = Swift.min(mr, M - i0)
                        tile(A.codes(t), B.codes(s), B.corrections(s), A.scales(t), B.scales(s), G, Q,
                             post, div, c + i0 * N + j0, Int64(N), Int64(mValid), Int64(nValid))
                    }
                }
            }
        }
    }
}

extension ScaleRule {
    /// The float scale a stored scale byte stands for: `e8m0` (and e8m0_ceil, _even, _rceil)
    /// 2^(b − 127), `nvfp4` and `nvfp4_torchao` the e4m3 value of sb (nvfp4_torchao's
    /// operands then multiply it by P). nil for rules that store no byte and for the NaN bytes (e8m0 255, e4m3 S.1111.111).
    public func scale(ofStoredByte b: UInt8) -> Float? {
        switch self {
        case .e8m0, .e8m0Ceil, .e8m0Even, .e8m0Rceil: return b == 255 ? nil : exactPow2(Int(b) - 127)
        case .nvfp4, .nvfp4Torchao:
            let v = ElementCodec.e4m3.decodeTable[Int(b)]
            return v.isNaN ? nil : v
        default: return nil
        }
    }

    /// Whether quantizers of this rule store a scale byte per group.
    public var storesScaleByte: Bool { storesScaleBytes }

    /// The float scale s of a group (x̂ = q·s, or q·s / S for nvfp4) from its stored byte and
    /// the tensor scale: `scale(ofStoredByte:)`, times P for nvfp4_torchao (whose float scale
    /// is fl(P · sb), computed in that order by the quantizer). nil for a NaN byte.
    public func floatScale(ofStoredByte b: UInt8, tensorScale: Float) -> Float? {
        guard let v = scale(ofStoredByte: b) else { return nil }
        return self == .nvfp4Torchao ? tensorScale * v : v
    }
}
