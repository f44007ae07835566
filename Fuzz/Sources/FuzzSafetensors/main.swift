// Fuzz target safetensors: a safetensors file, through `SafetensorsFile(path:)`.
//
// Input: the bytes of a .safetensors file. Properties checked when it opens:
// - every tensor of a supported dtype (F32, F16, BF16) is returned inside the map (or copied) with its
//   header's shape and byte size and can be read whole; other dtypes are refused with `.unsupported`;
// - the supported tensors (with the metadata) written by `SafetensorsWriter` and read again have the
//   same names, shapes, dtypes and bytes.
import LoRAKit
import FuzzSupport
import FuzzDriver
#if canImport(Glibc)
import Glibc
#endif

let path = Fuzz.scratch + "/in.safetensors"
let again = Fuzz.scratch + "/again.safetensors"

func fuzzSafetensors(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    Fuzz.write(Fuzz.buffer(data, size), to: path)
    guard let f = try? SafetensorsFile(path: path) else { return 0 }
    Fuzz.check(f.dataOffset == 8 + f.headerLength && f.dataOffset <= f.storage.byteCount, "data offset \(f.dataOffset) outside the file")
    var w = SafetensorsWriter()
    w.metadata = f.metadata
    var kept: [String: Tensor] = [:]
    for info in f.tensors {
        Fuzz.check(info.begin >= 0 && info.begin <= info.end && info.end <= f.storage.byteCount - f.dataOffset,
                   "tensor \(info.name): range \(info.begin)..<\(info.end) outside the data section")
        do {
            let t = try f.tensor(info.name)
            Fuzz.check(info.dtype != nil, "tensor \(info.name) of dtype \(info.fileDType) was returned")
            Fuzz.check(t.shape == info.shape && t.dtype == info.dtype && t.byteCount == info.byteCount,
                       "tensor \(info.name): \(t.shape) \(t.dtype) \(t.byteCount) bytes differs from the header \(info.shape) \(info.fileDType) \(info.byteCount)")
            Fuzz.checkTensor(t, "tensor \(info.name)")
            if info.name != "__metadata__" {
                try w.add(info.name, t)
                kept[info.name] = t
            }
        } catch {
            Fuzz.check(info.dtype == nil, "tensor \(info.name) (\(info.fileDType)) passed the open checks but cannot be read: \(error)")
            if case .unsupported = error {} else { Fuzz.fail("tensor \(info.name): unsupported dtype refused with \(error), expected .unsupported") }
        }
    }
    do {
        try w.write(to: again)
        let g = try SafetensorsFile(path: again)
        Fuzz.check(g.metadata == f.metadata, "metadata changed in the round trip")
        Fuzz.check(Set(g.tensorNames) == Set(kept.keys), "tensor names changed in the round trip")
        for (name, t) in kept {
            let u = try g.tensor(name)
            Fuzz.check(u.shape == t.shape && u.dtype == t.dtype, "\(name): \(t.shape) \(t.dtype) became \(u.shape) \(u.dtype)")
            Fuzz.check(memcmp(u.rawPointer, t.rawPointer, t.byteCount) == 0, "\(name): bytes changed in the round trip")
        }
    } catch {
        Fuzz.fail("tensors that were read cannot be written and read again: \(error)")
    }
    return 0
}

exit(lorakit_fuzz_run(CommandLine.argc, CommandLine.unsafeArgv, { fuzzSafetensors($0, $1) }))
