import Foundation
import NIOCore
import NIOPosix
import NIOSSL
import XMPPCore

/// The event loops, one `LoopWorker` per loop, and the run's settings. Used from the main
/// thread, which blocks on futures (it is not an event loop).
final class Harness {
    let options: CommonOptions
    let settings: ClientSettings
    let group: MultiThreadedEventLoopGroup
    private let workers: [NIOLoopBoundBox<LoopWorker>]
    let fileLimit: Int

    init(options: CommonOptions) throws {
        self.options = options
        fileLimit = ProcessProbe.raiseFileLimit()
        let port = options.port ?? options.transport.defaultPort
        let serverAddress = try SocketAddress.makeAddressResolvingHost(options.host, port: port)
        var sources: [SocketAddress] = []
        if options.sourceAddresses > 0, case .v4 = serverAddress, serverAddress.ipAddress?.hasPrefix("127.") == true {
            for index in 1...min(options.sourceAddresses, 254) {
                sources.append(try SocketAddress(ipAddress: "127.0.0.\(index)", port: 0))
            }
        } else if options.sourceAddresses > 1 {
            progress("--source-addresses ignored: the server is not on an IPv4 loopback address")
        }
        var tlsContext: NIOSSLContext?
        if options.transport.hasTLS {
            var configuration = TLSConfiguration.makeClientConfiguration()
            configuration.certificateVerification = .none
            if let groups = options.tlsGroups { configuration.curves = try TLSGroups.parse(groups) }
            tlsContext = try NIOSSLContext(configuration: configuration)
        }
        let timeoutMillis = Int64(max(options.timeout, 0.1) * 1000)
        settings = ClientSettings(
            host: options.host,
            port: port,
            domain: options.domain,
            transport: options.transport,
            mechanism: options.mechanism,
            password: options.password,
            userPrefix: options.userPrefix,
            resource: options.resource,
            webSocketPath: options.wsPath,
            loginTimeout: .milliseconds(timeoutMillis),
            closeTimeout: .milliseconds(min(timeoutMillis, 5_000)),
            tlsContext: tlsContext,
            tlsServerName: options.tlsServerName ?? options.domain,
            scramCache: SCRAMSaltedPasswordCache(),
            serverAddress: serverAddress,
            sourceAddresses: sources
        )
        group = MultiThreadedEventLoopGroup(numberOfThreads: max(1, options.threads))
        var workers: [NIOLoopBoundBox<LoopWorker>] = []
        for loop in group.makeIterator() {
            workers.append(NIOLoopBoundBox.makeBoxSendingValue(LoopWorker(loop: loop, settings: settings), eventLoop: loop))
        }
        self.workers = workers
    }

    var threads: Int { workers.count }

    func shutdown() {
        try? group.syncShutdownGracefully()
    }

    /// Runs `body` on every worker's loop and returns the results in loop order.
    func onEach<T: Sendable>(_ body: @escaping @Sendable (LoopWorker) -> T) throws -> [T] {
        let futures = workers.map { box in box.eventLoop.submit { body(box.value) } }
        return try futures.map { try $0.wait() }
    }

    /// Runs `body` on one worker's loop (by index) and waits for its future.
    func onLoop(_ index: Int, _ body: @escaping @Sendable (LoopWorker) -> EventLoopFuture<Void>) throws {
        let box = workers[index % workers.count]
        try box.eventLoop.flatSubmit { body(box.value) }.wait()
    }

    /// Runs `body` on every worker's loop and waits for all returned futures.
    func onEachWait(_ body: @escaping @Sendable (LoopWorker) -> EventLoopFuture<Void>) throws {
        let futures = workers.map { box in box.eventLoop.flatSubmit { body(box.value) } }
        for future in futures { try future.wait() }
    }

    /// Connects `users`, split over the loops (user i on loop i mod threads), with `concurrency`
    /// in flight in total; returns when all are done.
    func launch(users: [Int], concurrency: Int, goal: ClientGoal, action: ReadyAction) throws {
        let count = workers.count
        var perLoop = Array(repeating: [Int](), count: count)
        for (position, user) in users.enumerated() { perLoop[position % count].append(user) }
        let futures = workers.enumerated().map { index, box in
            let share = concurrency / count + (index < concurrency % count ? 1 : 0)
            let users = perLoop[index]
            return box.eventLoop.flatSubmit { box.value.launch(users: users, concurrency: max(1, share), goal: goal, action: action) }
        }
        for future in futures { try future.wait() }
    }

    func resetStats() throws {
        _ = try onEach { $0.resetStats() }
    }

    func stats() throws -> LoopStats {
        var total = LoopStats()
        for stats in try onEach({ $0.stats }) { total.merge(stats) }
        return total
    }

    func heldCount() throws -> Int {
        try onEach { $0.held.count }.reduce(0, +)
    }

    func heldJIDs() throws -> [Int: String] {
        var all: [Int: String] = [:]
        for part in try onEach({ $0.heldJIDs }) { all.merge(part) { first, _ in first } }
        return all
    }

    /// Closes every held session cleanly and waits (bounded by the close timeout) for the server.
    func closeAll() throws {
        try onEachWait { $0.closeAll() }
    }

    func users(count: Int, from first: Int) -> [Int] {
        Array(first..<(first + max(0, count)))
    }

    /// Common JSON fields describing the run.
    func header(scenario: String) -> [(String, JSON)] {
        [
            ("scenario", .string(scenario)),
            ("label", .string(options.label)),
            ("transport", .string(options.transport.rawValue)),
            ("mechanism", .string(options.mechanism.rawValue)),
            ("host", .string(options.host)),
            ("port", .int(settings.port)),
            ("domain", .string(options.domain)),
            ("users", .int(options.users)),
            ("concurrency", .int(options.concurrency)),
            ("threads", .int(threads)),
            ("source_addresses", .int(settings.sourceAddresses.count)),
            ("server_pid", options.serverPID.map { .int(Int($0)) } ?? .null),
            ("tls_groups", options.transport.hasTLS ? .string(options.tlsGroups ?? "default") : .null),
        ]
    }
}

func sleepSeconds(_ seconds: Double) {
    guard seconds > 0 else { return }
    Thread.sleep(forTimeInterval: seconds)
}

func emit(_ pairs: [(String, JSON)]) {
    FileHandle.standardOutput.write(Data((JSON.object(pairs).render() + "\n").utf8))
}

enum TLSGroups {
    static func parse(_ list: String) throws -> [NIOTLSCurve] {
        try list.split(separator: ",").map { name -> NIOTLSCurve in
            switch name.trimmingCharacters(in: .whitespaces).lowercased() {
            case "x25519": return .x25519
            case "x25519mlkem768", "x25519_mlkem768": return .x25519_MLKEM768
            case "p256", "secp256r1": return .secp256r1
            case "p384", "secp384r1": return .secp384r1
            case "p521", "secp521r1": return .secp521r1
            default: throw BenchError("unknown TLS group '\(name)' (x25519, x25519mlkem768, p256, p384, p521)")
            }
        }
    }
}
