// A model's chat template: parsed once, bound to the tokenizer's BOS/EOS spellings, rendered under the
// model's template limits, with errors naming the model's path. The C ABI (lk_chat_apply), the CLI
// (`generate --chat`) and the trainer (`messages` records) all render through here.
//
// The template comes with the model file, so it is untrusted: a template that does not parse or fails to
// render does not stop the model from loading; only the calls that render it fail (LKError.format / .limit /
// .invalidArgument for raise_exception, naming the model).

import LoRAKitCore
import LoRAKitTokenizer
import LoRAKitTemplates
import Synchronization

/// A chat template bound to a tokenizer's special tokens and named after where it came from.
public struct ChatFormatter: Sendable {
    public let template: ChatTemplate
    /// `bos_token` and `eos_token`: the tokenizer's BOS and EOS spellings, when it has them.
    public let variables: [String: TemplateValue]
    /// Names the template's origin in errors (a model's path).
    public let source: String

    public init(template: ChatTemplate, tokenizer: Tokenizer?, source: String) {
        self.template = template
        self.source = source
        var vars: [String: TemplateValue] = [:]
        if let tok = tokenizer {
            if let b = tok.bos, let s = tok.token(b) { vars["bos_token"] = .string(s) }
            if let e = tok.eos, let s = tok.token(e) { vars["eos_token"] = .string(s) }
        }
        variables = vars
    }

    /// Renders `messages` (see `ChatTemplate.render`); `extra` adds or replaces template variables.
    /// Errors name `source`: `.invalidArgument` when the template raises an exception, `.format` for a render
    /// error, `.limit` when the render exceeds `limits`.
    public func apply(messages: [ChatMessage], addGenerationPrompt: Bool, extra: [String: TemplateValue] = [:],
                      limits: TemplateLimits = .default) throws(LKError) -> String {
        var vars = variables
        for (k, v) in extra { vars[k] = v }
        do {
            return try template.render(messages: messages, addGenerationPrompt: addGenerationPrompt, extra: vars, limits: limits)
        } catch {
            if case .invalidArgument(let m) = error, !m.hasPrefix("TemplateLimits.") {
                throw .invalidArgument("\(source): the chat template raised an exception: \(m)")
            }
            throw error.prefixed("\(source): ")
        }
    }
}

/// A model's parsed chat template (or why it has none) and its limits; thread-safe.
package final class ChatTemplateCache: Sendable {
    let parsed = Mutex<Result<ChatFormatter, LKError>?>(nil)
    let limits = Mutex<TemplateLimits>(.default)
    package init() {}
}

extension LlamaModel {
    /// The limits of this model's chat-template renders when a call gives none (initially
    /// `TemplateLimits.default`). Setting them is thread-safe and applies to later renders;
    /// `maxTemplateBytes` applies when the template is first parsed.
    public var chatTemplateLimits: TemplateLimits {
        get { chatCache.limits.withLock { $0 } }
        set { chatCache.limits.withLock { $0 = newValue } }
    }

    /// Changes `chatTemplateLimits` atomically (a read-modify-write under the model's lock).
    public func updateChatTemplateLimits(_ body: (inout TemplateLimits) -> Void) {
        chatCache.limits.withLock { body(&$0) }
    }

    /// Reads one of `chatTemplateLimits` and, when `newValue` is given, replaces it atomically, for later renders.
    /// Returns the value in force before the call.
    /// - Throws: `.invalidArgument` naming the field when the new limits do not validate (`TemplateLimits.validate`);
    ///   nothing is changed then.
    public func exchangeChatTemplateLimit(_ field: WritableKeyPath<TemplateLimits, Int>, _ newValue: Int?) throws(LKError) -> Int {
        try chatCache.limits.withLock { (limits: inout TemplateLimits) throws(LKError) -> Int in
            let old = limits[keyPath: field]
            if let newValue {
                var changed = limits
                changed[keyPath: field] = newValue
                try changed.validate()
                limits = changed
            }
            return old
        }
    }

    /// The model's chat template bound to its tokenizer's special tokens, parsed on first use and cached
    /// (a parse error too).
    /// - Throws: `.unsupported` when the model has no chat template; `.format` (a syntax error) or `.limit`
    ///   (a template over `maxTemplateBytes`), naming the model's path.
    public func chatFormatter() throws(LKError) -> ChatFormatter {
        if let cached = chatCache.parsed.withLock({ $0 }) { return try cached.get() }
        let result: Result<ChatFormatter, LKError>
        if let src = chatTemplate {
            do {
                let t = try ChatTemplate(src, limits: chatTemplateLimits)
                result = .success(ChatFormatter(template: t, tokenizer: tokenizer, source: source))
            } catch {
                result = .failure(error.prefixed("\(source): "))
            }
        } else {
            result = .failure(.unsupported("\(source): the model has no chat template (tokenizer.chat_template)"))
        }
        chatCache.parsed.withLock { $0 = result }
        return try result.get()
    }

    /// Renders `messages` with the model's chat template, as transformers' `apply_chat_template(messages,
    /// tokenize=False, add_generation_prompt:)` does: the template also sees `bos_token` and `eos_token` (the
    /// tokenizer's) and every entry of `extra`. `limits` (default: `chatTemplateLimits`) bound the render.
    /// - Throws: as `chatFormatter()`, and as `ChatFormatter.apply` for the render; every message names the
    ///   model's path. The model stays usable after any of them.
    public func applyChatTemplate(messages: [ChatMessage], addGenerationPrompt: Bool,
                                  extra: [String: TemplateValue] = [:], limits: TemplateLimits? = nil) throws(LKError) -> String {
        try chatFormatter().apply(messages: messages, addGenerationPrompt: addGenerationPrompt, extra: extra,
                                  limits: limits ?? chatTemplateLimits)
    }
}
