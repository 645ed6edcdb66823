import NIOCore
import NIOHTTP1

/// Plain HTTP on the HTTP port: Prometheus metrics and a health check. WebSocket upgrades
/// at `/xmpp-websocket` are taken by the upgrader before requests reach this handler.
final class HTTPHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let server: ServerContext
    private var head: HTTPRequestHead?

    init(server: ServerContext) {
        self.server = server
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            self.head = head
        case .body:
            break
        case .end:
            guard let head else { return }
            self.head = nil
            respond(context: context, head: head)
        }
    }

    private func respond(context: ChannelHandlerContext, head: HTTPRequestHead) {
        let path = head.uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? head.uri
        switch (head.method, path) {
        case (.GET, "/metrics"):
            let body = server.metrics.exposition()
            write(context: context, head: head, status: .ok, contentType: "text/plain; version=0.0.4; charset=utf-8", body: body)
        case (.GET, "/health"):
            write(context: context, head: head, status: .ok, contentType: "application/json", body: Array(#"{"status":"ok"}"#.utf8))
        case (.GET, "/xmpp-websocket"):
            problem(context: context, head: head, status: .upgradeRequired, detail: "connect with a WebSocket client, subprotocol 'xmpp' (RFC 7395)")
        default:
            problem(context: context, head: head, status: .notFound, detail: "no resource at \(path)")
        }
    }

    /// RFC 9457 problem JSON.
    private func problem(context: ChannelHandlerContext, head: HTTPRequestHead, status: HTTPResponseStatus, detail: String) {
        let escaped = detail.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"")
        let body = #"{"type":"about:blank","title":"\#(status.reasonPhrase)","status":\#(status.code),"detail":"\#(escaped)"}"#
        write(context: context, head: head, status: status, contentType: "application/problem+json", body: Array(body.utf8))
    }

    private func write(context: ChannelHandlerContext, head: HTTPRequestHead, status: HTTPResponseStatus, contentType: String, body: [UInt8]) {
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: contentType)
        headers.add(name: "Content-Length", value: String(body.count))
        let keepAlive = head.isKeepAlive
        if !keepAlive { headers.add(name: "Connection", value: "close") }
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: status, headers: headers))), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(bytes: body)))), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil))).assumeIsolated().whenComplete { _ in
            if !keepAlive { context.close(promise: nil) }
        }
    }
}
