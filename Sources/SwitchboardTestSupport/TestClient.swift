import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL
import XMLStream
import XMPPCore

/// A small scripted XMPP client over plain TCP for in-process tests: send raw XML, wait for
/// elements, log in with SCRAM. Independent of the server's session code.
public final class TestClient: @unchecked Sendable {
    // @unchecked: used from one test task at a time.
    let channel: any Channel
    private var iterator: AsyncStream<ByteBuffer>.AsyncIterator
    private var parser = XMLStreamParser()
    private var buffered: [XMLStreamEvent] = []
    public private(set) var jid: String?
    public let domain: String

    /// Connects over TCP. `directTLS`: TLS from the first byte with this context (e.g. one that
    /// presents a client certificate); `tls`: the same with a default context that verifies nothing.
    public static func connect(
        port: Int, domain: String = "example.test", directTLS: NIOSSLContext? = nil, tls: Bool = false
    ) async throws -> TestClient {
        let (stream, continuation) = AsyncStream.makeStream(of: ByteBuffer.self)
        var configuration = TLSConfiguration.makeClientConfiguration()
        configuration.certificateVerification = .none
        let sslContext = try directTLS ?? (tls ? NIOSSLContext(configuration: configuration) : nil)
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let sslContext {
                        try channel.pipeline.syncOperations.addHandler(
                            try NIOSSLClientHandler(context: sslContext, serverHostname: nil))
                    }
                    try channel.pipeline.syncOperations.addHandler(Collector(continuation))
                }
            }
            .connect(host: "127.0.0.1", port: port)
            .get()
        return TestClient(channel: channel, iterator: stream.makeAsyncIterator(), domain: domain)
    }

    private init(channel: any Channel, iterator: AsyncStream<ByteBuffer>.AsyncIterator, domain: String) {
        self.channel = channel
        self.domain = domain
        self.iterator = iterator
    }

    /// Forwards received bytes into the client's stream.
    private final class Collector: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        let continuation: AsyncStream<ByteBuffer>.Continuation
        init(_ continuation: AsyncStream<ByteBuffer>.Continuation) { self.continuation = continuation }
        func channelRead(context: ChannelHandlerContext, data: NIOAny) { continuation.yield(unwrapInboundIn(data)) }
        func channelInactive(context: ChannelHandlerContext) { continuation.finish() }
    }

    public func send(_ xml: String) async throws {
        try await channel.writeAndFlush(ByteBuffer(string: xml))
    }

    public func send(_ element: XMLElement) async throws {
        var buffer = ByteBuffer()
        XMLSerializer.write(element, into: &buffer, defaultNamespace: NS.client)
        try await channel.writeAndFlush(buffer)
    }

    /// The next stream event; nil when the connection closed.
    ///
    /// Waiting longer than `timeout` for bytes closes the connection and throws "nothing received
    /// within …" (told apart from a server that closed the stream). The default only bounds a
    /// failing test, so it is generous: a loaded machine running every suite at once is slow.
    public func nextEvent(timeout: Duration = .seconds(30)) async throws -> XMLStreamEvent? {
        while buffered.isEmpty {
            let channel = self.channel
            let timedOut = NIOLockedValueBox(false)
            let timer = Task {
                try await Task.sleep(for: timeout)
                timedOut.withLockedValue { $0 = true }
                try? await channel.close()
            }
            defer { timer.cancel() }
            guard let chunk = await iterator.next() else {
                if timedOut.withLockedValue({ $0 }) { throw TestClientError("nothing received within \(timeout)") }
                return nil
            }
            try parser.feed(chunk) { buffered.append($0) }
        }
        return buffered.removeFirst()
    }

    /// The next top-level element; throws if the stream ends first.
    public func next(timeout: Duration = .seconds(30)) async throws -> XMLElement {
        while true {
            switch try await nextEvent(timeout: timeout) {
            case .element(let element): return element
            case .streamOpened: continue
            case .streamClosed, nil: throw TestClientError("stream closed")
            }
        }
    }

    /// Waits for an element matching `predicate`, skipping others.
    public func next(where predicate: (XMLElement) -> Bool, timeout: Duration = .seconds(30)) async throws -> XMLElement {
        while true {
            let element = try await next(timeout: timeout)
            if predicate(element) { return element }
        }
    }

    public func openStream() async throws -> XMLElement {
        parser = XMLStreamParser()
        buffered = []
        try await send(
            "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='\(domain)' version='1.0'>"
        )
        return try await next { $0.name == "features" }
    }

    /// SCRAM-SHA-256 (or the given hash) login and resource binding.
    @discardableResult
    public func login(_ username: String, password: String, resource: String = "test", hash: SCRAMHash = .sha256) async throws -> String {
        try await authenticate(username, password: password, hash: hash)
        return try await bind(resource)
    }

    /// SASL SCRAM and the stream restart; returns the post-authentication features.
    @discardableResult
    public func authenticate(_ username: String, password: String, hash: SCRAMHash = .sha256) async throws -> XMLElement {
        _ = try await openStream()
        var scram = SCRAMClient(hash: hash, username: username, password: password)
        try await send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='\(hash.mechanismName)'>\(Data(scram.clientFirst()).base64EncodedString())</auth>")
        let challenge = try await next()
        guard challenge.name == "challenge", let serverFirst = Data(base64Encoded: challenge.text) else {
            throw TestClientError("no challenge: \(XMLSerializer.string(challenge))")
        }
        let final = try scram.receiveServerFirst(Array(serverFirst))
        try await send("<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>\(Data(final).base64EncodedString())</response>")
        let outcome = try await next()
        guard outcome.name == "success" else { throw TestClientError("login failed: \(XMLSerializer.string(outcome))") }
        if let data = Data(base64Encoded: outcome.text) { try scram.receiveServerFinal(Array(data)) }
        return try await openStream()
    }

    /// SASL PLAIN (offered only on encrypted connections) and the stream restart; returns the
    /// post-authentication features, or throws with the failure.
    @discardableResult
    public func authenticatePLAIN(_ username: String, password: String) async throws -> XMLElement {
        _ = try await openStream()
        let message = Data(PLAINMessage.encode(authcid: username, password: password)).base64EncodedString()
        try await send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>\(message)</auth>")
        let outcome = try await next()
        guard outcome.name == "success" else { throw TestClientError("login failed: \(XMLSerializer.string(outcome))") }
        return try await openStream()
    }

    /// Binds a resource; returns the full JID.
    public func bind(_ resource: String) async throws -> String {
        try await send("<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>\(resource)</resource></bind></iq>")
        let bound = try await next { $0.id == "bind" }
        guard let jid = bound.child("bind", namespace: NS.bind)?.child("jid")?.text else {
            throw TestClientError("bind failed: \(XMLSerializer.string(bound))")
        }
        self.jid = jid
        return jid
    }

    public func close() async {
        try? await send("</stream:stream>")
        try? await channel.close()
    }

    /// Drops the TCP connection without closing the stream (a lost network).
    public func disconnect() async {
        try? await channel.close()
    }
}

public struct TestClientError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}
