/// How a tensor, viewed as a row-major [rows, cols] matrix, splits into scale groups
/// (numerics.md §2). Every granularity is a tile shape: one scale per `groupRows × groupCols` tile.
public enum Granularity: Sendable, Equatable {
    case tensor
    case row
    case column
    case block(Int)
    case block2d(Int)

    /// Kind names in ABI order (the C FP4SWIFT_GRANULARITY_* indices).
    public static let kindNames = ["tensor", "row", "column", "block", "block2d"]

    public var name: String {
        switch self {
        case .tensor: return "tensor"
        case .row: return "row"
        case .column: return "column"
        case .block(let n): return "block(\(n))"
        case .block2d(let n): return "block2d(\(n))"
        }
    }

    /// The tile layout for a [rows, cols] tensor, or an error when blocks do not divide it.
    public func layout(rows: Int, cols: Int) throws -> GroupLayout {
        guard rows >= 0, cols >= 0 else { throw FP4Error.invalid("shape must be non-negative, got [\(rows), \(cols)]") }
        switch self {
        case .tensor: return GroupLayout(rows: rows, cols: cols, groupRows: rows, groupCols: cols)
        case .row: return GroupLayout(rows: rows, cols: cols, groupRows: 1, groupCols: cols)
        case .column: return GroupLayout(rows: rows, cols: cols, groupRows: rows, groupCols: 1)
        case .block(let n):
            guard n > 0 else { throw FP4Error.invalid("block size must be positive, got \(n)") }
            guard cols % n == 0 else {
                throw FP4Error.invalid("block(\(n)) needs the last dimension to be a multiple of \(n), got \(cols)")
            }
            return GroupLayout(rows: rows, cols: cols, groupRows: 1, groupCols: n)
        case .block2d(let n):
            guard n > 0 else { throw FP4Error.invalid("block2d size must be positive, got \(n)") }
            guard cols % n == 0, rows % n == 0 else {
                throw FP4Error.invalid("block2d(\(n)) needs both dimensions to be multiples of \(n), got [\(rows), \(cols)]")
            }
            return GroupLayout(rows: rows, cols: cols, groupRows: n, groupCols: n)
        }
    }
}

/// Scale-group tiling of a [rows, cols] matrix. Group (tr, tc) covers rows
/// tr·groupRows ..< (tr+1)·groupRows and columns tc·groupCols ..< (tc+1)·groupCols;
/// groups are numbered row-major, `tr · tileCols + tc`.
public struct GroupLayout: Sendable, Equatable {
    public let rows: Int
    public let cols: Int
    public let groupRows: Int
    public let groupCols: Int

    public init(rows: Int, cols: Int, groupRows: Int, groupCols: Int) {
        self.rows = rows
        self.cols = cols
        self.groupRows = Swift.max(groupRows, 1)
        self.groupCols = Swift.max(groupCols, 1)
    }

    public var tileRows: Int { rows / groupRows }
    public var tileCols: Int { cols / groupCols }
    public var groupCount: Int { tileRows * tileCols }
    public var count: Int { rows * cols }

    @inlinable public func group(row r: Int, col c: Int) -> Int {
        (r / groupRows) * tileCols + c / groupCols
    }
}
