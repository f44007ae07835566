import LoRAKit

/// Counters of the server, rendered as Prometheus text (`GET /metrics`). Thread-safe.
public final class ServeMetrics: Sendable {
    /// Tokens per second are computed over this many recent seconds.
    public static let window = 10.0

    private struct Data {
        var started = monotonicSeconds()
        var requests: [String: Int] = [:]            // admitted, by served model name
        var finished: [String: Int] = [:]            // "model\u{0}reason"
        var rejected: [String: Int] = [:]            // by reason
        var promptTokens: [String: Int] = [:]
        var generated: [String: Int] = [:]
        var recent: [(t: Double, tokens: [String: Int])] = []
        var steps = 0
        var stepSeconds = 0.0
        var stepRows = 0
        var stepSequences = 0
        var ttftSum = 0.0
        var ttftCount = 0
        var queueSum = 0.0
        var stepRowsMax = 0
    }
    private let data = Locked(Data())

    public init() {}

    func admitted(model: String, promptTokens: Int, queueSeconds: Double) {
        data.withLock { d in
            d.requests[model, default: 0] += 1
            d.promptTokens[model, default: 0] += promptTokens
            d.queueSum += queueSeconds
        }
    }

    func finished(model: String, reason: String) {
        data.withLock { $0.finished[model + "\u{0}" + reason, default: 0] += 1 }
    }

    /// A request refused before it was queued (`bad_request`, `unauthorized`, `queue_full`, …).
    public func rejected(_ reason: String) {
        data.withLock { $0.rejected[reason, default: 0] += 1 }
    }

    func firstToken(seconds: Double) {
        data.withLock { d in
            d.ttftSum += seconds
            d.ttftCount += 1
        }
    }

    func step(seconds: Double, rows: Int, sequences: Int, tokens: [String: Int]) {
        let now = monotonicSeconds()
        data.withLock { d in
            d.steps += 1
            d.stepSeconds += seconds
            d.stepRows += rows
            d.stepRowsMax = max(d.stepRowsMax, rows)
            d.stepSequences += sequences
            for (k, v) in tokens { d.generated[k, default: 0] += v }
            d.recent.append((now, tokens))
            if let first = d.recent.firstIndex(where: { $0.t > now - ServeMetrics.window }), first > 0 {
                d.recent.removeFirst(first)
            }
        }
    }

    /// Generated tokens per second over the last `window` seconds (or since the start, if shorter), by model.
    public func tokensPerSecond() -> (total: Double, byModel: [String: Double]) {
        let now = monotonicSeconds()
        return data.withLock { d in
            let span = min(ServeMetrics.window, max(now - d.started, 1e-3))
            var by: [String: Double] = [:]
            for r in d.recent where r.t > now - ServeMetrics.window {
                for (k, v) in r.tokens { by[k, default: 0] += Double(v) }
            }
            var total = 0.0
            for (k, v) in by {
                by[k] = v / span
                total += v / span
            }
            return (total, by)
        }
    }

    /// The Prometheus text exposition (version 0.0.4) of every counter; `models` lists every served model
    /// so that each has its series even before its first request.
    public func prometheus(queueLength: Int, running: Int, maxSequences: Int, models: [String]) -> String {
        let rates = tokensPerSecond()
        return data.withLock { d in
            var out = ""
            func esc(_ s: String) -> String {
                var r = ""
                for ch in s {
                    switch ch {
                    case "\\": r += "\\\\"
                    case "\"": r += "\\\""
                    case "\n": r += "\\n"
                    default: r.append(ch)
                    }
                }
                return r
            }
            func num(_ v: Double) -> String {
                v == v.rounded() && abs(v) < 1e15 ? String(Int64(v)) : String(v)
            }
            func metric(_ name: String, _ type: String, _ help: String, _ samples: [(String, Double)]) {
                out += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n"
                for (labels, v) in samples { out += "\(name)\(labels.isEmpty ? "" : "{\(labels)}") \(num(v))\n" }
            }
            let names = Array(Set(models).union(d.requests.keys).union(d.generated.keys)).sorted()
            func per(_ dict: [String: Int]) -> [(String, Double)] {
                names.map { ("model=\"\(esc($0))\"", Double(dict[$0] ?? 0)) }
            }
            metric("lorakit_requests_total", "counter", "Requests admitted to a sequence, by served model (base or adapter).", per(d.requests))
            metric("lorakit_requests_finished_total", "counter",
                   "Requests ended, by model and reason (stop, length, cancelled: client gone, error).",
                   d.finished.sorted { $0.key < $1.key }.map { k, v in
                       let parts = k.split(separator: "\u{0}", omittingEmptySubsequences: false)
                       return ("model=\"\(esc(String(parts[0])))\",reason=\"\(esc(String(parts[1])))\"", Double(v))
                   })
            metric("lorakit_requests_rejected_total", "counter",
                   "Requests refused before queueing, by reason (bad_request, unauthorized, queue_full, …).",
                   d.rejected.sorted { $0.key < $1.key }.map { ("reason=\"\(esc($0.key))\"", Double($0.value)) })
            metric("lorakit_queue_length", "gauge", "Requests waiting for a free sequence.", [("", Double(queueLength))])
            metric("lorakit_running_sequences", "gauge", "Requests holding a sequence.", [("", Double(running))])
            metric("lorakit_max_sequences", "gauge", "Sequences the engine holds at once.", [("", Double(maxSequences))])
            metric("lorakit_prompt_tokens_total", "counter", "Prompt tokens of admitted requests, by model.", per(d.promptTokens))
            metric("lorakit_generation_tokens_total", "counter", "Tokens generated, by model.", per(d.generated))
            metric("lorakit_generation_tokens_per_second", "gauge",
                   "Tokens generated per second over the last \(Int(ServeMetrics.window)) s, all models.", [("", rates.total)])
            metric("lorakit_model_generation_tokens_per_second", "gauge",
                   "Tokens generated per second over the last \(Int(ServeMetrics.window)) s, by model.",
                   names.map { ("model=\"\(esc($0))\"", rates.byModel[$0] ?? 0) })
            metric("lorakit_steps_total", "counter", "Engine steps (one token for every running sequence, prompts of new ones).", [("", Double(d.steps))])
            metric("lorakit_step_seconds_total", "counter", "Seconds spent in engine steps.", [("", d.stepSeconds)])
            metric("lorakit_step_tokens_total", "counter", "Tokens evaluated by engine steps (prefill and decode).", [("", Double(d.stepRows))])
            metric("lorakit_step_tokens_max", "gauge", "The most tokens one engine step evaluated (at most --max-batch-tokens, but for decoding sequences).",
                   [("", Double(d.stepRowsMax))])
            metric("lorakit_step_sequences_total", "counter", "Sum over steps of the sequences in the step.", [("", Double(d.stepSequences))])
            metric("lorakit_time_to_first_token_seconds_sum", "counter", "Sum of times from queueing to the first generated token.", [("", d.ttftSum)])
            metric("lorakit_time_to_first_token_seconds_count", "counter", "Requests that generated a first token.", [("", Double(d.ttftCount))])
            metric("lorakit_queue_wait_seconds_sum", "counter", "Sum of times from queueing to admission.", [("", d.queueSum)])
            metric("lorakit_uptime_seconds", "gauge", "Seconds since the server started.", [("", monotonicSeconds() - d.started)])
            return out
        }
    }
}
