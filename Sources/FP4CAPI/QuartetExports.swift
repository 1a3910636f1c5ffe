import FP4CABI
import FP4Core

// @_cdecl exports of the Quartet building blocks: the blockwise Hadamard transform and the
// clip mask of a quantization (QuEST). Signatures: fp4swift.h.

@_cdecl("fp4swift_hadamard")
public func fp4swift_hadamard(_ x: UnsafePointer<Float>?, _ rows: Int64, _ cols: Int64, _ block: Int32,
                              _ signs: UnsafePointer<Float>?, _ out: UnsafeMutablePointer<Float>?) -> Int32 {
    guarded {
        let n = try elementCount(rows, cols)
        try Hadamard.validate(block: Int(block), cols: Int(cols))
        if let signs { try Hadamard.validate(signs: signs, block: Int(block)) }
        guard n > 0 else { return }
        try Hadamard.transform(try required(x, "x"), rows: Int(rows), cols: Int(cols), block: Int(block),
                               signs: signs, into: try required(out, "out"))
    }
}

@_cdecl("fp4swift_clip_mask")
public func fp4swift_clip_mask(_ x: UnsafePointer<Float>?, _ rows: Int64, _ cols: Int64,
                               _ q: UnsafePointer<fp4swift_quantizer>?, _ mask: UnsafeMutablePointer<UInt8>?,
                               _ maskLen: Int64) -> Int32 {
    guarded {
        let n = try elementCount(rows, cols)
        let (quant, _) = try quantizer(q)
        _ = try quant.granularity.layout(rows: Int(rows), cols: Int(cols))
        try checkLength(Int(maskLen), atLeast: Quantizer.maskBytes(count: n), "mask")
        guard n > 0 else { return }
        try quant.clipMask(try required(x, "x"), rows: Int(rows), cols: Int(cols), into: try required(mask, "mask"))
    }
}

@_cdecl("fp4swift_quartet_saved_sizes")
public func fp4swift_quartet_saved_sizes(_ tokens: Int64, _ inFeatures: Int64, _ codesLen: UnsafeMutablePointer<Int64>?,
                                         _ scalesLen: UnsafeMutablePointer<Int64>?, _ maskLen: UnsafeMutablePointer<Int64>?) -> Int32 {
    guarded {
        _ = try elementCount(tokens, inFeatures)
        let s = try QuartetLinear.savedSizes(tokens: Int(tokens), inFeatures: Int(inFeatures))
        try required(codesLen, "x_codes_len").pointee = Int64(s.codes)
        try required(scalesLen, "x_scales_len").pointee = Int64(s.scales)
        try required(maskLen, "x_mask_len").pointee = Int64(s.mask)
    }
}

/// A non-null buffer of at least `need` entries (a dummy address when need is 0).
private func buffer<T>(_ p: UnsafeMutablePointer<T>?, _ len: Int64, _ need: Int, _ name: String) throws -> UnsafeMutablePointer<T> {
    try checkLength(Int(len), atLeast: need, name)
    if need == 0, p == nil { return UnsafeMutablePointer(bitPattern: 16)! }
    return try required(p, name)
}

@_cdecl("fp4swift_quartet_forward")
public func fp4swift_quartet_forward(_ x: UnsafePointer<Float>?, _ tokens: Int64, _ inFeatures: Int64,
                                     _ w: UnsafePointer<Float>?, _ outFeatures: Int64, _ bias: UnsafePointer<Float>?,
                                     _ y: UnsafeMutablePointer<Float>?,
                                     _ xCodes: UnsafeMutablePointer<UInt8>?, _ xCodesLen: Int64,
                                     _ xScales: UnsafeMutablePointer<Float>?, _ xScalesLen: Int64,
                                     _ xMask: UnsafeMutablePointer<UInt8>?, _ xMaskLen: Int64, _ gemm: Int32) -> Int32 {
    guarded {
        let nx = try elementCount(tokens, inFeatures), nw = try elementCount(outFeatures, inFeatures)
        let ny = try elementCount(tokens, outFeatures)
        let s = try QuartetLinear.savedSizes(tokens: Int(tokens), inFeatures: Int(inFeatures))
        let codes = try buffer(xCodes, xCodesLen, s.codes, "x_codes")
        let scales = try buffer(xScales, xScalesLen, s.scales, "x_scales")
        let mask = try buffer(xMask, xMaskLen, s.mask, "x_mask")
        let dummy = UnsafePointer<Float>(bitPattern: 16)!
        try QuartetLinear.forward(x: nx > 0 ? try required(x, "x") : dummy, tokens: Int(tokens), inFeatures: Int(inFeatures),
                                  w: nw > 0 ? try required(w, "w") : dummy, outFeatures: Int(outFeatures), bias: bias,
                                  y: ny > 0 ? try required(y, "y") : UnsafeMutablePointer(bitPattern: 16)!,
                                  xCodes: codes, xScales: scales, xMask: mask, gemm: try gemmMode(gemm))
    }
}

@_cdecl("fp4swift_quartet_backward")
public func fp4swift_quartet_backward(_ dy: UnsafePointer<Float>?, _ tokens: Int64, _ outFeatures: Int64,
                                      _ w: UnsafePointer<Float>?, _ inFeatures: Int64,
                                      _ xCodes: UnsafePointer<UInt8>?, _ xCodesLen: Int64,
                                      _ xScales: UnsafePointer<Float>?, _ xScalesLen: Int64,
                                      _ xMask: UnsafePointer<UInt8>?, _ xMaskLen: Int64,
                                      _ seed: UInt64, _ call: UInt64,
                                      _ dx: UnsafeMutablePointer<Float>?, _ dw: UnsafeMutablePointer<Float>?,
                                      _ db: UnsafeMutablePointer<Float>?, _ gemm: Int32) -> Int32 {
    guarded {
        let ndy = try elementCount(tokens, outFeatures), nw = try elementCount(outFeatures, inFeatures)
        _ = try elementCount(tokens, inFeatures)
        let s = try QuartetLinear.savedSizes(tokens: Int(tokens), inFeatures: Int(inFeatures))
        let codes = UnsafePointer(try buffer(UnsafeMutablePointer(mutating: xCodes), xCodesLen, s.codes, "x_codes"))
        let scales = UnsafePointer(try buffer(UnsafeMutablePointer(mutating: xScales), xScalesLen, s.scales, "x_scales"))
        let mask = UnsafePointer(try buffer(UnsafeMutablePointer(mutating: xMask), xMaskLen, s.mask, "x_mask"))
        let dummy = UnsafePointer<Float>(bitPattern: 16)!
        try QuartetLinear.backward(dy: ndy > 0 ? try required(dy, "dy") : dummy, tokens: Int(tokens), outFeatures: Int(outFeatures),
                                   w: nw > 0 ? try required(w, "w") : dummy, inFeatures: Int(inFeatures),
                                   xCodes: codes, xScales: scales, xMask: mask, seed: seed, call: call,
                                   dx: dx, dw: dw, db: db, gemm: try gemmMode(gemm))
    }
}
