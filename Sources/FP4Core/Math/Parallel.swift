import Dispatch
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Parallel loops over chunks of rows or groups. Every kernel writes disjoint outputs per
/// chunk, or reduces with an order-independent operation (max, integer sums), and draws
/// random numbers by element index, so results do not depend on the chunking or the
/// thread count: 1 and N threads are bit-identical.
public enum Parallel {
    /// Worker count used by every kernel; set from Python via the ABI or the
    /// FP4SWIFT_NUM_THREADS environment variable. Defaults to the online CPU count.
    nonisolated(unsafe) public static var threadCount: Int = defaultThreadCount()

    static func defaultThreadCount() -> Int {
        if let env = getenv("FP4SWIFT_NUM_THREADS"), let n = Int(String(cString: env)), n > 0 {
            return n
        }
        return Swift.max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))))
    }

    /// Calls `body(range)` for consecutive ranges of `0..<count` of about `grain` items
    /// (the last one shorter), on up to `threadCount` workers.
    public static func forChunks(count: Int, grain: Int, _ body: (Range<Int>) -> Void) {
        guard count > 0 else { return }
        let g = Swift.max(1, grain)
        let chunks = (count + g - 1) / g
        let workers = Swift.min(threadCount, chunks)
        if workers <= 1 {
            for c in 0..<chunks { body((c * g)..<Swift.min(count, (c + 1) * g)) }
            return
        }
        // Workers take the next chunk from a shared counter: on a shared machine, a worker
        // that is descheduled leaves its chunks to the others instead of holding up the join.
        // The chunks themselves are fixed, so results do not depend on who runs which.
        let next = ChunkCounter()
        withoutActuallyEscaping(body) { body in
            DispatchQueue.concurrentPerform(iterations: workers) { _ in
                while true {
                    let c = next.value.wrappingAdd(1, ordering: .relaxed).oldValue
                    guard c < chunks else { break }
                    body((c * g)..<Swift.min(count, (c + 1) * g))
                }
            }
        }
    }

    /// `forChunks` for bodies that report success: true when every chunk's body returned true
    /// (every chunk runs either way). Each chunk writes its own flag, so no synchronization.
    public static func allChunks(count: Int, grain: Int, _ body: (Range<Int>) -> Bool) -> Bool {
        guard count > 0 else { return true }
        let g = Swift.max(1, grain)
        let chunks = (count + g - 1) / g
        let ok = UnsafeMutablePointer<Bool>.allocate(capacity: chunks)
        ok.initialize(repeating: true, count: chunks)
        defer { ok.deallocate() }
        forChunks(count: count, grain: g) { range in ok[range.lowerBound / g] = body(range) }
        for c in 0..<chunks where !ok[c] { return false }
        return true
    }

    /// A grain that gives each worker a few chunks of at least `minItems` items.
    public static func grain(count: Int, minItems: Int) -> Int {
        Swift.max(minItems, (count + 4 * threadCount - 1) / (4 * threadCount))
    }
}

/// The next chunk index of one `Parallel.forChunks` call.
final class ChunkCounter: Sendable {
    let value = Atomic<Int>(0)
}
