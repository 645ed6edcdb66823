// swift-tools-version:6.0
import Foundation
import PackageDescription

let package = Package(
    name: "switchboard",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "switchboard", targets: ["switchboard"]),
        .executable(name: "switchboard-bench", targets: ["SwitchboardBench"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.81.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.30.0"),
        .package(url: "https://github.com/apple/swift-crypto.git", from: "4.0.0"),
        .package(url: "https://github.com/apple/swift-certificates.git", from: "1.10.0"),
        .package(url: "https://github.com/apple/swift-asn1.git", from: "1.3.0"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.1.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.6.0"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.5.0"),
        .package(url: "https://github.com/jpsim/Yams.git", from: "6.0.0"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift.git", from: "0.1.0"),
    ],
    targets: [
        // System libraries: libsqlite3 (embedded storage); libexpat only as the tests' reference parser.
        .systemLibrary(name: "CExpat", path: "Sources/CExpat", providers: [.apt(["libexpat1-dev"])]),
        .systemLibrary(name: "CSQLite", path: "Sources/CSQLite", providers: [.apt(["libsqlite3-dev"])]),

        // Layer 1: bytes -> XML elements. Depends on nothing but NIOCore.
        .target(
            name: "XMLStream",
            dependencies: [.product(name: "NIOCore", package: "swift-nio")]
        ),
        // Layer 2: XMPP vocabulary: JIDs, stanzas, errors, SASL mechanisms. Pure.
        .target(
            name: "XMPPCore",
            dependencies: [
                "XMLStream",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "_CryptoExtras", package: "swift-crypto"),
            ]
        ),
        // Layer 3: one store protocol per aggregate; no database code.
        .target(name: "Storage", dependencies: ["XMPPCore"]),
        // Layer 4: the SQLite implementation of the stores.
        .target(
            name: "SQLiteStorage",
            dependencies: ["Storage", "CSQLite", .product(name: "Logging", package: "swift-log")]
        ),
        // Layer 4b: the organisation directory's rules, snapshot and search (no I/O of its own).
        .target(
            name: "Directory",
            dependencies: ["Storage", "XMPPCore", .product(name: "NIOConcurrencyHelpers", package: "swift-nio")]
        ),
        // Layer 4c: keys (master key, data keys, AES-256-GCM field cipher) and the hash-chained trail.
        .target(
            name: "Vault",
            dependencies: [
                "Storage",
                "XMPPCore",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "_CryptoExtras", package: "swift-crypto"),
            ]
        ),
        // Layer 5: NIO pipelines, sessions, router, module registry, listeners.
        .target(
            name: "Server",
            dependencies: [
                "XMLStream", "XMPPCore", "Storage",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Yams", package: "Yams"),
            ]
        ),
        // Layer 6: features, one module type each.
        .target(
            name: "Modules",
            dependencies: [
                "Server", "Storage", "XMPPCore", "XMLStream", "Directory", "LDAP", "Vault",
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Crypto", package: "swift-crypto"),
            ]
        ),
        // LDAPv3 client (RFC 4511) for directory sync and LDAP bind login. Depends on no other target.
        .target(
            name: "LDAP",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // Seeded generators and time budgets for the fuzz tests (no dependencies).
        .target(name: "FuzzSupport"),
        // How a server process is put together (stores + key ring), shared by the CLI and the tests.
        .target(name: "Assembly", dependencies: ["Server", "SQLiteStorage", "Storage", "Vault"]),
        // The executable: serve, user, bench ...
        .executableTarget(
            name: "switchboard",
            dependencies: [
                "Server", "Modules", "SQLiteStorage", "Directory", "Vault", "Assembly",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        // The load generator: standard XMPP only, so it drives any server (ours, Prosody, ejabberd).
        .executableTarget(
            name: "SwitchboardBench",
            dependencies: [
                "XMLStream", "XMPPCore",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
            ]
        ),
        // Starts the real server on port 0 with a temporary data directory, for tests.
        .target(
            name: "SwitchboardTestSupport",
            dependencies: [
                "Server", "Modules", "SQLiteStorage", "Assembly",
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
            ]
        ),
        .testTarget(name: "XMLStreamTests", dependencies: ["XMLStream", "CExpat", "FuzzSupport"]),
        .testTarget(name: "XMPPCoreTests", dependencies: ["XMPPCore", "FuzzSupport"]),
        .testTarget(
            name: "LDAPTests",
            dependencies: [
                "LDAP", "SwitchboardTestSupport",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOTestUtils", package: "swift-nio"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
            ]
        ),
        .testTarget(
            name: "ServerTests",
            dependencies: [
                "SwitchboardTestSupport", "SQLiteStorage", "Server", "Modules", "Directory", "Vault",
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
                .product(name: "Crypto", package: "swift-crypto"),
            ]
        ),
    ]
)

// libFuzzer targets (docs/security.md, "Fuzzing"), only when asked for, so ordinary builds and CI
// never see -sanitize=fuzzer:
//   SWITCHBOARD_FUZZ=1 swift build --scratch-path .build-fuzz --product fuzz-xmlstream
// The code under test is instrumented too (coverage guidance); its dependencies are not.
if ProcessInfo.processInfo.environment["SWITCHBOARD_FUZZ"] != nil {
    for target in package.targets where target.name == "XMLStream" || target.name == "XMPPCore" {
        target.swiftSettings = (target.swiftSettings ?? []) + [.unsafeFlags(["-sanitize=fuzzer"])]
    }
    let fuzzSettings: [SwiftSetting] = [.unsafeFlags(["-sanitize=fuzzer"])]
    // libFuzzer without its main (SwiftPM renames an executable's entry point, so the targets'
    // main.swift calls LLVMFuzzerRunDriver); the archive sits next to the toolchain's clang.
    let runtime = ProcessInfo.processInfo.environment["SWITCHBOARD_FUZZ_RUNTIME"]
        ?? "/opt/swift/usr/lib/clang/21/lib/linux/libclang_rt.fuzzer_no_main-x86_64.a"
    let fuzzLinking: [LinkerSetting] = [.unsafeFlags(["-Xlinker", runtime, "-lstdc++", "-lm"])]
    package.targets += [
        .executableTarget(
            name: "FuzzXMLStreamParser", dependencies: ["XMLStream"], swiftSettings: fuzzSettings, linkerSettings: fuzzLinking),
        .executableTarget(name: "FuzzSASL", dependencies: ["XMPPCore"], swiftSettings: fuzzSettings, linkerSettings: fuzzLinking),
    ]
    package.products += [
        .executable(name: "fuzz-xmlstream", targets: ["FuzzXMLStreamParser"]),
        .executable(name: "fuzz-sasl", targets: ["FuzzSASL"]),
    ]
}
