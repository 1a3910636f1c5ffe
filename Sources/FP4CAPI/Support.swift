import FP4CABI
import FP4Core
#if canImport(Glibc)
import Glibc
#endif

// Shared plumbing of the exports: error mapping and argument decoding. No numerics.

/// Runs `body`, turning any thrown error into a status code and the thread's last-error text.
@inline(__always)
func guarded(_ body: () throws -> Void) -> Int32 {
    do {
        try body()
        return FP4SWIFT_OK
    } catch let e as FP4Error {
        fp4swift_internal_set_error(e.message)
        switch e.kind {
        case .invalidArgument: return FP4SWIFT_INVALID_ARGUMENT
        case .nonFinite: return FP4SWIFT_NONFINITE
        case .invalidState: return FP4SWIFT_INVALID_STATE
        }
    } catch {
        fp4swift_internal_set_error("internal error: \(error)")
        return FP4SWIFT_INTERNAL
    }
}

func invalid(_ message: String) -> FP4Error { FP4Error.invalid(message) }

/// A non-null pointer, or an error naming the argument.
@inline(__always)
func required<T>(_ p: UnsafePointer<T>?, _ name: String) throws -> UnsafePointer<T> {
    guard let p else { throw invalid("\(name) must not be NULL") }
    return p
}

@inline(__always)
func required<T>(_ p: UnsafeMutablePointer<T>?, _ name: String) throws -> UnsafeMutablePointer<T> {
    guard let p else { throw invalid("\(name) must not be NULL") }
    return p
}

/// Checks a [rows, cols] shape and returns its element count (overflow-checked).
func elementCount(_ rows: Int64, _ cols: Int64) throws -> Int {
    guard rows >= 0, cols >= 0 else { throw invalid("shape must be non-negative, got [\(rows), \(cols)]") }
    let (n, overflow) = Int(rows).multipliedReportingOverflow(by: Int(cols))
    guard !overflow else { throw invalid("shape [\(rows), \(cols)] is too large") }
    return n
}

func checkLength(_ n: Int, atLeast need: Int, _ name: String) throws {
    guard n >= need else { throw invalid("\(name) holds \(n) entries, needs \(need)") }
}

func format(_ index: Int32) throws -> MiniFloatFormat {
    guard index >= 0, Int(index) < MiniFloatFormat.all.count else {
        throw invalid("unknown format index \(index)")
    }
    return MiniFloatFormat.all[Int(index)]
}

func rounding(_ index: Int32) throws -> Rounding {
    guard let r = Rounding(rawValue: Int(index)) else { throw invalid("unknown rounding index \(index)") }
    return r
}

/// The Swift quantizer a C descriptor describes.
func quantizer(_ qp: UnsafePointer<fp4swift_quantizer>?) throws -> (Quantizer, NonFinitePolicy) {
    let q = try required(qp, "quantizer").pointee
    let granularity: Granularity
    switch q.granularity {
    case FP4SWIFT_GRANULARITY_TENSOR: granularity = .tensor
    case FP4SWIFT_GRANULARITY_ROW: granularity = .row
    case FP4SWIFT_GRANULARITY_COLUMN: granularity = .column
    case FP4SWIFT_GRANULARITY_BLOCK: granularity = .block(Int(q.block))
    case FP4SWIFT_GRANULARITY_BLOCK2D: granularity = .block2d(Int(q.block))
    default: throw invalid("unknown granularity index \(q.granularity)")
    }
    guard let rule = ScaleRule(rawValue: Int(q.scale_rule)) else { throw invalid("unknown scale rule index \(q.scale_rule)") }
    guard let policy = NonFinitePolicy(rawValue: Int(q.nonfinite)) else { throw invalid("unknown non-finite policy \(q.nonfinite)") }
    let quant = Quantizer(format: try format(q.format), granularity: granularity, scaleRule: rule,
                          rounding: try rounding(q.rounding), seed: q.seed, stochasticBits: Int(q.stochastic_bits))
    try quant.validate()
    return (quant, policy)
}

/// Name tables of the ABI enumerations, indexed like the C constants. Kept as C strings
/// for the life of the process, so fp4swift_name can hand out stable pointers.
let nameTables: [[UnsafeMutablePointer<CChar>?]] = [
    MiniFloatFormat.all.map { strdup($0.name) },
    Granularity.kindNames.map { strdup($0) },
    ScaleRule.allCases.map { strdup($0.name) },
    Rounding.allCases.map { strdup($0.name) },
    GEMMPath.allCases.map { strdup($0.name) },
]
