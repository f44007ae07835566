import LoRAKitCore
import LoRAKitFormats

/// Pre-tokenizers: the regular-expression splits that cut text into words before BPE, written as
/// hand-made scanners over Unicode scalars that reproduce the regex semantics (leftmost alternative
/// first, greedy runs, the `\s+(?!\S)` look-ahead) of llama.cpp and Hugging Face `tokenizers`.
///
/// Character classes, as in Oniguruma and Python's `regex` module:
/// `\p{L}` = general category L (Lu Ll Lt Lm Lo), `\p{N}` = N (Nd Nl No), `\s` = the Unicode White_Space
/// property. Every scalar falls in exactly one of: letter, number, whitespace, other.
///
/// Patterns (from llama.cpp `src/llama-vocab.cpp` and the models' `tokenizer.json`):
/// - gpt2:   `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
/// - smollm / starcoder: every `\p{N}` isolated first (HF `Digits(individual_digits: true)`), then gpt2
///   on the text between digits.
/// - llama3: `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
/// - qwen2:  the llama3 pattern with `\p{N}` instead of `\p{N}{1,3}`.
public enum PreTokenizer: String, Sendable, CaseIterable {
    case gpt2
    case digitsThenGPT2
    case llama3
    case qwen2

    /// The pre-tokenizer for a llama.cpp `tokenizer.ggml.pre` name, or nil when it is not supported.
    /// A missing name (nil) or "default" is GPT-2's split, as Hugging Face's default ByteLevel does
    /// (llama.cpp's "default" uses an older, different set of regexes for unknown models).
    public static func named(_ name: String?) -> PreTokenizer? {
        switch name {
        case nil, "default", "gpt2", "gpt-2", "mpt", "olmo", "jais", "trillion", "granite-docling", "phi-2":
            return .gpt2
        case "smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b":
            return .digitsThenGPT2
        case "llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2",
             "dbrx", "smaug-bpe":
            return .llama3
        case "qwen2", "stablelm2", "deepseek-r1-qwen", "hunyuan", "megrez":
            return .qwen2
        default:
            return nil
        }
    }

    /// Split `text` into pre-tokens (for tests and inspection; encoding uses the byte ranges directly).
    public func split(_ text: String) -> [String] {
        var s = text
        return s.withUTF8 { buf in
            var scratch = ScalarScratch()
            var out: [String] = []
            forEachPiece(buf, scratch: &scratch) { r in
                out.append(String(decoding: UnsafeBufferPointer(rebasing: buf[r]), as: UTF8.self))
            }
            return out
        }
    }

    /// Call `body` with the byte range of each piece of `bytes` (valid UTF-8), in order.
    func forEachPiece(_ bytes: UnsafeBufferPointer<UInt8>, scratch: inout ScalarScratch, _ body: (Range<Int>) -> Void) {
        scratch.load(bytes)
        let n = scratch.count
        if n == 0 { return }
        scratch.cp.withUnsafeBufferPointer { cp in
            scratch.cls.withUnsafeBufferPointer { cls in
                scratch.off.withUnsafeBufferPointer { off in
                    let sc = Scanner(cp: cp, cls: cls)
                    var i = 0
                    switch self {
                    case .gpt2:
                        while i < n { let j = sc.gpt2(i, n); body(off[i]..<off[j]); i = j }
                    case .digitsThenGPT2:
                        while i < n {
                            if cls[i] == CharClass.number {
                                body(off[i]..<off[i + 1]); i += 1; continue
                            }
                            var end = i
                            while end < n && cls[end] != CharClass.number { end += 1 }
                            while i < end { let j = sc.gpt2(i, end); body(off[i]..<off[j]); i = j }
                        }
                    case .llama3:
                        while i < n { let j = sc.llama3(i, n, maxDigits: 3); body(off[i]..<off[j]); i = j }
                    case .qwen2:
                        while i < n { let j = sc.llama3(i, n, maxDigits: 1); body(off[i]..<off[j]); i = j }
                    }
                }
            }
        }
    }
}

enum CharClass {
    static let other: UInt8 = 0
    static let letter: UInt8 = 1
    static let number: UInt8 = 2
    static let space: UInt8 = 3

    static let ascii: [UInt8] = (0..<128).map { c -> UInt8 in
        switch c {
        case 0x09...0x0D, 0x20: return space
        case 0x30...0x39: return number
        case 0x41...0x5A, 0x61...0x7A: return letter
        default: return other
        }
    }

    /// Classes of the Basic Multilingual Plane, computed once (64 KiB) because Unicode property
    /// look-ups cost far more than a table read.
    static let bmp: [UInt8] = (0..<0x10000).map { lookup(UInt32($0)) }

    @inline(__always) static func of(_ cp: UInt32) -> UInt8 {
        if cp < 128 { return ascii[Int(cp)] }
        if cp < 0x10000 { return bmp[Int(cp)] }
        return lookup(cp)
    }

    static func lookup(_ cp: UInt32) -> UInt8 {
        if cp < 128 { return ascii[Int(cp)] }
        guard let s = Unicode.Scalar(cp) else { return other }  // surrogates: never in a String
        let p = s.properties
        if p.isWhitespace { return space }
        switch p.generalCategory {
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter: return letter
        case .decimalNumber, .letterNumber, .otherNumber: return number
        default: return other
        }
    }
}

/// Decoded scalars of one text segment, reused between segments to avoid allocations.
struct ScalarScratch {
    var cp: [UInt32] = []
    var cls: [UInt8] = []
    /// Byte offset of each scalar, plus one past the end.
    var off: [Int] = []
    var count = 0

    mutating func load(_ b: UnsafeBufferPointer<UInt8>) {
        cp.removeAll(keepingCapacity: true)
        cls.removeAll(keepingCapacity: true)
        off.removeAll(keepingCapacity: true)
        var i = 0
        let n = b.count
        while i < n {
            let c0 = UInt32(b[i])
            var v: UInt32
            var len: Int
            if c0 < 0x80 {
                v = c0; len = 1
            } else if c0 < 0xE0, i + 1 < n {
                v = (c0 & 0x1F) << 6 | UInt32(b[i + 1] & 0x3F); len = 2
            } else if c0 < 0xF0, i + 2 < n {
                v = (c0 & 0x0F) << 12 | UInt32(b[i + 1] & 0x3F) << 6 | UInt32(b[i + 2] & 0x3F); len = 3
            } else if i + 3 < n {
                v = (c0 & 0x07) << 18 | UInt32(b[i + 1] & 0x3F) << 12 | UInt32(b[i + 2] & 0x3F) << 6 | UInt32(b[i + 3] & 0x3F)
                len = 4
            } else {
                v = 0xFFFD; len = 1  // unreachable for valid UTF-8 (Swift strings are valid)
            }
            cp.append(v)
            cls.append(CharClass.of(v))
            off.append(i)
            i += len
        }
        off.append(n)
        count = cp.count
    }
}

/// The regex alternatives as functions returning the end (exclusive) of the match at `i`; every
/// position matches something, so the scan always advances.
struct Scanner {
    let cp: UnsafeBufferPointer<UInt32>
    let cls: UnsafeBufferPointer<UInt8>

    @inline(__always) func run(_ i: Int, _ end: Int, _ c: UInt8) -> Int {
        var j = i
        while j < end && cls[j] == c { j += 1 }
        return j
    }

    /// `'s|'t|'re|'ve|'m|'ll|'d` (ASCII case-insensitive when `fold`): length of the match or 0.
    @inline(__always) func contraction(_ i: Int, _ end: Int, fold: Bool) -> Int {
        guard cp[i] == 0x27, i + 1 < end else { return 0 }
        var a = cp[i + 1]
        if fold && a >= 0x41 && a <= 0x5A { a += 32 }
        switch a {
        case 0x73, 0x74, 0x6D, 0x64: return 2  // s t m d
        case 0x72, 0x76, 0x6C:  // r v l
            guard i + 2 < end else { return 0 }
            var b = cp[i + 2]
            if fold && b >= 0x41 && b <= 0x5A { b += 32 }
            if (a == 0x72 && b == 0x65) || (a == 0x76 && b == 0x65) || (a == 0x6C && b == 0x6C) { return 3 }
            return 0
        default: return 0
        }
    }

    /// Whitespace run at `i` (cls[i] is space): `\s+(?!\S)|\s+`.
    @inline(__always) func spaces(_ i: Int, _ end: Int) -> Int {
        let j = run(i, end, CharClass.space)
        if j == end { return j }
        return j - i >= 2 ? j - 1 : j
    }

    func gpt2(_ i: Int, _ end: Int) -> Int {
        let k = contraction(i, end, fold: false)
        if k > 0 { return i + k }
        let c = cls[i]
        if cp[i] == 0x20 && i + 1 < end && cls[i + 1] != CharClass.space {
            return run(i + 1, end, cls[i + 1])  // ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+`
        }
        if c != CharClass.space { return run(i, end, c) }
        return spaces(i, end)
    }

    @inline(__always) func isCRLF(_ j: Int) -> Bool { cp[j] == 0x0A || cp[j] == 0x0D }

    func llama3(_ i: Int, _ end: Int, maxDigits: Int) -> Int {
        let k = contraction(i, end, fold: true)
        if k > 0 { return i + k }
        let c = cls[i]
        // [^\r\n\p{L}\p{N}]?\p{L}+
        if c == CharClass.letter { return run(i, end, c) }
        if c != CharClass.number && !isCRLF(i) && i + 1 < end && cls[i + 1] == CharClass.letter {
            return run(i + 1, end, CharClass.letter)
        }
        // \p{N}{1,maxDigits}
        if c == CharClass.number {
            var j = i + 1
            while j < end && j - i < maxDigits && cls[j] == CharClass.number { j += 1 }
            return j
        }
        //  ?[^\s\p{L}\p{N}]+[\r\n]*
        var j = -1
        if cp[i] == 0x20 && i + 1 < end && cls[i + 1] == CharClass.other {
            j = run(i + 1, end, CharClass.other)
        } else if c == CharClass.other {
            j = run(i, end, CharClass.other)
        }
        if j >= 0 {
            while j < end && isCRLF(j) { j += 1 }
            return j
        }
        // \s*[\r\n]+ : up to and including the last CR/LF of the whitespace run.
        let e = run(i, end, CharClass.space)
        var p = e - 1
        while p >= i && !isCRLF(p) { p -= 1 }
        if p >= i { return p + 1 }
        return spaces(i, end)
    }
}
