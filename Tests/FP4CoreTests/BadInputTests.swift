import XCTest
@testable import FP4Core

/// Spec §3: non-finite values, shapes that do not divide into blocks, invalid
/// combinations, empty tensors. Nothing traps; errors are FP4Error values.
final class BadInputTests: XCTestCase {

    // MARK: Non-finite: propagate

    func testNaNPropagatesToItsRowGroupOnly() throws {
        let x: [Float] = [
            6,   3,    -1,  0.5,
            1, .nan,    2,  3,
            -.infinity, 1, 1, 1,
            .infinity, -.nan, 0, 0,
        ]
        let q = Quantizer(format: .e2m1, granularity: .row, scaleRule: .absmax)
        let (out, bad) = try q.fakeQuantize(x, rows: 4, cols: 4)
        XCTAssertEqual(bad, 3, "rows 1, 2, 3 hold non-finite values")
        assertBitwiseEqual(Array(out[0..<4]), [6, 3, -1, 0.5], "the finite row is quantized normally")
        for i in 4..<16 { XCTAssertTrue(out[i].isNaN, "index \(i) is in a non-finite group: got \(out[i])") }
    }

    func testNaNPropagatesToTheWholeTensor() throws {
        let x: [Float] = [6, 3, -1, 0.5, 1, 2, .nan, 3]
        let q = Quantizer(format: .e2m1, granularity: .tensor, scaleRule: .absmax)
        let (out, bad) = try q.fakeQuantize(x, rows: 2, cols: 4)
        XCTAssertEqual(bad, 1)
        XCTAssertTrue(out.allSatisfy(\.isNaN))
    }

    func testNonFiniteInBlocksAndColumns() throws {
        // 2 × 8, block(4): groups (r0: 0-3, 4-7), (r1: 0-3, 4-7); inf at (0, 5), NaN at (1, 1).
        var x = [Float](repeating: 1.5, count: 16)
        x[0] = 6; x[12] = 6
        x[5] = .infinity; x[9] = .nan
        let qb = Quantizer(format: .e2m1, granularity: .block(4), scaleRule: .absmax)
        let (ob, badB) = try qb.fakeQuantize(x, rows: 2, cols: 8)
        XCTAssertEqual(badB, 2)
        for i in 0..<16 {
            let badGroup = (4..<8).contains(i) || (8..<12).contains(i)
            if badGroup { XCTAssertTrue(ob[i].isNaN, "index \(i)") } else { XCTAssertEqual(ob[i], x[i] == 6 ? 6 : 1.5, "index \(i)") }
        }
        // column: columns 5 and 1 are affected.
        let qc = Quantizer(format: .e2m1, granularity: .column, scaleRule: .absmax)
        let (oc, badC) = try qc.fakeQuantize(x, rows: 2, cols: 8)
        XCTAssertEqual(badC, 2)
        for i in 0..<16 {
            let c = i % 8
            if c == 1 || c == 5 { XCTAssertTrue(oc[i].isNaN, "index \(i)") } else { XCTAssertFalse(oc[i].isNaN, "index \(i)") }
        }
    }

    /// nvfp4: one non-finite block must not change the other blocks (S from the finite ones).
    func testNVFP4NonFiniteBlockLeavesOthersIntact() throws {
        var x = [Float](repeating: 0.5, count: 32)
        x[0] = 6
        x[20] = .nan
        let q = Quantizer(format: .e2m1, granularity: .block(16), scaleRule: .nvfp4)
        let (out, bad) = try q.fakeQuantize(x, rows: 1, cols: 32)
        XCTAssertEqual(bad, 1)
        XCTAssertEqual(out[0], 6)
        XCTAssertEqual(out[1], 0.5)
        for i in 16..<32 { XCTAssertTrue(out[i].isNaN, "index \(i)") }
    }

    // MARK: Non-finite: raise

    func testFakeQuantizeRaiseThrowsNonFinite() {
        let x: [Float] = [1, 2, 3, 4, 5, .nan, 7, .infinity]
        let q = Quantizer(format: .e2m1, granularity: .row, scaleRule: .absmax)
        let e = assertThrowsFP4Error(.nonFinite, try q.fakeQuantize(x, rows: 2, cols: 4, nonFinite: .raise))
        XCTAssertTrue(e?.message.contains("index 5") ?? false, "message names the first flat index 5: \(e?.message ?? "")")
        // Finite input does not throw under .raise.
        XCTAssertNoThrow(try q.fakeQuantize([1, 2, 3, 4], rows: 1, cols: 4, nonFinite: .raise))
    }

    func testPackedQuantizeFailsOnNonFiniteNamingTheFlatIndex() {
        let x: [Float] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, -.infinity, .nan, 1, 1, 1]
        for g in [Granularity.tensor, .row, .block(4)] {
            let q = Quantizer(format: .e2m1, granularity: g, scaleRule: .absmax)
            let e = assertThrowsFP4Error(.nonFinite, try q.quantize(x, rows: 4, cols: 4), g.name)
            XCTAssertTrue(e?.message.contains("index 11") ?? false, "first offending flat index is 11: \(e?.message ?? "")")
        }
    }

    // MARK: Layout errors

    func testBlockNotDividingColumnsIsInvalidArgument() {
        let x = [Float](repeating: 1, count: 12)
        let q = Quantizer(format: .e2m1, granularity: .block(5), scaleRule: .absmax)
        assertThrowsFP4Error(.invalidArgument, try q.fakeQuantize(x, rows: 2, cols: 6))
        assertThrowsFP4Error(.invalidArgument, try q.quantize(x, rows: 2, cols: 6))
        let q16 = Quantizer(format: .e2m1, granularity: .block(16), scaleRule: .e8m0)
        assertThrowsFP4Error(.invalidArgument, try q16.fakeQuantize(x, rows: 1, cols: 12))
    }

    func testBlock2DNeedsBothDimensions() {
        let x = [Float](repeating: 1, count: 12)
        let q = Quantizer(format: .e2m1, granularity: .block2d(2), scaleRule: .absmax)
        assertThrowsFP4Error(.invalidArgument, try q.fakeQuantize(x, rows: 3, cols: 4))  // rows not a multiple
        assertThrowsFP4Error(.invalidArgument, try q.fakeQuantize(x, rows: 4, cols: 3))  // cols not a multiple
        XCTAssertNoThrow(try q.fakeQuantize(x, rows: 2, cols: 6))
    }

    func testNonPositiveBlockSizes() {
        let x = [Float](repeating: 1, count: 4)
        for g in [Granularity.block(0), .block(-2), .block2d(0)] {
            let q = Quantizer(format: .e2m1, granularity: g, scaleRule: .absmax)
            assertThrowsFP4Error(.invalidArgument, try q.fakeQuantize(x, rows: 2, cols: 2), g.name)
        }
    }

    func testNegativeShapeIsInvalidArgument() {
        assertThrowsFP4Error(.invalidArgument, try Granularity.row.layout(rows: -1, cols: 4))
    }

    func testInvalidCombinations() {
        let x = [Float](repeating: 1, count: 4)
        // Scale-only formats hold no elements.
        let q8 = Quantizer(format: .e8m0, granularity: .row, scaleRule: .absmax)
        assertThrowsFP4Error(.invalidArgument, try q8.fakeQuantize(x, rows: 1, cols: 4))
        // nvfp4 scales need e2m1 elements.
        let qn = Quantizer(format: .e1m2, granularity: .block(4), scaleRule: .nvfp4)
        assertThrowsFP4Error(.invalidArgument, try qn.fakeQuantize(x, rows: 1, cols: 4))
    }

    // MARK: Empty tensors are valid

    func testEmptyTensors() throws {
        for g in [Granularity.tensor, .row, .column, .block(16), .block2d(16)] {
            for (rows, cols) in [(0, 0), (0, 16), (16, 0)] {
                let q = Quantizer(format: .e2m1, granularity: g, scaleRule: .absmax)
                let (out, bad) = try q.fakeQuantize([], rows: rows, cols: cols)
                XCTAssertEqual(out.count, 0)
                XCTAssertEqual(bad, 0)
                let (codes, _) = try q.quantize([], rows: rows, cols: cols)
                XCTAssertEqual(codes.count, 0, "\(g.name) [\(rows), \(cols)]")
            }
        }
    }
}
