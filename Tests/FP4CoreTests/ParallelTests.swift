import XCTest
@testable import FP4Core

/// `Parallel.allChunks`: every chunk runs, once, whatever the thread count; the result is true
/// only when every chunk's body returned true.
final class ParallelTests: XCTestCase {

    func testAllChunksRunsEveryChunkAndReportsAnyFailure() {
        let before = Parallel.threadCount
        defer { Parallel.threadCount = before }
        for threads in [1, 2, 5] {
            Parallel.threadCount = threads
            for (count, grain) in [(0, 4), (1, 1), (10, 3), (100, 7), (64, 64)] {
                for failing in [nil, 0, count / 2, count - 1] as [Int?] {
                    let seen = UnsafeMutablePointer<Int>.allocate(capacity: Swift.max(count, 1))
                    seen.initialize(repeating: 0, count: Swift.max(count, 1))
                    defer { seen.deallocate() }
                    let ok = Parallel.allChunks(count: count, grain: grain) { range in
                        for i in range { seen[i] += 1 }
                        return failing.map { !range.contains($0) } ?? true
                    }
                    for i in 0..<count { XCTAssertEqual(seen[i], 1, "item \(i), \(threads) threads") }
                    XCTAssertEqual(ok, failing == nil || count == 0, "count \(count) grain \(grain) failing \(String(describing: failing))")
                }
            }
        }
    }
}
