// swift-tools-version:6.0
// The floor under "CPU per message" for a SwiftNIO server: the C relay's job (bench/floor/relay.c)
// done with one NIO event loop, so the cost NIO and the Swift runtime add before any XMPP work is
// measured on the machine at hand. Built only by `bench/floor/run.sh --nio` (not by CI).
import PackageDescription

let package = Package(
    name: "nio-relay",
    dependencies: [.package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2")],
    targets: [
        .executableTarget(
            name: "nio-relay",
            dependencies: [.product(name: "NIOCore", package: "swift-nio"), .product(name: "NIOPosix", package: "swift-nio")])
    ]
)
