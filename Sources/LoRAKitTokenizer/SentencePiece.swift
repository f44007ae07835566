import LoRAKitCore
import LoRAKitFormats

/// SentencePiece BPE (GGUF `tokenizer.ggml.model == "llama"`), as llama.cpp's SPM tokenizer and the
/// `sentencepiece` library do it: spaces become "▁" (U+2581), a "▁" is prepended to the text when
/// `add_space_prefix` is set (and, as in llama.cpp, to text following an added token), the text is cut
/// into Unicode characters, and adjacent symbols are merged while their concatenation is a vocabulary
/// piece, highest piece score first (leftmost among equal scores). Characters left without a piece
/// become their UTF-8 bytes' `<0xAB>` tokens (byte fallback), or the unknown token.
extension Tokenizer {
    static func byteTokenValue(_ t: String) -> UInt8? {
        guard t.utf8.count == 6, t.hasPrefix("<0x"), t.hasSuffix(">") else { return nil }
        return UInt8(t.dropFirst(3).dropLast(), radix: 16)
    }

    func encodeSentencePiece(_ text: UnsafeBufferPointer<UInt8>, prefix: Bool, into out: inout [Int32]) {
        // Escape: "▁" for each space.
        var buf: [UInt8] = []
        buf.reserveCapacity(text.count + 6)
        if prefix { buf.append(contentsOf: [0xE2, 0x96, 0x81]) }
        for b in text {
            if b == 0x20 { buf.append(contentsOf: [0xE2, 0x96, 0x81]) } else { buf.append(b) }
        }
        // Symbols: one per character.
        var start: [Int] = [], len: [Int] = [], prev: [Int] = [], next: [Int] = []
        var i = 0
        while i < buf.count {
            let b = buf[i]
            let l = b < 0x80 ? 1 : b < 0xE0 ? 2 : b < 0xF0 ? 3 : 4
            let w = min(l, buf.count - i)
            prev.append(start.count - 1)
            start.append(i)
            len.append(w)
            i += w
            next.append(i < buf.count ? start.count : -1)
        }
        let n = start.count
        guard n > 0 else { return }
        // Max-heap on (score, -left): stored as entries compared by hand.
        struct Bigram { var score: Float; var left: Int; var right: Int; var size: Int }
        var heap: [Bigram] = []
        func before(_ a: Bigram, _ b: Bigram) -> Bool { a.score > b.score || (a.score == b.score && a.left < b.left) }
        func push(_ e: Bigram) {
            heap.append(e)
            var k = heap.count - 1
            while k > 0 {
                let p = (k - 1) / 2
                if !before(heap[k], heap[p]) { break }
                heap.swapAt(k, p)
                k = p
            }
        }
        func pop() -> Bigram? {
            guard !heap.isEmpty else { return nil }
            let top = heap[0]
            let last = heap.removeLast()
            if !heap.isEmpty {
                heap[0] = last
                var k = 0
                while true {
                    let l = 2 * k + 1, r = l + 1
                    var m = k
                    if l < heap.count && before(heap[l], heap[m]) { m = l }
                    if r < heap.count && before(heap[r], heap[m]) { m = r }
                    if m == k { break }
                    heap.swapAt(k, m)
                    k = m
                }
            }
            return top
        }
        func lookup(_ from: Int, _ count: Int) -> Int32? { spmIDs[ByteKey(Array(buf[from..<(from + count)]))] }
        func tryAdd(_ l: Int, _ r: Int) {
            guard l >= 0, r >= 0 else { return }
            let s = start[l], size = len[l] + len[r]
            guard let id = lookup(s, size) else { return }
            push(Bigram(score: scores[Int(id)], left: l, right: r, size: size))
        }
        for k in 1..<n { tryAdd(k - 1, k) }
        while let bg = pop() {
            let l = bg.left, r = bg.right
            guard len[l] > 0, len[r] > 0, len[l] + len[r] == bg.size, next[l] == bg.right else { continue }
            len[l] += len[r]
            len[r] = 0
            next[l] = next[r]
            if next[r] >= 0 { prev[next[r]] = l }
            tryAdd(prev[l], l)
            tryAdd(l, next[l])
        }
        var k = 0
        while k >= 0 {
            let s = start[k], c = len[k]
            if let id = lookup(s, c) {
                out.append(id)
            } else {
                for b in buf[s..<(s + c)] {
                    if byteFallbackID[Int(b)] >= 0 { out.append(byteFallbackID[Int(b)]) } else if let u = unk { out.append(u) }
                }
            }
            k = next[k]
        }
    }
}

/// A byte string usable as a dictionary key (exact comparison, unlike `String`).
struct ByteKey: Hashable, Sendable {
    var bytes: [UInt8]
    init(_ b: [UInt8]) { bytes = b }
}

extension String {
    /// UTF-8 with SentencePiece's "▁" turned back into spaces.
    func replacingSPMSpaces() -> [UInt8] {
        var out: [UInt8] = []
        let u = Array(utf8)
        var i = 0
        while i < u.count {
            if i + 2 < u.count && u[i] == 0xE2 && u[i + 1] == 0x96 && u[i + 2] == 0x81 {
                out.append(0x20)
                i += 3
            } else {
                out.append(u[i])
                i += 1
            }
        }
        return out
    }
}
