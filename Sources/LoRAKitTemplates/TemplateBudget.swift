// The evaluation budget of one render (TemplateLimits, in ChatTemplate.swift, holds the numbers).
//
// A chat template comes with a model file, so it is code from a stranger: every unit of work and every byte
// of every intermediate string or list is charged here *before* it is done or allocated, with sizes computed
// in saturating arithmetic (an overflowing size becomes Int.max, which no budget admits). Running out is an
// `LKError.limit` naming the operation, its size and the limit's field, and leaves nothing behind.

import LoRAKitCore
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// `a + b`, or Int.max when it overflows (sizes and counts, which are never negative).
@inline(__always)
func satAdd(_ a: Int, _ b: Int) -> Int {
    let (r, o) = a.addingReportingOverflow(b)
    return o ? Int.max : r
}

/// `a * b`, or Int.max when it overflows (sizes and counts, which are never negative).
@inline(__always)
func satMul(_ a: Int, _ b: Int) -> Int {
    let (r, o) = a.multipliedReportingOverflow(by: b)
    return o ? Int.max : r
}

/// `s` repeated `times` times in one allocation, filled by doubling copies (O(log times) memcpys; the stdlib's
/// `String(repeating:count:)` appends once per repetition, which for `'x' * 900000000` takes longer than any
/// time limit without giving the budget a chance to stop it: fuzz finding timeout-6591f916). The caller has
/// charged the size.
func repeated(_ s: String, _ times: Int) -> String {
    let unit = Array(s.utf8)
    let (total, overflow) = unit.count.multipliedReportingOverflow(by: max(0, times))
    guard !overflow, total > 0 else { return "" }
    return String(unsafeUninitializedCapacity: total) { buf in
        guard let base = buf.baseAddress else { return 0 }
        unit.withUnsafeBufferPointer { u in
            if let src = u.baseAddress { base.initialize(from: src, count: u.count) }
        }
        var filled = unit.count
        while filled < total {
            let n = min(filled, total - filled)
            (base + filled).initialize(from: base, count: n)
            filled += n
        }
        return total
    }
}

/// Python's `len(s)`: the number of code points, counted over the UTF-8 bytes (every byte but continuation
/// bytes starts one), which vectorizes; `s.unicodeScalars.count` decodes each scalar (10× slower).
func scalarCount(_ s: String) -> Int {
    var s = s
    return s.withUTF8 { buf in
        var n = 0
        for b in buf where b & 0xC0 != 0x80 { n &+= 1 }
        return n
    }
}

/// Nanoseconds of a monotonic clock.
func monotonicNanoseconds() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
}

/// What one render may still do. Steps are the unit of work: one per statement executed, expression
/// evaluated or loop iteration, one per element a builtin visits (compared, copied, hashed) and one per 16
/// characters it scans. The clock is read every `clockInterval` steps, not per step.
final class JBudget {
    let limits: TemplateLimits
    /// Bytes charged for strings and lists built so far (output included).
    private(set) var bytes = 0
    private(set) var steps = 0
    private(set) var iterations = 0
    /// The deepest recursion (statements, expressions, macro calls) reached.
    var peakDepth = 0
    /// The rendering thread's stack: recursion stops with an error before it runs out, whatever the depth
    /// limits allow (the budget is made on the thread that renders).
    let stack = StackGuard()
    private var checkAt: Int
    private let deadline: UInt64
    static let clockInterval = 1 << 12
    /// What a list element costs (the value itself; strings in it are charged when built).
    static let elementBytes = MemoryLayout<JValue>.stride

    init(_ limits: TemplateLimits) {
        self.limits = limits
        let ns = limits.maxSeconds * 1e9
        let now = monotonicNanoseconds()
        deadline = ns >= 1.8e19 ? UInt64.max : now &+ UInt64(max(0, ns))  // validated finite and ≥ 0
        checkAt = min(JBudget.clockInterval, satAdd(limits.maxSteps, 1))
    }

    /// A resource limit reached (bytes, output, steps, time): `LKError.limit`.
    func limitError(_ loc: JLoc, _ msg: String) -> LKError { .limit("chat template: \(loc.text): \(msg)") }

    /// A structural limit reached (recursion or value depth, loop iterations): `LKError.format`, a template
    /// error as Python's RecursionError is (and as these were before the budget existed).
    func structureError(_ loc: JLoc, _ msg: String) -> LKError { .format("chat template: \(loc.text): \(msg)") }

    /// `structureError` when the rendering thread's stack is nearly used up (checked at every level of
    /// recursion, with the depth limits).
    @inline(__always)
    func checkStack(_ loc: JLoc, _ what: String) throws(LKError) {
        if stack.exhausted {
            throw structureError(loc, "\(what) too deep for this thread's stack (a smaller TemplateLimits depth, or a thread with a larger stack, avoids it)")
        }
    }

    /// Charges `n` steps.
    @inline(__always)
    func step(_ n: Int, _ loc: JLoc) throws(LKError) {
        steps = satAdd(steps, n)
        if steps >= checkAt { try checkpoint(loc) }
    }

    /// Charges the work of scanning `n` characters or bytes.
    @inline(__always)
    func scan(_ n: Int, _ loc: JLoc) throws(LKError) {
        try step(n >> 4, loc)
    }

    func checkpoint(_ loc: JLoc) throws(LKError) {
        if steps > limits.maxSteps {
            throw limitError(loc, "the template did more than \(limits.maxSteps) steps of work (TemplateLimits.maxSteps)")
        }
        if monotonicNanoseconds() > deadline {
            throw limitError(loc, "the template ran for more than \(limits.maxSeconds) s (TemplateLimits.maxSeconds)")
        }
        checkAt = min(satAdd(steps, JBudget.clockInterval), satAdd(limits.maxSteps, 1))
    }

    /// Fails unless `n` more bytes fit in the budget, without charging them: for a result whose exact size is
    /// known only once built, check an upper bound here and charge the real size with `alloc` after.
    func reserve(_ n: Int, _ what: @autoclosure () -> String, _ loc: JLoc) throws(LKError) {
        guard satAdd(bytes, n) <= limits.maxAllocatedBytes else {
            let size = n == Int.max ? "more than \(Int.max)" : "\(n)"
            throw limitError(loc, "\(what()) needs \(size) bytes, more than the \(limits.maxAllocatedBytes - bytes) left of the \(limits.maxAllocatedBytes) bytes a render may allocate for strings and lists (TemplateLimits.maxAllocatedBytes)")
        }
    }

    /// Charges `n` bytes of strings or lists about to be built (and the work of writing them).
    func alloc(_ n: Int, _ what: @autoclosure () -> String, _ loc: JLoc) throws(LKError) {
        try reserve(n, what(), loc)
        bytes += n
        try step(n >> 6, loc)
    }

    /// Charges a list of `count` elements.
    func allocList(_ count: Int, _ what: @autoclosure () -> String, _ loc: JLoc) throws(LKError) {
        try alloc(satMul(count, JBudget.elementBytes), what(), loc)
        try step(count, loc)
    }

    /// Charges one loop iteration.
    func iteration(_ loc: JLoc) throws(LKError) {
        iterations += 1
        guard iterations <= limits.maxLoopIterations else {
            throw structureError(loc, "too many loop iterations (limit \(limits.maxLoopIterations), TemplateLimits.maxLoopIterations)")
        }
        try step(1, loc)
    }
}

/// What one render used, for tests and tuning (`ChatTemplate.measure`).
struct TemplateUsage: Sendable, Equatable {
    var bytes = 0
    var steps = 0
    var iterations = 0
    var depth = 0
    var outputBytes = 0
    var seconds = 0.0
}
