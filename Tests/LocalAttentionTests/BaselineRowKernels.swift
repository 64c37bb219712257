@testable import LocalAttention

/// LocalAttention's own (baseline x86-64) copy of the row kernels, named apart
/// from the ISA modules' copies (the module and its main class share a name).
typealias BaselineRowKernels = RowKernels
