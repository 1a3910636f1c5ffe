import XCTest
@testable import FP4Core

/// The scratch pool hands back kept buffers and stays bounded (Math/Scratch.swift).
final class ScratchPoolTests: XCTestCase {
    private let floatsPerMB = (1 << 20) / MemoryLayout<Float>.size

    func testSmallBufferIsReusedByTheNextCallOfASimilarSize() {
        let (p, cap) = ScratchPool.take(floatsPerMB)
        XCTAssertGreaterThanOrEqual(cap, floatsPerMB)
        ScratchPool.give(p, capacity: cap)
        let (q, cap2) = ScratchPool.take(floatsPerMB - 100)
        XCTAssertEqual(q, p, "a kept 1 MB buffer serves the next call that fits")
        XCTAssertEqual(cap2, cap)
        ScratchPool.give(q, capacity: cap2)
    }

    func testARequestFarBelowAKeptBufferGetsItsOwn() {
        let (big, capBig) = ScratchPool.take(3 * floatsPerMB)
        ScratchPool.give(big, capacity: capBig)
        let (small, capSmall) = ScratchPool.take(floatsPerMB / 2)
        XCTAssertNotEqual(small, big, "a call below a quarter of a kept buffer does not take it")
        XCTAssertEqual(capSmall, floatsPerMB / 2)
        ScratchPool.give(small, capacity: capSmall)
    }

    func testBuffersBelowThePoolThresholdAreNotKept() {
        let before = ScratchPool.keptCapacities.count
        let (p, cap) = ScratchPool.take(16)
        ScratchPool.give(p, capacity: cap)
        XCTAssertEqual(ScratchPool.keptCapacities.count, before)
    }

    func testThePoolKeepsAtMostItsSlotsPerSizeClass() {
        var taken: [(UnsafeMutablePointer<Float>, Int)] = []
        for i in 0..<(ScratchPool.maxSmall + 5) { taken.append(ScratchPool.take(floatsPerMB / 8 + i)) }
        for (p, cap) in taken { ScratchPool.give(p, capacity: cap) }
        let minLarge = ScratchPool.minLargeBytes / MemoryLayout<Float>.size
        let small = ScratchPool.keptCapacities.filter { $0 < minLarge }
        XCTAssertLessThanOrEqual(small.count, ScratchPool.maxSmall)
        XCTAssertTrue(ScratchPool.keptCapacities.filter { $0 >= minLarge }.count <= ScratchPool.maxLarge)
    }

    func testScratchObjectsReturnTheirBufferWhenReleased() {
        var first: UnsafeMutablePointer<Float>?
        do {
            let s = Scratch(2 * floatsPerMB)
            s.pointer[0] = 1  // usable memory
            first = s.pointer
        }
        let again = Scratch(2 * floatsPerMB)
        XCTAssertEqual(again.pointer, first)
    }
}
