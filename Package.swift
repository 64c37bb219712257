// swift-tools-version:5.10
// libburst_attention — exact distributed attention (BurstAttention) behind a C ABI.
// The CMake build (CMakeLists.txt) compiles the same sources into the installed
// libburst_attention.so; this package drives the Swift tests and the benchmark.
import PackageDescription

let package = Package(
    name: "BurstAttention",
    products: [
        .library(name: "burst_attention", type: .dynamic, targets: ["BurstAttention"]),
        .executable(name: "burst-bench", targets: ["burst-bench"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
    ],
    targets: [
        // C shims (no code of their own).
        .systemLibrary(name: "CMPI", pkgConfig: "ompi-c", providers: [.apt(["libopenmpi-dev"])]),
        .systemLibrary(name: "CBurstABI"),
        .systemLibrary(name: "CXSMM", pkgConfig: "libxsmm", providers: [.apt(["libxsmm-dev"])]),
        .systemLibrary(name: "CPrefetch"),
        // LAO: tiled kernels (libxsmm JIT tile products), no communication.
        .target(name: "LocalAttention", dependencies: ["CXSMM", "CPrefetch", "RowKernelsAVX2", "RowKernelsAVX512"]),
        // The softmax row kernels compiled for AVX2 and AVX-512, picked at run time.
        .target(name: "RowKernelsAVX2", dependencies: ["CPrefetch"], swiftSettings: [.unsafeFlags(["-target-cpu", "haswell"])]),
        .target(name: "RowKernelsAVX512", dependencies: ["CPrefetch"], swiftSettings: [.unsafeFlags(["-target-cpu", "skylake-avx512"])]),
        // GAO: schedules over the Transport protocol; loopback transport.
        .target(name: "GlobalAttention", dependencies: ["LocalAttention"]),
        // The only module that imports MPI.
        .target(name: "MPITransport", dependencies: ["GlobalAttention", "CMPI"]),
        // The C ABI.
        .target(name: "BurstAttention", dependencies: ["GlobalAttention", "MPITransport", "CBurstABI"]),
        // Benchmark CLI: one JSON line per measurement.
        .executableTarget(name: "burst-bench", dependencies: [
            "GlobalAttention", "LocalAttention", "MPITransport", "CMPI",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        .testTarget(name: "LocalAttentionTests", dependencies: ["LocalAttention", "RowKernelsAVX2", "RowKernelsAVX512"]),
        .testTarget(name: "GlobalAttentionTests", dependencies: ["GlobalAttention", "LocalAttention", "BurstAttention", "CBurstABI"]),
    ]
)
