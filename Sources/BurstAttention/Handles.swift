import GlobalAttention

/// What a `burst_context *` points to.
final class ContextHandle {
    let context: AttentionContext
    let usesMPI: Bool
    init(context: AttentionContext, usesMPI: Bool) {
        self.context = context
        self.usesMPI = usesMPI
    }
}

/// What a `burst_plan *` points to. Keeps its context alive, so a context
/// destroyed too early does not leave the plan dangling.
final class PlanHandle {
    let plan: AttentionPlan
    let context: ContextHandle
    init(plan: AttentionPlan, context: ContextHandle) {
        self.plan = plan
        self.context = context
    }
}

extension ContextHandle {
    var opaque: OpaquePointer { OpaquePointer(Unmanaged.passRetained(self).toOpaque()) }
    static func from(_ pointer: OpaquePointer?) -> ContextHandle? {
        guard let pointer else { return nil }
        return Unmanaged<ContextHandle>.fromOpaque(UnsafeRawPointer(pointer)).takeUnretainedValue()
    }
    static func release(_ pointer: OpaquePointer) {
        Unmanaged<ContextHandle>.fromOpaque(UnsafeRawPointer(pointer)).release()
    }
}

extension PlanHandle {
    var opaque: OpaquePointer { OpaquePointer(Unmanaged.passRetained(self).toOpaque()) }
    static func from(_ pointer: OpaquePointer?) -> PlanHandle? {
        guard let pointer else { return nil }
        return Unmanaged<PlanHandle>.fromOpaque(UnsafeRawPointer(pointer)).takeUnretainedValue()
    }
    static func release(_ pointer: OpaquePointer) {
        Unmanaged<PlanHandle>.fromOpaque(UnsafeRawPointer(pointer)).release()
    }
}
