import FP4ISA

/// The layers' float32 transposes (Wᵀ for dX on codes, dYᵀ and X_qᵀ for the weight-gradient
/// GEMM regrouped along T). Pure data movement: every kernel gives the same bits.
enum TransposeKernel: Sendable {
    /// Reference: one float at a time in 32×32 tiles.
    case generic
    /// `fp4isa_transpose_f32_avx2`: 8×8 blocks transposed in registers. The generic loop
    /// stores one float per output row, rows `ldb` floats apart: with ldb a multiple of 1024
    /// (T = 2048) those stores all land in the same L1 sets, which made transposes ~12% of
    /// the nvfp4 layer's time.
    case avx2

    /// The fastest kernel this CPU runs.
    static let selected: TransposeKernel = fp4isa_cpu_has(FP4ISA_AVX2) != 0 ? .avx2 : .generic

    /// b[c, r] = a[r, c] for a [rows, cols]; b's rows are `ldb` apart (default rows; larger
    /// leaves padding columns untouched). Parallel over blocks of rows of a.
    static func run(_ a: UnsafePointer<Float>, rows: Int, cols: Int, into b: UnsafeMutablePointer<Float>,
                    ldb: Int? = nil, kernel: TransposeKernel = selected) {
        let ld = ldb ?? rows
        guard rows > 0, cols > 0 else { return }
        // 64 rows of a per task: 64 source lines stay in L1 while the 8-column blocks walk along them.
        let tile = 64
        let rowTiles = (rows + tile - 1) / tile
        Parallel.forChunks(count: rowTiles, grain: Parallel.grain(count: rowTiles, minItems: 2)) { range in
            for rt in range {
                let r0 = rt * tile, r1 = Swift.min(rows, r0 + tile)
                block(a + r0 * cols, lda: cols, b + r0, ldb: ld, rows: r1 - r0, cols: cols, kernel: kernel)
            }
        }
    }

    /// b[c * ldb + r] = a[r * lda + c] on the calling thread (for callers already inside a
    /// parallel task), in 64-row slabs.
    static func block(_ a: UnsafePointer<Float>, lda: Int, _ b: UnsafeMutablePointer<Float>, ldb: Int, rows: Int, cols: Int,
                      kernel: TransposeKernel = selected) {
        var r0 = 0
        while r0 < rows {
            let n = Swift.min(64, rows - r0)
            switch kernel {
            case .avx2: fp4isa_transpose_f32_avx2(a + r0 * lda, Int64(lda), b + r0, Int64(ldb), Int64(n), Int64(cols))
            case .generic: generic(a + r0 * lda, lda: lda, b + r0, ldb: ldb, rows: n, cols: cols)
            }
            r0 += n
        }
    }

    /// The reference: b[c * ldb + r] = a[r * lda + c], in 32×32 tiles.
    static func generic(_ a: UnsafePointer<Float>, lda: Int, _ b: UnsafeMutablePointer<Float>, ldb: Int, rows: Int, cols: Int) {
        let tile = 32
        var r0 = 0
        while r0 < rows {
            let r1 = Swift.min(rows, r0 + tile)
            var c0 = 0
            while c0 < cols {
                let c1 = Swift.min(cols, c0 + tile)
                for r in r0..<r1 { for c in c0..<c1 { b[c * ldb + r] = a[r * lda + c] } }
                c0 = c1
            }
            r0 = r1
        }
    }
}
