import LoRAKitCore

// MARK: - Plugin adapters on a context

extension LlamaContext {
    /// Attach a plugin adapter with multiplier `scale` (finite; 1 = as trained, 0 = no effect). Its
    /// instances run at their points of each module (input, output, or an added term) after the adapters
    /// of the same point already attached; LoRA adapters read the module input after every input-point
    /// plugin. It must have been made for this context's model. On error nothing changes.
    public func attach(_ adapter: PluginAdapter, scale: Float = 1) throws(LKError) {
        try adapter.check(against: model)
        try plugins.attach(adapter, scale: scale)
    }

    /// Detach a plugin adapter (error if it is not attached).
    public func detach(_ adapter: PluginAdapter) throws(LKError) { try plugins.detach(adapter) }

    /// Change the multiplier of an attached plugin adapter.
    public func setScale(_ scale: Float, for adapter: PluginAdapter) throws(LKError) {
        try plugins.setScale(scale, for: adapter)
    }

    /// The attached plugin adapters and their scales, in attachment order.
    public var attachedPluginAdapters: [(adapter: PluginAdapter, scale: Float)] {
        plugins.attachments.map { ($0.adapter, $0.scale) }
    }

    /// Detach every plugin adapter (LoRA adapters stay; `detachAll` detaches those).
    public func detachAllPlugins() { plugins.detachAll() }

    /// Attach a LoRA or plugin adapter (`attach(_:scale:)` of its kind).
    public func attach(_ adapter: AnyAdapter, scale: Float = 1) throws(LKError) {
        switch adapter {
        case .lora(let a): try attach(a, scale: scale)
        case .plugin(let a): try attach(a, scale: scale)
        }
    }

    /// Detach a LoRA or plugin adapter (`detach(_:)` of its kind).
    public func detach(_ adapter: AnyAdapter) throws(LKError) {
        switch adapter {
        case .lora(let a): try detach(a)
        case .plugin(let a): try detach(a)
        }
    }
}
