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

/// Scratch buffers kept for the next call. Fresh memory of these sizes comes from mmap, or
/// from a heap top that glibc trims back to the system once enough of it is free, and is then
/// faulted in and zeroed page by page on first touch. For the quartet layer at T = 2048,
/// K = 1024, N = 4096 that was ~5% of the forward+backward time; for the wang2025 layer at
/// the training shapes (T = 2048, K = 128) the X_q buffers of forward and backward caused
/// ~580 page faults per call and made the call 1.5x slower. Two size classes are kept:
/// up to `maxLarge` buffers of at least `minLargeBytes` (the largest ones) and up to
/// `maxSmall` buffers from `minPooledBytes` to `minLargeBytes` (at most 64 MB in all). The
/// pool never returns them to the system; a call takes the smallest kept buffer that fits
/// and is at most 4x its request (so a small call does not take a large buffer away).
/// Smaller buffers go straight to malloc. Thread-safe: concurrent calls take different buffers.
enum ScratchPool {
    static let minPooledBytes = 64 << 10
    static let minLargeBytes = 4 << 20
    static let maxLarge = 4
    static let maxSmall = 16

    private static let mutex: UnsafeMutablePointer<pthread_mutex_t> = {
        let m = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
        pthread_mutex_init(m, nil)
        return m
    }()
    nonisolated(unsafe) private static var slots: [(pointer: UnsafeMutablePointer<Float>, capacity: Int)] = []

    /// Capacities (in floats) of the buffers kept now, for tests.
    static var keptCapacities: [Int] {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return slots.map(\.capacity)
    }

    private static func isLarge(_ capacity: Int) -> Bool { capacity * MemoryLayout<Float>.size >= minLargeBytes }

    /// A buffer of at least `count` floats and its capacity.
    static func take(_ count: Int) -> (UnsafeMutablePointer<Float>, Int) {
        let n = Swift.max(count, 1)
        if n * MemoryLayout<Float>.size >= minPooledBytes {
            pthread_mutex_lock(mutex)
            var best = -1
            for i in slots.indices where slots[i].capacity >= n && slots[i].capacity / 4 <= n
                && (best < 0 || slots[i].capacity < slots[best].capacity) {
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
        let large = isLarge(capacity)
        pthread_mutex_lock(mutex)
        slots.append((p, capacity))
        var evicted: UnsafeMutablePointer<Float>?
        let inClass = slots.indices.filter { isLarge(slots[$0].capacity) == large }
        if inClass.count > (large ? maxLarge : maxSmall), let i = inClass.min(by: { slots[$0].capacity < slots[$1].capacity }) {
            evicted = slots.remove(at: i).pointer
        }
        pthread_mutex_unlock(mutex)
        evicted?.deallocate()
    }
}
