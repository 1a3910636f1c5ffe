import FP4ISA

/// Batches of `CounterRNG` uniforms for the stochastic-rounding kernels: 8 lanes of counters
/// stepped together, out[8·i + l] = uniform(base[l] + i·step).
///
/// Each draw is two 64-bit multiplies (SplitMix64's mix). The library is compiled for AVX2,
/// which has no 64-bit lane multiply: LLVM builds each from three 32-bit ones plus shifts.
/// AVX-512 DQ (`vpmullq`) multiplies 8 lanes in one instruction, so on such CPUs the e2m1
/// stochastic code kernel (nvfp4's dY) fetches a row's draws at once from
/// `fp4isa_counter_uniforms_avx512dq`; Quartet's AVX-512 backward kernels compute theirs in
/// registers the same way (QuartetWideUnits.swift). Integer arithmetic only: both ways give
/// the same bits, which the tests check.
enum CounterDraws {
    /// True when the stochastic kernels should take their draws in batches from the AVX-512
    /// kernel: the CPU has AVX-512 DQ and the packed GEMMs run on the `avx512vnni` path
    /// (FP4SWIFT_GEMM_ISA=avx2 or generic keeps the draws in the AVX2 Swift code, so tests
    /// cover both). Read once per kernel call.
    static var batched: Bool {
        guard fp4isa_cpu_has(FP4ISA_AVX512DQ) != 0 else { return false }
        return ((try? PackedGEMM.selectedPath()) ?? .generic) == .avx512vnni
    }

    /// Longest row whose draws a kernel buffers at once (256 KB of floats per thread); longer
    /// rows keep the unbatched draws rather than allocate in proportion to the input.
    static let maxRowLength = 1 << 16

    /// out[8·i + l] = CounterRNG uniform of counter base[l] + i·step, i < rows. Only when
    /// `batched`; `out` holds 8·rows floats.
    @inline(__always)
    static func fill(_ out: UnsafeMutablePointer<Float>, base: SIMD8<UInt64>, step: UInt64, rows: Int) {
        var b = base
        withUnsafePointer(to: &b) { p in
            p.withMemoryRebound(to: UInt64.self, capacity: 8) {
                fp4isa_counter_uniforms_avx512dq($0, step, Int64(rows), out)
            }
        }
    }

    /// out[j] = CounterRNG.uniform(key: key, index: first + j) for j < count, rounded up to a
    /// multiple of 8 (a row's draws: consecutive flat indices). Only when `batched`.
    static func fillConsecutive(_ out: UnsafeMutablePointer<Float>, key: UInt64, first: Int, count: Int) {
        let gamma = CounterRNG.gamma
        let c0 = key &+ (UInt64(bitPattern: Int64(first)) &+ 1) &* gamma
        let lanes = SIMD8<UInt64>(repeating: c0) &+ SIMD8<UInt64>(0, 1, 2, 3, 4, 5, 6, 7) &* gamma
        fill(out, base: lanes, step: 8 &* gamma, rows: (count + 7) / 8)
    }

    /// The same draws in Swift SIMD (the reference the batched kernel must equal).
    static func fillPortable(_ out: UnsafeMutablePointer<Float>, base: SIMD8<UInt64>, step: UInt64, rows: Int) {
        var c = base
        for i in 0..<rows {
            Hadamard.store8(QuartetKernels.uniformsFromCounters(c), out + 8 * i)
            c &+= SIMD8(repeating: step)
        }
    }
}
