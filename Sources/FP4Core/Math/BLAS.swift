import CBLAS

/// Row-major float32 GEMM through OpenBLAS: C = α·op(A)·op(B) + β·C, with the layouts of
/// the linear layer expressed by transposition flags, never by copies.
/// Call it from the caller's thread, never inside a `Parallel` region: OpenBLAS runs its
/// own thread pool.
public enum BLAS {
    /// C[m, n] = α · op(A)[m, k] · op(B)[k, n] + β · C.
    /// A is [m, k] (or [k, m] when transA), B is [k, n] (or [n, k] when transB), all row-major.
    public static func gemm(transA: Bool, transB: Bool, m: Int, n: Int, k: Int,
                            alpha: Float = 1, a: UnsafePointer<Float>, b: UnsafePointer<Float>,
                            beta: Float = 0, c: UnsafeMutablePointer<Float>) {
        guard m > 0, n > 0 else { return }
        if k == 0 {  // OpenBLAS leaves C untouched for k = 0; the product is 0.
            for i in 0..<(m * n) { c[i] = beta == 0 ? 0 : beta * c[i] }
            return
        }
        cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans,
                    Int32(m), Int32(n), Int32(k), alpha,
                    a, Int32(transA ? m : k), b, Int32(transB ? k : n), beta, c, Int32(n))
    }
}
