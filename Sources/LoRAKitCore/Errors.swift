/// Errors raised by the LoRAKit core. The C ABI maps each case to an `lk_status` code and keeps the
/// message in a thread-local buffer read by `lk_last_error()`.
public enum LKError: Error, CustomStringConvertible, Equatable {
    /// A caller argument is wrong (NULL, negative size, out of range, NaN where a number is required).
    case invalidArgument(String)
    /// Shapes or dtypes of tensors do not fit together.
    case shapeMismatch(String)
    /// The requested feature or dtype is not supported.
    case unsupported(String)
    /// A file could not be opened, read, written or renamed.
    case io(String)
    /// A file was read but its content is malformed (truncated, corrupt, inconsistent).
    case format(String)
    /// An allocation failed or would exceed a sane limit.
    case outOfMemory(String)
    /// A handle was NULL, already freed, or of another kind.
    case invalidHandle(String)
    /// A plugin's ABI does not match the host's.
    case abiMismatch(String)
    /// Something that should not happen did; a bug in LoRAKit.
    case `internal`(String)

    public var message: String {
        switch self {
        case .invalidArgument(let m), .shapeMismatch(let m), .unsupported(let m), .io(let m),
             .format(let m), .outOfMemory(let m), .invalidHandle(let m), .abiMismatch(let m),
             .internal(let m):
            return m
        }
    }

    public var description: String { message }
}

/// Multiply sizes, failing instead of trapping on overflow.
@inlinable
public func checkedProduct(_ dims: [Int], what: String) throws(LKError) -> Int {
    var n = 1
    for d in dims {
        guard d >= 0 else { throw .invalidArgument("\(what): negative dimension \(d) in \(dims)") }
        let (p, o) = n.multipliedReportingOverflow(by: d)
        guard !o else { throw .invalidArgument("\(what): size overflow for shape \(dims)") }
        n = p
    }
    return n
}
