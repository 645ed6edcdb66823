import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import NIOWebSocket
import ServiceLifecycle
import Storage
import XMPPCore

/// The running server: its listeners and shared context, as one ServiceLifecycle service.
///
/// `run()` binds every enabled listener, reports the bound ports, serves until graceful
/// shutdown (SIGTERM), then closes sessions with `system-shutdown` and waits for them.
public final class XMPPServer: Service, Sendable {
    public let context: ServerContext
    private let group: any EventLoopGroup
    private let bound = NIOLockedValueBox<BoundPorts?>(nil)
    private let boundWaiters = NIOLockedValueBox<[CheckedContinuation<BoundPorts, any Error>]>([])
    private let statusFile: String?

    /// Ports actually bound (differs from configuration when it said 0).
    public struct BoundPorts: Sendable, Codable, Hashable {
        public var c2s: Int?
        public var c2sDirectTLS: Int?
        public var http: Int?
        public var pid: Int32

        enum CodingKeys: String, CodingKey {
            case c2s, c2sDirectTLS = "c2s_direct_tls", http, pid
        }
    }

    /// - Parameters:
    ///   - statusFile: if set, the bound ports are written there as JSON once listening.
    ///   - eventLoopGroup: defaults to one loop per core.
    public init(
        configuration: ServerConfiguration, stores: Stores, modules: [any ServerModule], logger: Logger,
        statusFile: String? = nil, eventLoopGroup: (any EventLoopGroup)? = nil
    ) throws {
        context = try ServerContext(configuration: configuration, stores: stores, modules: modules, logger: logger)
        group = eventLoopGroup ?? MultiThreadedEventLoopGroup(numberOfThreads: configuration.threads ?? Self.usableCores())
        self.statusFile = statusFile
    }

    /// Returns once every event loop has finished what it was running when called, and what
    /// was queued on it before. A client that has seen a routed message cannot tell whether the
    /// sender's loop has finished routing it (journaling its archive copies comes after the
    /// delivery): after this it has.
    public func settle() async {
        for loop in group.makeIterator() { try? await loop.submit {}.get() }
    }

    /// CPUs this process may run on (`taskset`, cgroup cpusets), at least 1. One event loop per
    /// usable core: more loops than cores only adds cross-thread hops between sessions.
    static func usableCores() -> Int {
        // Linux: the affinity mask in /proc/self/status ("Cpus_allowed: 3" is cores 0 and 1).
        if let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
            let line = status.split(separator: "\n").first(where: { $0.hasPrefix("Cpus_allowed:") })
        {
            let hex = line.dropFirst("Cpus_allowed:".count).filter { $0.isHexDigit }
            let count = hex.reduce(0) { $0 + (Int(String($1), radix: 16) ?? 0).nonzeroBitCount }
            if count > 0 { return min(count, System.coreCount) }
        }
        return System.coreCount
    }

    /// Waits until `run()` has bound its listeners, then returns their ports.
    public func waitUntilBound() async throws -> BoundPorts {
        if let ports = bound.withLockedValue({ $0 }) { return ports }
        return try await withCheckedThrowingContinuation { continuation in
            let ready: BoundPorts? = bound.withLockedValue { ports in
                if let ports { return ports }
                boundWaiters.withLockedValue { $0.append(continuation) }
                return nil
            }
            if let ready { continuation.resume(returning: ready) }
        }
    }

    public func run() async throws {
        let configuration = context.configuration
        let logger = context.logger
        let tlsContext: NIOSSLContext
        let clientCertificates: ClientCertificateVerifier?
        do {
            clientCertificates = try ClientCertificateVerifier.load(configuration: configuration)
            tlsContext = try TLSSetup.makeContext(
                configuration: configuration, logger: logger, clientAuthorities: clientCertificates?.trustRoots ?? [])
            if clientCertificates != nil {
                logger.info("client certificates requested on c2s listeners (SASL EXTERNAL)")
            }
        } catch {
            failWaiters(error)
            throw error
        }
        do {
            // Messages a crashed process had acknowledged reach the stores before anything else runs.
            try await context.journal.open(stores: context.stores)
            // New positions come after every stored one, whatever the clock did since.
            ArchiveIDGenerator.shared.advance(past: try await context.stores.archive.lastPosition())
            for hook in context.modules.startHooks { try await hook(context) }
        } catch {
            failWaiters(error)
            throw error
        }
        var channels: [any Channel] = []
        var ports = BoundPorts(pid: getpid())
        do {
            if configuration.c2s.enabled {
                let channel = try await bindC2S(
                    configuration.c2s, transport: .tcp(directTLS: false), tls: tlsContext, clientCertificates: clientCertificates)
                channels.append(channel)
                ports.c2s = channel.localAddress?.port
            }
            if configuration.c2sDirectTLS.enabled {
                let channel = try await bindC2S(
                    configuration.c2sDirectTLS, transport: .tcp(directTLS: true), tls: tlsContext, clientCertificates: clientCertificates)
                channels.append(channel)
                ports.c2sDirectTLS = channel.localAddress?.port
            }
            if configuration.http.enabled {
                let channel = try await bindHTTP(configuration.http)
                channels.append(channel)
                ports.http = channel.localAddress?.port
                if let port = ports.http { context.fileShare.listenerBound(domain: configuration.domain, port: port) }
            }
        } catch {
            for channel in channels { try? await channel.close() }
            let wrapped = ConfigurationError("cannot listen: \(error)")
            failWaiters(wrapped)
            throw wrapped
        }
        logger.notice(
            "switchboard listening",
            metadata: [
                "xmpp.domain": "\(configuration.domain)",
                "c2s": "\(ports.c2s.map(String.init) ?? "off")",
                "c2s_direct_tls": "\(ports.c2sDirectTLS.map(String.init) ?? "off")",
                "http": "\(ports.http.map(String.init) ?? "off")",
            ])
        if let statusFile { try writeStatus(ports, to: statusFile) }
        bound.withLockedValue { $0 = ports }
        for waiter in boundWaiters.withLockedValue({ waiters in defer { waiters = [] }; return waiters }) {
            waiter.resume(returning: ports)
        }

        let housekeeping = Task { [context] in
            // Expired uploads are deleted at start and hourly.
            while !Task.isCancelled {
                if let removed = try? await context.fileShare.expire(stores: context.stores), removed > 0 {
                    context.logger.notice("deleted expired uploads", metadata: ["upload.count": "\(removed)"])
                }
                try? await Task.sleep(for: .seconds(3600))
            }
        }
        let background = context.modules.backgroundTasks.map { task in Task { [context] in await task(context) } }
        try? await gracefulShutdown()
        housekeeping.cancel()
        for task in background { task.cancel() }

        logger.notice("shutting down")
        for channel in channels { try? await channel.close() }
        let sessions = context.router.allSessions()
        for session in sessions { session.close(StreamError(.systemShutdown)) }
        // Give sessions a moment to flush their closing stream errors.
        let deadline = ContinuousClock.now + .seconds(5)
        while context.metrics.connectionsOpenValue > 0 || context.pendingWork.withLockedValue({ $0 }) > 0,
            ContinuousClock.now < deadline
        {
            try? await Task.sleep(for: .milliseconds(20))
        }
        await context.journal.close()
        logger.notice("stopped")
    }

    private func failWaiters(_ error: any Error) {
        for waiter in boundWaiters.withLockedValue({ waiters in defer { waiters = [] }; return waiters }) {
            waiter.resume(throwing: error)
        }
    }

    private func writeStatus(_ ports: BoundPorts, to path: String) throws {
        let data = try JSONEncoder().encode(ports)
        let temporary = path + ".tmp"
        try data.write(to: URL(fileURLWithPath: temporary))
        _ = rename(temporary, path)
    }

    private func bootstrap() -> ServerBootstrap {
        ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 4096)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelOption(.maxMessagesPerRead, value: 4)
    }

    private func bindC2S(
        _ listener: ServerConfiguration.Listener, transport: C2STransport, tls: NIOSSLContext,
        clientCertificates: ClientCertificateVerifier?
    ) async throws -> any Channel {
        let context = self.context
        let limiter = context.connectionLimiter
        return try await bootstrap()
            .childChannelInitializer { channel in
                // Per-address limits first: a refused connection costs an accept and a close,
                // no TLS handshake, no handler (failing the initializer makes NIO close it).
                if limiter.enabled, let key = ConnectionLimiter.key(channel.remoteAddress), !limiter.isExempt(channel.remoteAddress) {
                    if let refusal = limiter.admit(key) {
                        context.metrics.limitHit(refusal == .tooManyOpen ? .connectionsPerAddress : .connectionRate)
                        return channel.eventLoop.makeFailedFuture(refusal)
                    }
                    channel.closeFuture.whenComplete { _ in limiter.release(key) }
                }
                return channel.eventLoop.makeCompletedFuture {
                    if transport == .tcp(directTLS: true) {
                        try channel.pipeline.syncOperations.addHandler(
                            TLSSetup.serverHandler(context: tls, requestsClientCertificates: clientCertificates != nil))
                    }
                    try channel.pipeline.syncOperations.addHandler(
                        C2SHandler(server: context, transport: transport, tlsContext: tls, clientCertificates: clientCertificates))
                }
            }
            .bind(host: listener.bind, port: listener.port)
            .get()
    }

    private func bindHTTP(_ listener: ServerConfiguration.Listener) async throws -> any Channel {
        let context = self.context
        let maxFrame = context.configuration.limits.maxStanzaBytes + 4096
        return try await bootstrap()
            .childChannelInitializer { channel in
                let upgrader = NIOWebSocketServerUpgrader(
                    maxFrameSize: maxFrame,
                    automaticErrorHandling: true,
                    shouldUpgrade: { channel, head in
                        let path = head.uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? head.uri
                        let protocols = head.headers[canonicalForm: "Sec-WebSocket-Protocol"].map { $0.lowercased() }
                        guard path == "/xmpp-websocket", protocols.contains("xmpp") else {
                            return channel.eventLoop.makeSucceededFuture(nil)
                        }
                        var headers = HTTPHeaders()
                        headers.add(name: "Sec-WebSocket-Protocol", value: "xmpp")
                        return channel.eventLoop.makeSucceededFuture(headers)
                    },
                    upgradePipelineHandler: { channel, _ in
                        channel.eventLoop.makeCompletedFuture {
                            try channel.pipeline.syncOperations.addHandlers([
                                NIOWebSocketFrameAggregator(
                                    minNonFinalFragmentSize: 1, maxAccumulatedFrameCount: 64, maxAccumulatedFrameSize: maxFrame),
                                WebSocketXMPPHandler(),
                                C2SHandler(server: context, transport: .websocket, tlsContext: nil),
                            ])
                        }
                    }
                )
                return channel.eventLoop.makeCompletedFuture {
                    let httpHandler = HTTPHandler(server: context)
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(
                        withServerUpgrade: (
                            upgraders: [upgrader],
                            completionHandler: { context in
                                let pipeline = context.pipeline.syncOperations
                                if let handler = try? pipeline.handler(type: HTTPHandler.self) {
                                    pipeline.removeHandler(handler, promise: nil)
                                }
                            }
                        )
                    )
                    try channel.pipeline.syncOperations.addHandler(httpHandler)
                }
            }
            .bind(host: listener.bind, port: listener.port)
            .get()
    }
}
