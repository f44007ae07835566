import LoRAKitCore
import LoRAKitFormats

/// GPT-2's byte-level alphabet (`bytes_to_unicode`): each byte is written as one printable Unicode
/// scalar, so any byte string is a string of "characters" that BPE can merge. Printable Latin-1 bytes
/// ('!'...'~', '¡'...'¬', '®'...'ÿ') stand for themselves; the other 68 bytes take U+0100, U+0101, …
/// in increasing byte order (so the space 0x20 is 'Ġ' U+0120 and the newline 0x0A is 'Ċ' U+010A).
enum ByteLevel {
    /// Scalar for each byte.
    static let byteToScalar: [UInt32] = {
        var table = [UInt32](repeating: 0, count: 256)
        var next: UInt32 = 256
        for b in 0..<256 {
            if (0x21...0x7E).contains(b) || (0xA1...0xAC).contains(b) || (0xAE...0xFF).contains(b) {
                table[b] = UInt32(b)
            } else {
                table[b] = next
                next += 1
            }
        }
        return table
    }()

    /// Byte for each alphabet scalar (index < 324), -1 for scalars outside the alphabet.
    static let scalarToByte: [Int16] = {
        var t = [Int16](repeating: -1, count: 324)
        for (b, s) in byteToScalar.enumerated() { t[Int(s)] = Int16(b) }
        return t
    }()

    /// The byte-level spelling of `bytes`.
    static func encode<S: Sequence<UInt8>>(_ bytes: S) -> String {
        var s = String.UnicodeScalarView()
        for b in bytes { s.append(Unicode.Scalar(byteToScalar[Int(b)])!) }
        return String(s)
    }

    /// The bytes a byte-level token spells, or nil if it uses a scalar outside the alphabet.
    static func decode(_ token: String) -> [UInt8]? {
        var out: [UInt8] = []
        out.reserveCapacity(token.utf8.count)
        for s in token.unicodeScalars {
            let v = Int(s.value)
            guard v < scalarToByte.count, scalarToByte[v] >= 0 else { return nil }
            out.append(UInt8(scalarToByte[v]))
        }
        return out
    }
}
