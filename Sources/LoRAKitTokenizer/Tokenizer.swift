import LoRAKitCore
import LoRAKitFormats

/// GPT-2-style byte-level BPE tokenizer, loaded from GGUF metadata (llama.cpp) or from a Hugging Face
/// `tokenizer.json`, producing the same ids as Hugging Face `tokenizers` and llama.cpp.
///
/// Encoding: (1) added/special tokens written in the text are cut out (leftmost-longest match, as HF's
/// AddedVocabulary does); (2) the text between them is split by the pre-tokenizer (`PreTokenizer`);
/// (3) each piece's UTF-8 bytes are spelled in the byte-level alphabet (`ByteLevel`) and merged by BPE,
/// lowest merge rank first, leftmost first among equal ranks; (4) BOS/EOS are added as configured.
///
/// Thread safety: a `Tokenizer` is immutable after `init`; every method may be called from any thread.
public final class Tokenizer: Sendable {
    /// The vocabulary's algorithm.
    public enum Model: Sendable {
        /// GPT-2-style byte-level BPE (GGUF "gpt2", HF BPE + ByteLevel): merges by rank.
        case byteLevelBPE
        /// SentencePiece BPE (GGUF "llama"): merges by score, "▁" for spaces, `<0xAB>` byte fallback.
        case sentencePiece
    }

    /// The role of a token, as GGUF's `tokenizer.ggml.token_type` numbers it.
    public enum TokenKind: UInt8, Sendable {
        case normal = 1, unknown = 2, control = 3, userDefined = 4, unused = 5, byte = 6
    }

    /// Number of token ids (the largest id plus one).
    public let vocabSize: Int
    public let model: Model
    /// SentencePiece: prepend a space to the text (and after each added token), as llama.cpp does.
    public let addSpacePrefix: Bool
    public let preTokenizer: PreTokenizer
    /// Beginning-of-sequence, end-of-sequence, end-of-turn, unknown and padding ids, when known.
    public let bos: Int32?
    public let eos: Int32?
    public let eot: Int32?
    public let unk: Int32?
    public let pad: Int32?
    /// Whether `encode` adds BOS / EOS by default (GGUF `add_bos_token`/`add_eos_token`, or the HF
    /// post-processor's template).
    public let addBOS: Bool
    public let addEOS: Bool
    /// When a whole pre-token is in the vocabulary, use it without merging (HF `ignore_merges`,
    /// llama.cpp does it for llama3-style vocabularies).
    public let ignoreMerges: Bool

    let tokens: [String]
    let kinds: [TokenKind]
    /// Special tokens: matched in text only when `parseSpecial`, dropped by `decode(skipSpecial: true)`.
    let special: [Bool]
    /// Bytes of each token: `pieceBytes[pieceStart[id]..<pieceStart[id + 1]]`.
    let pieceStart: [Int32]
    let pieceBytes: [UInt8]
    let tokenToID: [String: Int32]
    /// (left << 32 | right) → (rank << 32 | merged id).
    let merges: [UInt64: UInt64]
    /// Id of the single-byte token of each byte, or -1.
    let byteToID: [Int32]
    /// `<0xAB>` tokens used for bytes without a byte-level token (HF `byte_fallback`), or -1.
    let byteFallbackID: [Int32]
    let matcher: AddedTokenMatcher
    /// SentencePiece: score of each token, and ids by exact UTF-8 text (with "▁"), usable for merging.
    let scores: [Float]
    let spmIDs: [ByteKey: Int32]

    /// What the loaders extract before the common validation.
    struct Spec {
        var source: String
        var tokens: [String]
        var kinds: [TokenKind]
        var special: [Bool]
        /// Token bytes are its UTF-8 text (added tokens) rather than its byte-level spelling.
        var raw: [Bool]
        var merges: [(String, String)]
        /// Tokens cut out of the text before pre-tokenization.
        var added: [(id: Int32, lstrip: Bool, rstrip: Bool)]
        var bos: Int32?, eos: Int32?, eot: Int32?, unk: Int32?, pad: Int32?
        var addBOS = false, addEOS = false
        var pre: PreTokenizer
        var ignoreMerges = false
        var byteFallback = false
        var model: Model = .byteLevelBPE
        var scores: [Float] = []
        var addSpacePrefix = false
    }

    init(spec s: Spec) throws(LKError) {
        let n = s.tokens.count
        guard n > 0 else { throw .format("\(s.source): the vocabulary is empty") }
        guard n < Int(Int32.max) else { throw .format("\(s.source): vocabulary of \(n) tokens is too large") }
        vocabSize = n
        model = s.model
        addSpacePrefix = s.model == .sentencePiece && s.addSpacePrefix
        tokens = s.tokens
        kinds = s.kinds
        special = s.special
        preTokenizer = s.pre
        bos = s.bos; eos = s.eos; unk = s.unk; pad = s.pad
        addBOS = s.addBOS && s.bos != nil
        addEOS = s.addEOS && s.eos != nil
        ignoreMerges = s.ignoreMerges

        var map: [String: Int32] = [:]
        map.reserveCapacity(n)
        var starts: [Int32] = [0]
        starts.reserveCapacity(n + 1)
        var bytes: [UInt8] = []
        bytes.reserveCapacity(n * 8)
        var byteIDs = [Int32](repeating: -1, count: 256)
        var fallback = [Int32](repeating: -1, count: 256)
        for (i, t) in s.tokens.enumerated() {
            if map[t] == nil { map[t] = Int32(i) }
            if s.model == .sentencePiece {
                if s.kinds[i] == .byte, let v = Tokenizer.byteTokenValue(t) {
                    bytes.append(v)
                    if fallback[Int(v)] < 0 { fallback[Int(v)] = Int32(i) }
                } else {
                    bytes.append(contentsOf: t.replacingSPMSpaces())
                }
            } else if s.raw[i] {
                bytes.append(contentsOf: t.utf8)
            } else if let b = ByteLevel.decode(t) {
                bytes.append(contentsOf: b)
                if b.count == 1 && byteIDs[Int(b[0])] < 0 && s.kinds[i] != .unused { byteIDs[Int(b[0])] = Int32(i) }
            } else {
                bytes.append(contentsOf: t.utf8)  // not byte-level spelled: take the text as it is
            }
            starts.append(Int32(truncatingIfNeeded: bytes.count))
            if s.byteFallback, let v = Tokenizer.byteTokenValue(t), fallback[Int(v)] < 0 { fallback[Int(v)] = Int32(i) }
        }
        guard bytes.count < Int(Int32.max) else { throw .format("\(s.source): vocabulary text is too large") }
        tokenToID = map
        pieceStart = starts
        pieceBytes = bytes
        byteToID = byteIDs
        byteFallbackID = fallback

        var table: [UInt64: UInt64] = [:]
        table.reserveCapacity(s.merges.count)
        for (rank, (a, b)) in s.merges.enumerated() {
            guard let l = map[a] else {
                throw .format("\(s.source): merge #\(rank) \"\(a) \(b)\" references \"\(a)\", which is not in the vocabulary")
            }
            guard let r = map[b] else {
                throw .format("\(s.source): merge #\(rank) \"\(a) \(b)\" references \"\(b)\", which is not in the vocabulary")
            }
            guard let m = map[a + b] else {
                throw .format("\(s.source): merge #\(rank) \"\(a) \(b)\" produces \"\(a + b)\", which is not in the vocabulary")
            }
            let key = UInt64(UInt32(l)) << 32 | UInt64(UInt32(r))
            if table[key] == nil { table[key] = UInt64(rank) << 32 | UInt64(UInt32(m)) }
        }
        merges = table
        scores = s.scores
        var spm: [ByteKey: Int32] = [:]
        if s.model == .sentencePiece {
            guard s.scores.count == n else {
                throw .format("\(s.source): tokenizer.ggml.scores has \(s.scores.count) entries but the vocabulary has \(n)")
            }
            for i in 0..<n where s.kinds[i] == .normal || s.kinds[i] == .userDefined {
                let k = ByteKey(Array(s.tokens[i].utf8))
                if spm[k] == nil { spm[k] = Int32(i) }
            }
        }
        spmIDs = spm

        var m = AddedTokenMatcher()
        for a in s.added {
            guard a.id >= 0, Int(a.id) < n else { throw .format("\(s.source): added token id \(a.id) is outside the vocabulary (\(n) tokens)") }
            m.add(Array(s.tokens[Int(a.id)].utf8), id: a.id, special: s.special[Int(a.id)], lstrip: a.lstrip, rstrip: a.rstrip)
        }
        m.finish()
        matcher = m

        if let e = s.eot {
            eot = e
        } else {
            var found: Int32? = nil
            for t in ["<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>"] {
                if let id = map[t], s.kinds[Int(id)] == .control || s.special[Int(id)] { found = id; break }
            }
            eot = found ?? s.eos
        }
    }

    // MARK: - Queries

    /// The id of the token spelled `piece` exactly as in the vocabulary (byte-level spelling for normal
    /// tokens, e.g. "Ġthe"; the text for added tokens, e.g. "<|im_end|>").
    public func id(of piece: String) -> Int32? { tokenToID[piece] }

    /// The vocabulary's spelling of `id`, or nil when out of range.
    public func token(_ id: Int32) -> String? { id >= 0 && Int(id) < vocabSize ? tokens[Int(id)] : nil }

    /// The raw bytes `id` stands for (empty for an out-of-range id). A token can end inside a UTF-8
    /// sequence: streaming output should buffer bytes until they form whole characters.
    public func tokenBytes(_ id: Int32) -> [UInt8] {
        guard id >= 0, Int(id) < vocabSize else { return [] }
        return Array(pieceBytes[Int(pieceStart[Int(id)])..<Int(pieceStart[Int(id) + 1])])
    }

    public func kind(_ id: Int32) -> TokenKind? { id >= 0 && Int(id) < vocabSize ? kinds[Int(id)] : nil }

    /// Whether `id` is a control token (e.g. `<|im_start|>`), or a token marked special in tokenizer.json.
    public func isControl(_ id: Int32) -> Bool {
        guard id >= 0, Int(id) < vocabSize else { return false }
        return kinds[Int(id)] == .control || special[Int(id)]
    }

    // MARK: - Encoding

    /// Token ids for `text`.
    /// - Parameters:
    ///   - addSpecial: add BOS/EOS as the tokenizer's metadata says (nil or true), or never (false),
    ///     like HF's `add_special_tokens` and llama.cpp's `add_special`.
    ///   - parseSpecial: cut special tokens written in the text (e.g. `<|im_start|>`) into their ids
    ///     (true, HF's default), or tokenize them as plain text (false; HF `split_special_tokens=True`).
    ///     Non-special added tokens (GGUF user-defined) are always matched, as in HF and llama.cpp.
    public func encode(_ text: String, addSpecial: Bool? = nil, parseSpecial: Bool = true) -> [Int32] {
        let on = addSpecial ?? true
        return encode(text, addBOS: on && addBOS, addEOS: on && addEOS, parseSpecial: parseSpecial)
    }

    /// Token ids for `text`, with explicit BOS/EOS choices (ignored when the tokenizer has no such id).
    public func encode(_ text: String, addBOS: Bool, addEOS: Bool, parseSpecial: Bool = true) -> [Int32] {
        var out: [Int32] = []
        out.reserveCapacity(text.utf8.count / 3 + 4)
        if addBOS, let b = bos { out.append(b) }
        var s = text
        s.withUTF8 { buf in
            var state = EncodeState()
            var afterAdded = true  // SentencePiece: the text at the start or after an added token gets "▁"
            var segStart = 0
            var i = 0
            let n = buf.count
            while i < n {
                guard matcher.mayStart[Int(buf[i])], let m = matcher.match(buf, at: i, parseSpecial: parseSpecial) else {
                    i += 1
                    continue
                }
                var segEnd = i
                if m.lstrip { while segEnd > segStart && isASCIISpace(buf[segEnd - 1]) { segEnd -= 1 } }
                if segEnd > segStart {
                    encodeText(UnsafeBufferPointer(rebasing: buf[segStart..<segEnd]), prefix: afterAdded, into: &out, state: &state)
                }
                out.append(m.id)
                afterAdded = true
                i += m.length
                if m.rstrip { while i < n && isASCIISpace(buf[i]) { i += 1 } }
                segStart = i
            }
            if n > segStart { encodeText(UnsafeBufferPointer(rebasing: buf[segStart..<n]), prefix: afterAdded, into: &out, state: &state) }
        }
        if addEOS, let e = eos { out.append(e) }
        return out
    }

    @inline(__always) func isASCIISpace(_ b: UInt8) -> Bool { b == 0x20 || (b >= 0x09 && b <= 0x0D) }

    /// Pre-tokenize and BPE-encode text containing no added tokens.
    func encodeText(_ text: UnsafeBufferPointer<UInt8>, prefix: Bool, into out: inout [Int32], state: inout EncodeState) {
        if model == .sentencePiece {
            encodeSentencePiece(text, prefix: prefix && addSpacePrefix, into: &out)
            return
        }
        var scalars = ScalarScratch()
        swap(&scalars, &state.scalars)
        defer { swap(&scalars, &state.scalars) }
        preTokenizer.forEachPiece(text, scratch: &scalars) { r in
            let piece = UnsafeBufferPointer(rebasing: text[r])
            if piece.count <= WordCache.maxKey, state.cache.lookup(piece, into: &out) { return }
            let start = out.count
            encodePiece(piece, into: &out, state: &state)
            if piece.count <= WordCache.maxKey { state.cache.insert(piece, out[start...]) }
        }
    }

    func encodePiece(_ piece: UnsafeBufferPointer<UInt8>, into out: inout [Int32], state: inout EncodeState) {
        if ignoreMerges, piece.count > 1, let id = tokenToID[ByteLevel.encode(piece)] {
            out.append(id)
            return
        }
        var ids: [Int32] = []
        swap(&ids, &state.ids)  // reuse the buffer without a copy-on-write copy
        ids.removeAll(keepingCapacity: true)
        for b in piece {
            let id = byteToID[Int(b)]
            if id >= 0 { ids.append(id) } else if byteFallbackID[Int(b)] >= 0 { ids.append(byteFallbackID[Int(b)]) } else if let u = unk { ids.append(u) }
            // else: dropped, as HF's BPE does for a character outside a vocabulary without unk
        }
        bpeMerge(&ids, state: &state)
        out.append(contentsOf: ids)
        state.ids = ids
    }

    @inline(__always) func lookupMerge(_ l: Int32, _ r: Int32) -> UInt64? {
        merges[UInt64(UInt32(l)) << 32 | UInt64(UInt32(r))]
    }

    /// Apply merges to `ids` in place: repeatedly merge the adjacent pair with the lowest rank (the
    /// leftmost among equals), using a linked list and a binary heap of (rank, position).
    func bpeMerge(_ ids: inout [Int32], state: inout EncodeState) {
        let n = ids.count
        guard n > 1 else { return }
        var next: [Int32] = [], prev: [Int32] = [], heap: [UInt64] = []
        swap(&next, &state.next); swap(&prev, &state.prev); swap(&heap, &state.heap)
        next.removeAll(keepingCapacity: true)
        prev.removeAll(keepingCapacity: true)
        heap.removeAll(keepingCapacity: true)
        for i in 0..<n {
            next.append(i + 1 < n ? Int32(i + 1) : -1)
            prev.append(Int32(i - 1))
        }
        for i in 0..<(n - 1) {
            if let m = lookupMerge(ids[i], ids[i + 1]) { heapPush(&heap, (m >> 32) << 32 | UInt64(i)) }
        }
        while let top = heapPop(&heap) {
            let rank = top >> 32
            let pos = Int(top & 0xFFFF_FFFF)
            guard ids[pos] >= 0 else { continue }
            let r = Int(next[pos])
            guard r >= 0, let m = lookupMerge(ids[pos], ids[r]), m >> 32 == rank else { continue }
            ids[pos] = Int32(truncatingIfNeeded: m & 0xFFFF_FFFF)
            ids[r] = -1
            let rn = next[r]
            next[pos] = rn
            if rn >= 0 { prev[Int(rn)] = Int32(pos) }
            let p = Int(prev[pos])
            if p >= 0, let m2 = lookupMerge(ids[p], ids[pos]) { heapPush(&heap, (m2 >> 32) << 32 | UInt64(p)) }
            if rn >= 0, let m3 = lookupMerge(ids[pos], ids[Int(rn)]) { heapPush(&heap, (m3 >> 32) << 32 | UInt64(pos)) }
        }
        var w = 0
        var k = 0
        while k >= 0 {
            ids[w] = ids[k]
            w += 1
            k = Int(next[k])
        }
        ids.removeSubrange(w...)
        state.next = next; state.prev = prev; state.heap = heap
    }

    // MARK: - Decoding

    /// The text of `ids`. Invalid UTF-8 (a sequence cut between tokens) becomes U+FFFD, as in HF.
    /// - Parameter skipSpecial: leave out control/special tokens.
    /// - Throws: `LKError.invalidArgument` naming the first id outside `0..<vocabSize`.
    public func decode(_ ids: [Int32], skipSpecial: Bool = false) throws(LKError) -> String {
        var out: [UInt8] = []
        out.reserveCapacity(ids.count * 4)
        var stripSpace = addSpacePrefix  // SentencePiece: drop the space the encoder put in front
        for (k, id) in ids.enumerated() {
            guard id >= 0, Int(id) < vocabSize else {
                throw .invalidArgument("decode: token id \(id) at position \(k) is outside the vocabulary (vocabSize \(vocabSize))")
            }
            if skipSpecial && isControl(id) { continue }
            var a = Int(pieceStart[Int(id)])
            let b = Int(pieceStart[Int(id) + 1])
            if stripSpace && !isControl(id) {
                if a < b && pieceBytes[a] == 0x20 { a += 1 }
                stripSpace = false
            }
            out.append(contentsOf: pieceBytes[a..<b])
        }
        return String(decoding: out, as: UTF8.self)
    }
}

// MARK: - Encoding helpers

/// Per-call scratch buffers and the cache of words already encoded in this call.
struct EncodeState {
    var scalars = ScalarScratch()
    var ids: [Int32] = []
    var next: [Int32] = []
    var prev: [Int32] = []
    var heap: [UInt64] = []
    var cache = WordCache()
}

/// Words (pieces) already encoded, keyed by their bytes (compared exactly: Swift `String` equality
/// would merge canonically equivalent spellings such as "é" and "e\u{301}").
struct WordCache {
    static let maxKey = 64
    static let maxEntries = 1 << 16
    var index: [UInt64: Int32] = [:]
    var keyStart: [Int32] = []
    var idStart: [Int32] = []
    var keys: [UInt8] = []
    var ids: [Int32] = []

    @inline(__always) static func hash(_ b: UnsafeBufferPointer<UInt8>) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for x in b { h = (h ^ UInt64(x)) &* 0x100_0000_01b3 }
        return h ^ UInt64(b.count)
    }

    func lookup(_ key: UInt64, _ b: UnsafeBufferPointer<UInt8>) -> Int? {
        guard let e = index[key] else { return nil }
        let e1 = Int(e)
        let ks = Int(keyStart[e1])
        let ke = e1 + 1 < keyStart.count ? Int(keyStart[e1 + 1]) : keys.count
        guard ke - ks == b.count else { return nil }
        for k in 0..<b.count where keys[ks + k] != b[k] { return nil }
        return e1
    }

    mutating func lookup(_ b: UnsafeBufferPointer<UInt8>, into out: inout [Int32]) -> Bool {
        guard let e = lookup(WordCache.hash(b), b) else { return false }
        let s = Int(idStart[e])
        let end = e + 1 < idStart.count ? Int(idStart[e + 1]) : ids.count
        out.append(contentsOf: ids[s..<end])
        return true
    }

    mutating func insert(_ b: UnsafeBufferPointer<UInt8>, _ result: ArraySlice<Int32>) {
        if keyStart.count >= WordCache.maxEntries { self = WordCache() }
        let h = WordCache.hash(b)
        guard index[h] == nil else { return }  // a hash collision: leave it uncached
        index[h] = Int32(keyStart.count)
        keyStart.append(Int32(keys.count))
        idStart.append(Int32(ids.count))
        keys.append(contentsOf: b)
        ids.append(contentsOf: result)
    }
}

@inline(__always) func heapPush(_ h: inout [UInt64], _ v: UInt64) {
    h.append(v)
    var i = h.count - 1
    while i > 0 {
        let p = (i - 1) >> 1
        if h[p] <= v { break }
        h[i] = h[p]
        i = p
    }
    h[i] = v
}

@inline(__always) func heapPop(_ h: inout [UInt64]) -> UInt64? {
    guard let last = h.popLast() else { return nil }
    guard !h.isEmpty else { return last }
    let top = h[0]
    let n = h.count
    var i = 0
    while true {
        let l = 2 * i + 1
        if l >= n { break }
        var c = l
        if l + 1 < n && h[l + 1] < h[l] { c = l + 1 }
        if h[c] >= last { break }
        h[i] = h[c]
        i = c
    }
    h[i] = last
    return top
}

/// Leftmost-longest matcher for added tokens, by first byte.
struct AddedTokenMatcher: Sendable {
    struct Entry: Sendable {
        var bytes: [UInt8]
        var id: Int32
        var special: Bool
        var lstrip: Bool
        var rstrip: Bool
    }
    var mayStart = [Bool](repeating: false, count: 256)
    var byFirst: [[Entry]] = Array(repeating: [], count: 256)

    mutating func add(_ bytes: [UInt8], id: Int32, special: Bool, lstrip: Bool, rstrip: Bool) {
        guard let f = bytes.first else { return }
        mayStart[Int(f)] = true
        byFirst[Int(f)].append(Entry(bytes: bytes, id: id, special: special, lstrip: lstrip, rstrip: rstrip))
    }

    mutating func finish() {
        for k in 0..<256 { byFirst[k].sort { $0.bytes.count > $1.bytes.count } }
    }

    func match(_ buf: UnsafeBufferPointer<UInt8>, at i: Int, parseSpecial: Bool) -> (id: Int32, length: Int, lstrip: Bool, rstrip: Bool)? {
        let rest = buf.count - i
        outer: for e in byFirst[Int(buf[i])] {
            if e.special && !parseSpecial { continue }
            let len = e.bytes.count
            guard len <= rest else { continue }
            for k in 1..<len where buf[i + k] != e.bytes[k] { continue outer }
            return (e.id, len, e.lstrip, e.rstrip)
        }
        return nil
    }
}

/// Turns a stream of token bytes (`Tokenizer.tokenBytes`) into text without splitting characters: bytes
/// of an incomplete UTF-8 sequence at the end are held back until the next call. Invalid bytes become
/// U+FFFD, as `String(decoding:as:)` does.
public struct UTF8StreamDecoder: Sendable {
    var pending: [UInt8] = []

    public init() {}

    /// Append `bytes` and return the text that is now complete.
    public mutating func append(_ bytes: [UInt8]) -> String {
        pending.append(contentsOf: bytes)
        // Find where a trailing, possibly incomplete sequence starts (at most 3 bytes back).
        var cut = pending.count
        var k = pending.count - 1
        var back = 0
        while k >= 0 && back < 4 {
            let b = pending[k]
            if b & 0xC0 != 0x80 {  // a lead byte (or ASCII)
                let need = b < 0x80 ? 1 : b >= 0xF0 ? 4 : b >= 0xE0 ? 3 : b >= 0xC0 ? 2 : 1
                if pending.count - k < need { cut = k }
                break
            }
            k -= 1
            back += 1
        }
        let text = String(decoding: pending[..<cut], as: UTF8.self)
        pending.removeSubrange(..<cut)
        return text
    }

    /// Return whatever is held back (invalid or incomplete bytes become U+FFFD) and reset.
    public mutating func flush() -> String {
        defer { pending.removeAll() }
        return String(decoding: pending, as: UTF8.self)
    }
}
