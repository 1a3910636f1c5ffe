#if canImport(Glibc)
import Glibc
#endif

/// Float32 scratch memory for one call, taken from `ScratchPool` and handed back when the
/// object goes away.
final class Scratch {
    let pointer: UnsafeMutablePointer<Float>
    private let capacity: Int
    init(_ count: Int) { (pointer, capacity) = ScratchPool.take(count) }
    deinit { ScratchPool.give(pointer, capacity: capacity) }
}

/// Large scratch buffers kept for the next call. Fresh memory of this size comes from mmap
/// and is faulted in and zeroed page by page on first touch: for the quartet layer at
/// T = 2048, K = 1024, N = 4096 that was ~5% of the forward+backward time, and the linear
/// layer allocates X_q and W_q buffers of that size on every call. At most
/// `maxSlots` buffers of at least `minPooledBytes` are kept (the largest ones); the pool
/// never returns them to the system (they are reused by the next call of any size that
/// fits). Smaller buffers go straight to malloc. Thread-safe: concurrent calls take
/// different buffers.
enum ScratchPool {
    static let minPooledBytes = 4 << 20
    static let maxSlots = 4

    private static let mutex: UnsafeMutablePointer<pthread_mutex_t> = {
        let m = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
        pthread_mutex_init(m, nil)
        return m
    }()
    nonisolated(unsafe) private static var slots: [(pointer: UnsafeMutablePointer<Float>, capacity: Int)] = []

    /// A buffer of at least `count` floats and its capacity.
    static func take(_ count: Int) -> (UnsafeMutablePointer<Float>, Int) {
        let n = Swift.max(count, 1)
        if n * MemoryLayout<Float>.size >= minPooledBytes {
            pthread_mutex_lock(mutex)
            var best = -1
            for i in slots.indices where slots[i].capacity >= n && (best < 0 || slots[i].capacity < slots[best].capacity) {
                best = i
            }
            let found = best >= 0 ? slots.remove(at: best) : nil
            pthread_mutex_unlock(mutex)
            if let found { return found }
        }
        return (.allocate(capacity: n), n)
    }

    static func give(_ p: UnsafeMutablePointer<Float>, capacity: Int) {
        guard capacity * MemoryLayout<Float>.size >= minPooledBytes else {
            p.deallocate()
            return
        }
        pthread_mutex_lock(mutex)
        slots.append((p, capacity))
        var evicted: UnsafeMutablePointer<Float>?
        if slots.count > maxSlots, let i = slots.indices.min(by: { slots[$0].capacity < slots[$1].capacity }) {
            evicted = slots.remove(at: i).pointer
        }
        pthread_mutex_unlock(mutex)
        evicted?.deallocate()
    }
}
