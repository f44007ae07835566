import Foundation
import Testing
@testable import LoRAKitCore
@testable import LoRAKitKernels
@testable import LoRAKitFormats
@testable import LoRAKitTokenizer
@testable import LoRAKitTemplates
@testable import LoRAKitModel
@testable import LoRAKitTraining

/// Fixtures written by `scripts/gen_quant_fixtures.py` with gguf-py (`gguf.quants.quantize/dequantize`).
private let fixtureDir = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
    .appendingPathComponent("Fixtures/quant")

private func fixtureBytes(_ name: String) throws -> [UInt8] {
    let url = fixtureDir.appendingPathComponent(name)
    return [UInt8](try Data(contentsOf: url))
}

private func fixtureFloats(_ name: String) throws -> [Float] {
    let b = try fixtureBytes(name)
    #expect(b.count % 4 == 0)
    return (0..<b.count / 4).map { i in
        Float(bitPattern: UInt32(b[4 * i]) | UInt32(b[4 * i + 1]) << 8 | UInt32(b[4 * i + 2]) << 16 | UInt32(b[4 * i + 3]) << 24)
    }
}

private func quantizeBytes(_ v: [Float], _ dtype: DType) -> [UInt8] {
    let n = v.count / dtype.blockSize * dtype.blockBytes
    var out = [UInt8](repeating: 0xAA, count: n)
    v.withUnsafeBufferPointer { src in
        out.withUnsafeMutableBytes { dst in quantize(src.baseAddress!, count: v.count, dtype: dtype, into: dst.baseAddress!) }
    }
    return out
}

private func dequantizeBytes(_ b: [UInt8], _ dtype: DType, count: Int) -> [Float] {
    var out = [Float](repeating: .nan, count: count)
    b.withUnsafeBytes { src in
        out.withUnsafeMutableBufferPointer { dst in dequantize(src.baseAddress!, dtype: dtype, count: count, into: dst.baseAddress!) }
    }
    return out
}

private let fixtureTypes: [DType] = [.f16, .bf16, .q8_0, .q4_0, .q4_1]

@Suite struct QuantTests {
    @Test func fixtureIsSane() throws {
        let v = try fixtureFloats("values.f32.bin")
        #expect(v.count == 768)
        #expect(v[0..<32].allSatisfy { $0 == 0 })          // zeros block
        #expect(v[32..<64].allSatisfy { $0 == 0.75 })      // all-equal block
        #expect(v[160] == 127 && v[162] == -14.5)          // q8_0 ties block
    }

    @Test(arguments: fixtureTypes)
    func quantizeMatchesGGUF(_ dtype: DType) throws {
        let v = try fixtureFloats("values.f32.bin")
        let expected = try fixtureBytes("\(dtype).bin")
        #expect(expected.count == v.count / dtype.blockSize * dtype.blockBytes)
        let got = quantizeBytes(v, dtype)
        #expect(got.count == expected.count)
        let firstDiff = zip(got, expected).enumerated().first { $0.element.0 != $0.element.1 }
        #expect(firstDiff == nil, "first differing byte \(String(describing: firstDiff)) for \(dtype)")
        // Through the Tensor API as well (rows of 96 values).
        let t = try Tensor.quantized(v, shape: [8, 96], dtype: dtype)
        let tb = [UInt8](UnsafeRawBufferPointer(start: t.rawPointer, count: t.byteCount))
        #expect(tb == expected)
    }

    @Test(arguments: fixtureTypes)
    func dequantizeMatchesGGUF(_ dtype: DType) throws {
        let bytes = try fixtureBytes("\(dtype).bin")
        let expected = try fixtureFloats("\(dtype).deq.f32.bin")
        let got = dequantizeBytes(bytes, dtype, count: expected.count)
        let bad = (0..<got.count).filter { got[$0].bitPattern != expected[$0].bitPattern }
        #expect(bad.isEmpty, "\(dtype): \(bad.count) values differ, first at \(bad.first ?? -1)")
        // Tensor.toFloats and converted(to: .f32) agree.
        let t = try Tensor(storage: Storage(byteCount: bytes.count), offset: 0, shape: [expected.count / 96, 96], dtype: dtype)
        bytes.withUnsafeBytes { t.rawPointer.copyMemory(from: $0.baseAddress!, byteCount: bytes.count) }
        #expect(t.toFloats().map(\.bitPattern) == expected.map(\.bitPattern))
        #expect(try t.converted(to: .f32).toFloats().map(\.bitPattern) == expected.map(\.bitPattern))
    }

    /// Specific codes the reference rules imply (independent of the fixture).
    @Test func knownCodes() {
        // q8_0 ties: amax 127 → d = 1; 2.5 → 3, −2.5 → −3 (away from zero), 0.5 → 1.
        var v = [Float](repeating: 0, count: 32)
        v[0] = 127; v[1] = 2.5; v[2] = -2.5; v[3] = 0.5; v[4] = -0.5; v[5] = 1.49
        let q8 = quantizeBytes(v, .q8_0)
        #expect(q8[0] == 0x00 && q8[1] == 0x3C)                                 // f16(1.0)
        #expect(Array(q8[2..<8]).map { Int8(bitPattern: $0) } == [127, 3, -3, 1, -1, 1])
        // q4_0: max = −8 → d = 1, id = 1: code = trunc(x + 8.5) clamped to 15.
        var w = [Float](repeating: 0, count: 32)
        w[0] = -8; w[1] = 7.6; w[2] = -0.5; w[16] = 0.5; w[17] = 6.5
        let q4 = quantizeBytes(w, .q4_0)
        #expect(q4[0] == 0x00 && q4[1] == 0x3C)                                 // d = −8 / −8 = 1
        #expect(q4[2] == 0x90)   // low: x0 = −8 → 0; high: x16 = 0.5 → 9
        #expect(q4[3] == 0xFF)   // low: x1 = 7.6 → 16 → 15; high: x17 = 6.5 → 15
        #expect(q4[4] & 0x0F == 8)  // x2 = −0.5 → trunc(8.0) = 8
        // q4_1: min 0, max 15 → d = 1, m = 0; 2.5 → 3.
        var u = [Float](repeating: 0, count: 32)
        u[1] = 15; u[2] = 2.5; u[3] = 2.49
        let q41 = quantizeBytes(u, .q4_1)
        #expect(q41[0] == 0x00 && q41[1] == 0x3C && q41[2] == 0 && q41[3] == 0)
        #expect(q41[4] == 0x00 && q41[5] == 0x0F && q41[6] == 0x03 && q41[7] == 0x02)
    }

    @Test(arguments: [DType.q8_0, .q4_0, .q4_1])
    func roundTripError(_ dtype: DType) throws {
        var rng = SplitMix64(seed: 7)
        let n = 32 * 64
        let v = (0..<n).map { i in (rng.nextFloat() * 2 - 1) * Float(1 + i % 5) }
        let deq = dequantizeBytes(quantizeBytes(v, dtype), dtype, count: n)
        var worstRatio: Float = 0
        for b in 0..<n / 32 {
            let blk = v[b * 32..<(b + 1) * 32]
            let mx = blk.max()!, mn = blk.min()!, amax = blk.map { abs($0) }.max()!
            // Half a quantization step plus the error of storing d (and m) as f16 (rel. 2⁻¹¹).
            let bound: Float
            switch dtype {
            case .q8_0: bound = amax / 127 * (0.5 + 127 * 0x1p-11) * 1.001
            case .q4_0: bound = amax / 8 * (0.5 + 8 * 0x1p-11) * 1.001 + amax / 8  // codes clamp at +7
            default: bound = (mx - mn) / 15 * (0.5 + 15 * 0x1p-11) * 1.001 + abs(mn) * 0x1p-11
            }
            for i in blk.indices {
                let e = abs(deq[i] - v[i])
                #expect(e <= bound, "\(dtype) block \(b) value \(i): \(v[i]) → \(deq[i])")
                worstRatio = max(worstRatio, e / bound)
            }
        }
        // The error really is of the order of the bound (so a broken quantizer would fail).
        #expect(worstRatio > 0.2)
        // Requantizing the dequantized values of q8_0 is stable.
        if dtype == .q8_0 {
            let again = quantizeBytes(deq, dtype)
            #expect(dequantizeBytes(again, dtype, count: n).map(\.bitPattern) == deq.map(\.bitPattern))
        }
    }

    @Test func plainRoundTrips() throws {
        var rng = SplitMix64(seed: 3)
        let v = (0..<1000).map { _ in rng.nextFloat() * 200 - 100 }
        // f16 / bf16 values convert back exactly.
        for dt in [DType.f16, .bf16] {
            let once = dequantizeBytes(quantizeBytes(v, dt), dt, count: v.count)
            let twice = dequantizeBytes(quantizeBytes(once, dt), dt, count: v.count)
            #expect(once.map(\.bitPattern) == twice.map(\.bitPattern))
            let rel: Float = dt == .f16 ? 0x1p-11 : 0x1p-8
            for i in v.indices { #expect(abs(once[i] - v[i]) <= abs(v[i]) * rel) }
        }
        // f32 is a copy.
        #expect(dequantizeBytes(quantizeBytes(v, .f32), .f32, count: v.count) == v)
        // Tensor conversions between every pair go through f32.
        let t = try Tensor(v.prefix(960).map { $0 }, shape: [10, 96])
        for a in DType.allCases {
            let ta = try t.converted(to: a)
            #expect(ta.dtype == a && ta.shape == [10, 96])
            for b in DType.allCases {
                let tb = try ta.converted(to: b)
                let expected = try Tensor(ta.toFloats(), shape: [10, 96]).converted(to: b)
                #expect(tb.toFloats().map(\.bitPattern) == expected.toFloats().map(\.bitPattern), "\(a) → \(b)")
            }
        }
    }

    @Test func stridedViewConverts() throws {
        // A transposed f32 view [3, 64] of a [64, 3] tensor.
        let base = try Tensor((0..<192).map { Float($0) * 0.25 - 7 }, shape: [64, 3])
        let view = try Tensor(storage: base.storage, offset: 0, shape: [3, 64], strides: [1, 3], dtype: .f32)
        let q = try view.converted(to: .q8_0)
        let expected = try Tensor.quantized(view.toFloats(), shape: [3, 64], dtype: .q8_0)
        #expect(q.toFloats() == expected.toFloats())
        #expect(q.toFloats()[1] == view.toFloats()[1].rounded() || abs(q.toFloats()[1] - view.toFloats()[1]) < 0.1)
    }

    @Test func blockSizeErrors() throws {
        let t = try Tensor([Float](repeating: 1, count: 62), shape: [2, 31])
        for dt in [DType.q8_0, .q4_0, .q4_1] {
            #expect(throws: LKError.self) { _ = try t.converted(to: dt) }
            do {
                _ = try t.converted(to: dt)
            } catch {
                guard case .shapeMismatch(let m) = error else { Issue.record("wrong error \(error)"); return }
                #expect(m.contains("31") && m.contains("block size"))
            }
            #expect(throws: LKError.self) { _ = try Tensor.quantized([Float](repeating: 0, count: 62), shape: [2, 31], dtype: dt) }
        }
        // Plain types accept any length; count mismatch throws.
        #expect(try t.converted(to: .f16).shape == [2, 31])
        #expect(throws: LKError.self) { _ = try Tensor.quantized([1, 2, 3], shape: [2, 32], dtype: .q8_0) }
        // Scalars (shape []) convert to plain types, not to block types.
        let s = try Tensor([2.5], shape: [])
        #expect(try s.converted(to: .bf16).toFloats() == [2.5])
        #expect(throws: LKError.self) { _ = try s.converted(to: .q4_1) }
    }

    @Test func specialValuesF16BF16() throws {
        let s = try fixtureFloats("special.f32.bin")
        for dt in [DType.f16, .bf16] {
            let expected = try fixtureBytes("special.\(dt).bin")
            let got = quantizeBytes(s, dt)
            let expectedDeq = try fixtureFloats("special.\(dt).deq.f32.bin")
            let deq = dequantizeBytes(expected, dt, count: s.count)
            for i in s.indices {
                let e = UInt16(expected[2 * i]) | UInt16(expected[2 * i + 1]) << 8
                let g = UInt16(got[2 * i]) | UInt16(got[2 * i + 1]) << 8
                if s[i].isNaN && dt == .f16 {
                    // numpy keeps a signalling NaN's payload, F16C quiets it: only require a NaN of the same sign.
                    #expect(g & 0x7C00 == 0x7C00 && g & 0x03FF != 0 && g >> 15 == e >> 15, "f16 NaN \(i)")
                } else {
                    #expect(g == e, "\(dt) value \(i) (\(s[i]), bits \(String(s[i].bitPattern, radix: 16))): \(g) vs gguf \(e)")
                }
                #expect(deq[i].bitPattern == expectedDeq[i].bitPattern || (deq[i].isNaN && expectedDeq[i].isNaN))
            }
        }
        // Independent spot checks.
        #expect(floatToHalf(65520) == 0x7C00)                 // halfway to inf rounds to inf
        #expect(floatToHalf(0x1p-24) == 0x0001)               // smallest subnormal
        #expect(floatToHalf(0x1p-25) == 0x0000)               // tie → even (0)
        #expect(floatToHalf(1.5 * 0x1p-24) == 0x0002)         // tie → even (2)
        #expect(halfToFloat(0x0001) == 0x1p-24)
        #expect(halfToFloat(0x03FF) == 1023 * 0x1p-24)
        #expect(halfToFloat(0x7C00) == .infinity && halfToFloat(0xFC00) == -.infinity)
        #expect(halfToFloat(0x7E00).isNaN)
        #expect(floatToBF16(Float(bitPattern: 0x3F80_8000)) == 0x3F80)  // tie → even
        #expect(floatToBF16(Float(bitPattern: 0x3F81_8000)) == 0x3F82)  // tie → even (up)
        #expect(floatToBF16(Float(bitPattern: 0x7F80_0001)) == 0x7FC0)  // sNaN → quiet NaN
        #expect(floatToBF16(.greatestFiniteMagnitude) == 0x7F80)
        #expect(bf16ToFloat(0x0001) == Float(bitPattern: 0x0001_0000))   // bf16 subnormal
        // Vector path (8 at a time) and scalar tail agree: 13 values.
        let odd: [Float] = [0x1p-25, 65520, 1, -2, 0x1p-24, 3.14159, .infinity, -.infinity, 1e-8, 7, 65504, -0.0, 0.1]
        let h = quantizeBytes(odd, .f16)
        for i in odd.indices {
            #expect(UInt16(h[2 * i]) | UInt16(h[2 * i + 1]) << 8 == floatToHalf(odd[i]))
        }
        let back = dequantizeBytes(h, .f16, count: odd.count)
        for i in odd.indices { #expect(back[i] == halfToFloat(floatToHalf(odd[i]))) }
    }
}
