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
