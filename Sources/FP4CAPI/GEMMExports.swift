import FP4CABI
import FP4Core

// Exports of the packed FP4 GEMM (numerics.md §11): argument checks only.

/// A checked GEMM operand: its descriptor, quantizer and float scales (decoded from the
/// stored bytes when `scales` is NULL).
private struct CheckedOperand {
    let d: fp4swift_gemm_operand
    let q: Quantizer
    let scales: [Float]

    init(_ p: UnsafePointer<fp4swift_gemm_operand>?, _ name: String) throws {
        d = try required(p, name).pointee
        let desc = d.quantizer
        q = try withUnsafePointer(to: desc) { try quantizer($0).0 }
        let n = try elementCount(d.rows, d.cols)
        guard q.format.isFP4 else {
            throw invalid("\(name): packed GEMM operands must be FP4 (e2m1, e1m2, e3m0), got \(q.format.name)")
        }
        if case .column = q.granularity {
            throw invalid("\(name): column scales vary along K; a packed GEMM needs tensor, row, block(n) or block2d(n)")
        }
        let L = try q.granularity.layout(rows: Int(d.rows), cols: Int(d.cols))
        try checkLength(Int(d.codes_len), atLeast: (n + 1) / 2, "\(name).codes")
        try checkLength(Int(d.n_scales), atLeast: L.groupCount, "\(name).scales")
        if n > 0 { _ = try required(d.codes, "\(name).codes") }
        guard d.tensor_scale.isFinite, d.tensor_scale != 0 else {
            throw invalid("\(name).tensor_scale must be finite and non-zero, got \(d.tensor_scale)")
        }
        if !q.scaleRule.isTwoLevel && d.tensor_scale != 1 {
            throw invalid("\(name).tensor_scale is \(d.tensor_scale), but only the nvfp4 and nvfp4_torchao rules have a tensor scale (pass 1)")
        }
        var s = [Float](repeating: 0, count: Swift.max(L.groupCount, 1))
        if n == 0 {
            // nothing to read
        } else if let f = d.scales {
            for g in 0..<L.groupCount { s[g] = f[g] }
        } else if let bytes = d.scale_bytes {
            guard q.scaleRule.storesScaleByte else {
                throw invalid("\(name): the \(q.scaleRule.name) rule stores float scales; pass scales, not scale_bytes")
            }
            for g in 0..<L.groupCount {
                guard let v = q.scaleRule.floatScale(ofStoredByte: bytes[g], tensorScale: d.tensor_scale) else {
                    throw invalid("\(name).scale_bytes[\(g)] = \(bytes[g]) is NaN in the \(q.scaleRule.name) encoding")
                }
                s[g] = v
            }
        } else {
            throw invalid("\(name): scales and scale_bytes are both NULL")
        }
        scales = s
    }

    var rows: Int { Int(d.rows) }

    /// Calls `body` with the core's view of the operand (valid only inside `body`).
    func with(_ body: (GEMMOperand) throws -> Void) throws {
        let codes = d.codes ?? UnsafePointer(bitPattern: 1)!  // never read when the tensor is empty
        try scales.withUnsafeBufferPointer { s in
            try body(GEMMOperand(codes: codes, rows: Int(d.rows), cols: Int(d.cols), format: q.format,
                                 granularity: q.granularity, scales: s.baseAddress!,
                                 tensorScale: q.scaleRule.gemmTensorScale(d.tensor_scale)))
        }
    }
}

private func gemmPath(_ index: Int32) throws -> GEMMPath? {
    if index == FP4SWIFT_GEMM_PATH_DEFAULT { return nil }
    guard let p = GEMMPath(rawValue: Int(index)) else { throw invalid("unknown GEMM path index \(index)") }
    return p
}

@_cdecl("fp4swift_gemm")
public func fp4swift_gemm(_ a: UnsafePointer<fp4swift_gemm_operand>?, _ b: UnsafePointer<fp4swift_gemm_operand>?,
                          _ path: Int32, _ c: UnsafeMutablePointer<Float>?, _ cLen: Int64) -> Int32 {
    guarded {
        let A = try CheckedOperand(a, "a"), B = try CheckedOperand(b, "b")
        let n = try elementCount(Int64(A.rows), Int64(B.rows))
        try checkLength(Int(cLen), atLeast: n, "c")
        let chosen = try gemmPath(path)
        let out = n > 0 ? try required(c, "c") : UnsafeMutablePointer<Float>(bitPattern: 16)!
        try A.with { A in try B.with { B in try PackedGEMM.multiply(A, B, into: out, path: chosen) } }
    }
}

@_cdecl("fp4swift_gemm_default_path")
public func fp4swift_gemm_default_path(_ path: UnsafeMutablePointer<Int32>?) -> Int32 {
    guarded { try required(path, "path").pointee = Int32(try PackedGEMM.selectedPath().rawValue) }
}

@_cdecl("fp4swift_gemm_path_supported")
public func fp4swift_gemm_path_supported(_ path: Int32, _ supported: UnsafeMutablePointer<Int32>?) -> Int32 {
    guarded {
        guard let p = GEMMPath(rawValue: Int(path)) else { throw invalid("unknown GEMM path index \(path)") }
        try required(supported, "supported").pointee = p.isSupported ? 1 : 0
    }
}
