// C ABI for multimodal projectors (lorakit.h, "Multimodal projectors") and token embedding rows.
import CLoRAKit
import LoRAKit

/// What an lk_projector handle refers to: the projector and the model it was made for (kept alive).
final class ProjectorBox: @unchecked Sendable {
    let projector: Projector
    let modelBox: ModelBox

    init(_ p: Projector, _ m: ModelBox) {
        projector = p
        modelBox = m
    }
}

func projectorArg(_ h: OpaquePointer?, _ name: String = "projector") throws -> ProjectorBox {
    try Handles.shared.lookup(h, kind: .projector, as: ProjectorBox.self, what: name)
}

/// A caller's [rows, cols] float buffer, with the row count checked against a sane limit and the product
/// against overflow before anything is read.
func floatRows(_ p: UnsafePointer<Float>?, rows: Int64, cols: Int, _ name: String, _ rowsName: String) throws -> [Float] {
    guard rows >= 0, rows <= 1 << 24 else { throw invalid("\(rowsName) \(rows) must be in 0...\(1 << 24)") }
    let n = Int(rows) * cols
    if n == 0 { return [] }
    return Array(UnsafeBufferPointer(start: try requirePointer(p, name), count: n))
}

@_cdecl("lk_projector_create")
public func lk_projector_create(_ model: OpaquePointer?, _ inFeatures: Int64, _ seed: UInt64,
                                _ out: UnsafeMutablePointer<OpaquePointer?>?) -> Int32 {
    guarded("lk_projector_create") {
        let o = try requirePointer(out, "out")
        let box = try modelArg(model)
        guard inFeatures >= 1, inFeatures <= Int64(Projector.maxFeatures) else {
            throw invalid("in_features \(inFeatures) must be in 1...\(Projector.maxFeatures)")
        }
        let p = try Projector(inFeatures: Int(inFeatures), model: box.model, seed: seed)
        return Handles.shared.give(ProjectorBox(p, box), kind: .projector, to: o)
    }
}

@_cdecl("lk_projector_load")
public func lk_projector_load(_ model: OpaquePointer?, _ path: UnsafePointer<CChar>?,
                              _ out: UnsafeMutablePointer<OpaquePointer?>?) -> Int32 {
    guarded("lk_projector_load") {
        let o = try requirePointer(out, "out")
        let box = try modelArg(model)
        let p = try Projector.load(path: try pathArg(path), model: box.model)
        return Handles.shared.give(ProjectorBox(p, box), kind: .projector, to: o)
    }
}

@_cdecl("lk_projector_save")
public func lk_projector_save(_ projector: OpaquePointer?, _ path: UnsafePointer<CChar>?) -> Int32 {
    guarded("lk_projector_save") {
        let box = try projectorArg(projector)
        try box.projector.save(to: try pathArg(path))
        return LK_OK
    }
}

@_cdecl("lk_projector_free")
public func lk_projector_free(_ projector: OpaquePointer?) -> Int32 {
    guarded("lk_projector_free") { try Handles.shared.free(projector, kind: .projector, what: "projector") }
}

@_cdecl("lk_projector_info")
public func lk_projector_info(_ projector: OpaquePointer?, _ inFeatures: UnsafeMutablePointer<Int64>?,
                              _ width: UnsafeMutablePointer<Int64>?) -> Int32 {
    guarded("lk_projector_info") {
        let p = try projectorArg(projector).projector
        inFeatures?.pointee = Int64(p.inFeatures)
        width?.pointee = Int64(p.width)
        return LK_OK
    }
}

@_cdecl("lk_projector_forward")
public func lk_projector_forward(_ projector: OpaquePointer?, _ features: UnsafePointer<Float>?, _ nRows: Int64,
                                 _ out: UnsafeMutablePointer<Float>?, _ capacity: Int64) -> Int32 {
    guarded("lk_projector_forward") {
        let p = try projectorArg(projector).projector
        let x = try floatRows(features, rows: nRows, cols: p.inFeatures, "features", "n_rows")
        let need = Int64(nRows) * Int64(p.width)
        guard try capacityArg(capacity) >= need else {
            throw CError(LK_ERR_BUFFER_TOO_SMALL, "capacity \(capacity) is smaller than the \(need) floats of \(nRows) rows × width \(p.width)")
        }
        if need > 0 { _ = try requirePointer(out, "out") }
        let y = try p.forward(x, rows: Int(nRows))
        if let out, !y.isEmpty { out.update(from: y, count: y.count) }
        return LK_OK
    }
}

@_cdecl("lk_projector_backward")
public func lk_projector_backward(_ projector: OpaquePointer?, _ features: UnsafePointer<Float>?, _ nRows: Int64,
                                  _ dOut: UnsafePointer<Float>?, _ nDOut: Int64) -> Int32 {
    guarded("lk_projector_backward") {
        let p = try projectorArg(projector).projector
        let x = try floatRows(features, rows: nRows, cols: p.inFeatures, "features", "n_rows")
        let need = Int64(nRows) * Int64(p.width)
        guard nDOut == need else {
            throw invalid("n_d_out \(nDOut) must be n_rows × width = \(nRows) × \(p.width) = \(need)")
        }
        let dy = try floatRows(dOut, rows: nRows, cols: p.width, "d_out", "n_rows")
        let (_, acts) = try p.forwardForTraining(x, rows: Int(nRows))
        try p.backward(acts, dOutput: dy)
        return LK_OK
    }
}

@_cdecl("lk_model_token_embeddings")
public func lk_model_token_embeddings(_ model: OpaquePointer?, _ tokens: UnsafePointer<Int32>?, _ nTokens: Int64,
                                      _ out: UnsafeMutablePointer<Float>?, _ capacity: Int64) -> Int32 {
    guarded("lk_model_token_embeddings") {
        let m = try modelArg(model).model
        guard nTokens >= 0, nTokens <= 1 << 24 else { throw invalid("n_tokens \(nTokens) must be in 0...\(1 << 24)") }
        let need = nTokens * Int64(m.config.dim)
        guard try capacityArg(capacity) >= need else {
            throw CError(LK_ERR_BUFFER_TOO_SMALL, "capacity \(capacity) is smaller than the \(need) floats of \(nTokens) tokens × n_embd \(m.config.dim)")
        }
        if nTokens == 0 { return LK_OK }
        let ids = Array(UnsafeBufferPointer(start: try requirePointer(tokens, "tokens"), count: Int(nTokens)))
        let o = try requirePointer(out, "out")
        let rows = try m.tokenEmbeddings(ids)
        o.update(from: rows, count: rows.count)
        return LK_OK
    }
}
