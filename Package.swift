// swift-tools-version:5.10
// fp4swift: FP4 training numerics in Swift, exported through a C ABI for Python.
// Keep -static-stdlib out of this file: setup.py passes it for the shipped library,
// and it breaks `swift test`.
import PackageDescription

let package = Package(
    name: "fp4swift",
    products: [
        // The library Python loads (libfp4swift.so).
        .library(name: "fp4swift", type: .dynamic, targets: ["FP4CAPI"]),
    ],
    targets: [
        // OpenBLAS through its C header; used for the GEMMs of the linear layers.
        .systemLibrary(
            name: "CBLAS",
            path: "Sources/CBLAS",
            pkgConfig: "openblas",
            providers: [.apt(["libopenblas-dev"])]
        ),
        // ISA-specific micro-kernels (AVX-512 VNNI, AVX2) of the packed FP4 GEMM, each with a
        // per-function target attribute; FP4Core picks one at run time by CPU feature.
        .target(name: "FP4ISA"),
        // Pure Swift numerics. No Foundation (it would drag ICU into the .so).
        .target(name: "FP4Core", dependencies: ["CBLAS", "FP4ISA"]),
        // The C header (the one description of the ABI) and the thread-local error slot.
        .target(name: "FP4CABI"),
        // Only @_cdecl exports: argument checks, status codes, error text.
        .target(name: "FP4CAPI", dependencies: ["FP4Core", "FP4CABI"]),
        .testTarget(name: "FP4CoreTests", dependencies: ["FP4Core"]),
    ]
)
