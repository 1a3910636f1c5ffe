import FP4CABI
import FP4Core

// @_cdecl exports of the library, element codecs and quantizers. Each checks its
// arguments, calls FP4Core, and reports errors through guarded(). Signatures: fp4swift.h.

@_cdecl("fp4swift_abi_version")
public func fp4swift_abi_version() -> Int32 { FP4SWIFT_ABI_VERSION }

@_cdecl("fp4swift_set_num_threads")
public func fp4swift_set_num_threads(_ n: Int32) -> Int32 {
    guarded {
        guard n >= 1, n <= 1024 else { throw invalid("thread count must be in 1...1024, got \(n)") }
        Parallel.threadCount = Int(n)
    }
}

@_cdecl("fp4swift_get_num_threads")
public func fp4swift_get_num_threads() -> Int32 { Int32(Parallel.threadCount) }

@_cdecl("fp4swift_name")
public func fp4swift_name(_ table: Int32, _ index: Int32) -> UnsafePointer<CChar>? {
    guard table >= 0, Int(table) < nameTables.count else { return nil }
    let names = nameTables[Int(table)]
    guard index >= 0, Int(index) < names.count else { return nil }
    return UnsafePointer(names[Int(index)])
}

@_cdecl("fp4swift_format_info_get")
public func fp4swift_format_info_get(_ index: Int32, _ out: UnsafeMutablePointer<fp4swift_format_info>?) -> Int32 {
    guarded {
        let f = try format(index)
        let o = try required(out, "out")
        o.pointee = fp4swift_format_info(
            bits: Int32(f.bits), exp_bits: Int32(f.expBits), man_bits: Int32(f.manBits), bias: Int32(f.bias),
            max_exponent: Int32(f.maxExponent), scale_only: f.isScaleOnly ? 1 : 0, max_value: f.maxValue)
    }
}

@_cdecl("fp4swift_encode")
public func fp4swift_encode(_ x: UnsafePointer<Float>?, _ n: Int64, _ fmt: Int32, _ rnd: Int32,
                            _ seed: UInt64, _ codes: UnsafeMutablePointer<UInt8>?) -> Int32 {
    guarded {
        let count = try elementCount(1, n)
        let codec = ElementCodec.of(try format(fmt))
        let mode = try rounding(rnd)
        guard count > 0 else { return }
        let xs = try required(x, "x"), out = try required(codes, "codes")
        let key = CounterRNG.key(seed: seed)
        for i in 0..<count {
            let u = mode == .stochastic ? CounterRNG.uniform(key: key, index: i) : 0
            guard let c = codec.encode(xs[i], rounding: mode, uniform: u) else {
                throw FP4Error(.nonFinite, "\(codec.format.name) cannot encode \(xs[i]) at flat index \(i)")
            }
            out[i] = c
        }
    }
}

@_cdecl("fp4swift_decode")
public func fp4swift_decode(_ codes: UnsafePointer<UInt8>?, _ n: Int64, _ fmt: Int32,
                            _ out: UnsafeMutablePointer<Float>?) -> Int32 {
    guarded {
        let count = try elementCount(1, n)
        let codec = ElementCodec.of(try format(fmt))
        guard count > 0 else { return }
        let cs = try required(codes, "codes"), o = try required(out, "out")
        let limit = codec.decodeTable.count
        for i in 0..<count where Int(cs[i]) >= limit {
            throw invalid("code \(cs[i]) at flat index \(i) is outside \(codec.format.name)'s \(limit) codes")
        }
        codec.decodeTable.withUnsafeBufferPointer { t in
            for i in 0..<count { o[i] = t[Int(cs[i])] }
        }
    }
}

@_cdecl("fp4swift_pack_nibbles")
public func fp4swift_pack_nibbles(_ codes: UnsafePointer<UInt8>?, _ n: Int64,
                                  _ packed: UnsafeMutablePointer<UInt8>?, _ packedLen: Int64) -> Int32 {
    guarded {
        let count = try elementCount(1, n)
        try checkLength(Int(packedLen), atLeast: (count + 1) / 2, "packed")
        guard count > 0 else { return }
        let cs = try required(codes, "codes")
        for i in 0..<count where cs[i] > 0xF { throw invalid("code \(cs[i]) at flat index \(i) is not a 4-bit code") }
        packNibbles(cs, count: count, into: try required(packed, "packed"))
    }
}

@_cdecl("fp4swift_unpack_nibbles")
public func fp4swift_unpack_nibbles(_ packed: UnsafePointer<UInt8>?, _ packedLen: Int64, _ n: Int64,
                                    _ codes: UnsafeMutablePointer<UInt8>?) -> Int32 {
    guarded {
        let count = try elementCount(1, n)
        try checkLength(Int(packedLen), atLeast: (count + 1) / 2, "packed")
        guard count > 0 else { return }
        unpackNibbles(try required(packed, "packed"), count: count, into: try required(codes, "codes"))
    }
}

@_cdecl("fp4swift_group_layout")
public func fp4swift_group_layout(_ rows: Int64, _ cols: Int64, _ q: UnsafePointer<fp4swift_quantizer>?,
                                  _ tileRows: UnsafeMutablePointer<Int64>?, _ tileCols: UnsafeMutablePointer<Int64>?) -> Int32 {
    guarded {
        _ = try elementCount(rows, cols)
        let (quant, _) = try quantizer(q)
        let L = try quant.granularity.layout(rows: Int(rows), cols: Int(cols))
        try required(tileRows, "tile_rows").pointee = Int64(L.tileRows)
        try required(tileCols, "tile_cols").pointee = Int64(L.tileCols)
    }
}

@_cdecl("fp4swift_fake_quantize")
public func fp4swift_fake_quantize(_ x: UnsafePointer<Float>?, _ rows: Int64, _ cols: Int64,
                                   _ q: UnsafePointer<fp4swift_quantizer>?, _ out: UnsafeMutablePointer<Float>?,
                                   _ nonFiniteGroups: UnsafeMutablePointer<Int64>?) -> Int32 {
    guarded {
        let n = try elementCount(rows, cols)
        let (quant, policy) = try quantizer(q)
        _ = try quant.granularity.layout(rows: Int(rows), cols: Int(cols))
        var bad = 0
        if n > 0 {
            bad = try quant.fakeQuantize(try required(x, "x"), rows: Int(rows), cols: Int(cols),
                                         into: try required(out, "out"), nonFinite: policy)
        }
        nonFiniteGroups?.pointee = Int64(bad)
    }
}

@_cdecl("fp4swift_quantize")
public func fp4swift_quantize(_ x: UnsafePointer<Float>?, _ rows: Int64, _ cols: Int64,
                              _ q: UnsafePointer<fp4swift_quantizer>?,
                              _ codes: UnsafeMutablePointer<UInt8>?, _ codesLen: Int64,
                              _ scales: UnsafeMutablePointer<Float>?, _ scaleBytes: UnsafeMutablePointer<UInt8>?,
                              _ nScales: Int64, _ tensorScale: UnsafeMutablePointer<Float>?) -> Int32 {
    guarded {
        let n = try elementCount(rows, cols)
        let (quant, _) = try quantizer(q)
        let L = try quant.granularity.layout(rows: Int(rows), cols: Int(cols))
        try checkLength(Int(codesLen), atLeast: quant.codeBytes(count: n), "codes")
        try checkLength(Int(nScales), atLeast: L.groupCount, "scales")
        tensorScale?.pointee = 1
        guard n > 0 else { return }
        let ts = try quant.quantize(try required(x, "x"), rows: Int(rows), cols: Int(cols),
                                    codes: try required(codes, "codes"))
        let s = try required(scales, "scales")
        for g in 0..<ts.groups.count {
            s[g] = ts.groups[g].scale
            scaleBytes?[g] = ts.groups[g].byte
        }
        tensorScale?.pointee = ts.tensorScale
    }
}

@_cdecl("fp4swift_dequantize")
public func fp4swift_dequantize(_ codes: UnsafePointer<UInt8>?, _ codesLen: Int64, _ rows: Int64, _ cols: Int64,
                                _ q: UnsafePointer<fp4swift_quantizer>?, _ scales: UnsafePointer<Float>?,
                                _ nScales: Int64, _ tensorScale: Float, _ out: UnsafeMutablePointer<Float>?) -> Int32 {
    guarded {
        let n = try elementCount(rows, cols)
        let (quant, _) = try quantizer(q)
        let L = try quant.granularity.layout(rows: Int(rows), cols: Int(cols))
        try checkLength(Int(codesLen), atLeast: quant.codeBytes(count: n), "codes")
        try checkLength(Int(nScales), atLeast: L.groupCount, "scales")
        guard n > 0 else { return }
        let cs = try required(codes, "codes")
        if !quant.format.isFP4 {
            let limit = ElementCodec.of(quant.format).decodeTable.count
            for i in 0..<n where Int(cs[i]) >= limit { throw invalid("code \(cs[i]) at flat index \(i) is not a \(quant.format.name) code") }
        }
        try quant.dequantize(codes: cs, rows: Int(rows), cols: Int(cols), scales: try required(scales, "scales"),
                             tensorScale: tensorScale, into: try required(out, "out"))
    }
}

@_cdecl("fp4swift_fidelity")
public func fp4swift_fidelity(_ x: UnsafePointer<Float>?, _ xHat: UnsafePointer<Float>?, _ n: Int64,
                              _ out: UnsafeMutablePointer<Double>?) -> Int32 {
    guarded {
        let count = try elementCount(1, n)
        let o = try required(out, "out")
        let f: Fidelity
        if count == 0 {
            f = Fidelity.measure(UnsafePointer(bitPattern: 8)!, UnsafePointer(bitPattern: 8)!, count: 0)
        } else {
            f = Fidelity.measure(try required(x, "x"), try required(xHat, "x_hat"), count: count)
        }
        o[0] = f.cosine; o[1] = f.mse; o[2] = f.snrDB
    }
}
