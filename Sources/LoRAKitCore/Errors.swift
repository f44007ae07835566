/// Errors raised by the LoRAKit core. The C ABI maps each case to an `lk_status` code and keeps the
/// message in a thread-local buffer read by `lk_last_error()`.
public enum LKError: Error, CustomStringConvertible, Equatable {
    /// A caller argument is wrong (NULL, negative size, out of range, NaN where a number is required).
    case invalidArgument(String)
    /// A field of an options type (`TrainingOptions`, `OptimizerConfig`, `SamplerParams`, …) is out of range
    /// or inconsistent. `field` is the name users see: the C struct field, which is also the Python keyword
    /// (`lr`, `adam_beta2`, `layers[1]`, `sampler.top_k` for a nested one); each front end shows it in its
    /// own terms (`params->lr` in C, `--lr` in the CLI). `problem` follows it: "0 must be in 1...4096".
    /// The message is "`field` `problem`".
    case invalidOption(field: String, problem: String)
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
    /// Something that should not happen did; a bug in LoRAKit.
    case `internal`(String)
    /// A configured limit was reached: time, work, memory or size (e.g. a chat template's budget,
    /// `TemplateLimits`). Nothing was changed; the same call with higher limits may succeed.
    case limit(String)

    public var message: String {
        switch self {
        case .invalidArgument(let m), .shapeMismatch(let m), .unsupported(let m), .io(let m),
             .format(let m), .outOfMemory(let m), .internal(let m), .limit(let m):
            return m
        case .invalidOption(let field, let problem):
            return "\(field) \(problem)"
        }
    }

    /// This error with an option's field renamed by `name` (a front end's spelling of the field); other
    /// errors are returned as they are.
    public func namingField(_ name: (String) -> String) -> LKError {
        guard case .invalidOption(let field, let problem) = self else { return self }
        return .invalidOption(field: name(field), problem: problem)
    }

    public var description: String { message }

    /// The same error with `prefix` before its message (e.g. the path of the file it concerns); an option
    /// error keeps its field first, as it is.
    public func prefixed(_ prefix: String) -> LKError {
        switch self {
        case .invalidArgument(let m): return .invalidArgument(prefix + m)
        case .shapeMismatch(let m): return .shapeMismatch(prefix + m)
        case .unsupported(let m): return .unsupported(prefix + m)
        case .io(let m): return .io(prefix + m)
        case .format(let m): return .format(prefix + m)
        case .outOfMemory(let m): return .outOfMemory(prefix + m)
        case .invalidOption: return self  // its field stays first
        case .internal(let m): return .internal(prefix + m)
        case .limit(let m): return .limit(prefix + m)
        }
    }
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
