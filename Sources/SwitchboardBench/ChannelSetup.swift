import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import NIOWebSocket

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Bootstrap and pipeline for each transport.
///
/// - tcp, starttls: [XMPPClient] (STARTTLS inserts an NIOSSLClientHandler at the front later)
/// - tls:           [NIOSSLClientHandler, XMPPClient]
/// - ws, wss:       [(NIOSSLClientHandler), EarlyFailureReporter, HTTP client codec + upgrade handler,
///                   UpgradeRequester]; after the 101 the WebSocket frame codec, `WebSocketXMPPAdapter`
///                   and the XMPPClient are appended (RFC 7395, subprotocol "xmpp", masked client frames).
enum ChannelSetup {
    static func bootstrap(
        on loop: any EventLoop,
        settings: ClientSettings,
        source: SocketAddress?,
        initializer: @escaping @Sendable (any Channel) throws -> Void
    ) -> ClientBootstrap {
        var bootstrap = ClientBootstrap(group: loop)
            .connectTimeout(settings.loginTimeout)
            .channelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .channelOption(ChannelOptions.tcpOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try initializer(channel) }
            }
        if let source {
            // Defer the port choice to connect() so each source address offers a full port range
            // per destination instead of one shared range (Linux IP_BIND_ADDRESS_NO_PORT).
            bootstrap = bootstrap
                .channelOption(ChannelOptions.socket(SocketOptionLevel(IPPROTO_IP), SocketOptionName(24)), value: 1)
                .bind(to: source)
        }
        return bootstrap
    }

    static func configure(_ channel: any Channel, settings: ClientSettings, client: NIOLoopBound<XMPPClient>) throws {
        let sync = channel.pipeline.syncOperations
        if settings.transport == .tls || settings.transport == .wss {
            guard let tlsContext = settings.tlsContext else { throw BenchError("no TLS context") }
            try sync.addHandler(NIOSSLClientHandler(context: tlsContext, serverHostname: settings.tlsServerName))
        }
        guard settings.transport.isWebSocket else {
            try sync.addHandler(client.value)
            return
        }
        try sync.addHandler(EarlyFailureReporter(client: client.value))
        let upgrader = NIOWebSocketClientUpgrader(maxFrameSize: 1 << 22, automaticErrorHandling: true) { channel, response in
            channel.eventLoop.makeCompletedFuture {
                let protocols = response.headers[canonicalForm: "Sec-WebSocket-Protocol"].map { $0.lowercased() }
                guard protocols.contains("xmpp") else {
                    throw BenchError("server did not accept the WebSocket subprotocol 'xmpp'")
                }
                try channel.pipeline.syncOperations.addHandler(WebSocketXMPPAdapter())
                try channel.pipeline.syncOperations.addHandler(client.value)
            }
        }
        try sync.addHTTPClientHandlers(
            leftOverBytesStrategy: .forwardBytes,
            withClientUpgrade: (upgraders: [upgrader], completionHandler: { _ in })
        )
        let hostHeader = "\(settings.host):\(settings.port)"
        try sync.addHandler(UpgradeRequester(host: hostHeader, path: settings.webSocketPath))
    }

    static func describe(_ error: any Error) -> String {
        if let error = error as? IOError { return "\(error.description)" }
        return "\(error)"
    }
}

struct BenchError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// Sends the HTTP GET that asks for the WebSocket upgrade once the channel is active.
final class UpgradeRequester: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundOut = HTTPClientRequestPart

    private let host: String
    private let path: String
    private var sent = false

    init(host: String, path: String) {
        self.host = host
        self.path = path
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { sendRequest(context: context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        sendRequest(context: context)
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        // After the upgrade, WebSocket bytes pass through here on their way to the frame decoder.
        context.fireChannelRead(data)
    }

    private func sendRequest(context: ChannelHandlerContext) {
        guard !sent else { return }
        sent = true
        var headers = HTTPHeaders()
        headers.add(name: "Host", value: host)
        headers.add(name: "Sec-WebSocket-Protocol", value: "xmpp")
        headers.add(name: "Content-Length", value: "0")
        let head = HTTPRequestHead(version: .http1_1, method: .GET, uri: path, headers: headers)
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
    }
}

/// Reports errors that happen before the XMPPClient is in the pipeline (failed WebSocket upgrade).
final class EarlyFailureReporter: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    private let client: XMPPClient

    init(client: XMPPClient) {
        self.client = client
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        client.pipelineFailed(error, channel: context.channel)
        context.fireErrorCaught(error)
    }
}

/// RFC 7395 framing: one XML element per text frame. Inbound frames become ByteBuffers for the
/// XMPPClient; outbound ByteBuffers become masked text frames (RFC 6455 §5.3: clients must mask).
final class WebSocketXMPPAdapter: ChannelDuplexHandler {
    typealias InboundIn = WebSocketFrame
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = WebSocketFrame

    private var fragments: ByteBuffer?
    private var closeSent = false

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        switch frame.opcode {
        case .text, .binary:
            if frame.fin {
                context.fireChannelRead(wrapInboundOut(frame.unmaskedData))
            } else {
                fragments = frame.unmaskedData
            }
        case .continuation:
            guard var buffer = fragments else { return }
            var data = frame.unmaskedData
            buffer.writeBuffer(&data)
            if frame.fin {
                fragments = nil
                context.fireChannelRead(wrapInboundOut(buffer))
            } else {
                fragments = buffer
            }
        case .ping:
            let pong = WebSocketFrame(fin: true, opcode: .pong, maskKey: .random(), data: frame.unmaskedData)
            context.writeAndFlush(wrapOutboundOut(pong), promise: nil)
        case .connectionClose:
            sendClose(context: context)
            context.close(promise: nil)
        default:
            break
        }
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let buffer = unwrapOutboundIn(data)
        let frame = WebSocketFrame(fin: true, opcode: .text, maskKey: .random(), data: buffer)
        context.write(wrapOutboundOut(frame), promise: promise)
    }

    func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        if mode == .all { sendClose(context: context) }
        context.close(mode: mode, promise: promise)
    }

    private func sendClose(context: ChannelHandlerContext) {
        guard !closeSent, context.channel.isActive else { return }
        closeSent = true
        var data = context.channel.allocator.buffer(capacity: 2)
        data.write(webSocketErrorCode: .normalClosure)
        let frame = WebSocketFrame(fin: true, opcode: .connectionClose, maskKey: .random(), data: data)
        context.writeAndFlush(wrapOutboundOut(frame), promise: nil)
    }
}
