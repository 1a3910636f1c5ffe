/// Errors the core reports instead of trapping. The C ABI maps `kind` to a status code
/// and `message` to the thread's last-error text.
public struct FP4Error: Error, Sendable, CustomStringConvertible {
    public enum Kind: Sendable {
        /// An argument is outside what the function accepts (shape, name, range).
        case invalidArgument
        /// Input holds NaN or ±inf where the operation cannot represent it.
        case nonFinite
        /// A state object was used in a way its life cycle does not allow.
        case invalidState
    }
    public let kind: Kind
    public let message: String
    public init(_ kind: Kind, _ message: String) {
        self.kind = kind
        self.message = message
    }
    public var description: String { message }

    public static func invalid(_ message: String) -> FP4Error { FP4Error(.invalidArgument, message) }
}
