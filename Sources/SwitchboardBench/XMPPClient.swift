import Foundation
import NIOCore
import NIOSSL
import XMLStream
import XMPPCore

/// What a connection is for.
enum ClientGoal: Sendable {
    /// Authenticate, bind, optionally send initial presence, then hand over to the scenario.
    case session(presence: Bool)
    /// XEP-0077 in-band registration before authentication, then close.
    case register
}

enum RegisterOutcome: Sendable {
    case created
    case existed
}

/// Receives a connection's events. All calls happen on the connection's event loop.
protocol XMPPClientDelegate: AnyObject {
    /// Bound (and presence sent, if asked for): the session is usable.
    func clientReady(_ client: XMPPClient)
    /// In-band registration finished; the client closes itself afterwards.
    func clientRegistered(_ client: XMPPClient, _ outcome: RegisterOutcome)
    /// The connection failed, before or after it was ready. Called at most once; `clientClosed` follows.
    func clientFailed(_ client: XMPPClient, _ reason: String, afterReady: Bool)
    /// A stanza for a ready session (message, presence, IQ result/error).
    func client(_ client: XMPPClient, receivedStanza stanza: XMLElement)
    /// Hot path: the raw bytes of a `<message>` for a ready session; return true if handled
    /// (otherwise it is parsed and passed to `client(_:receivedStanza:)`).
    func client(_ client: XMPPClient, receivedMessageBytes bytes: ByteBuffer) -> Bool
    /// The channel is gone. Called exactly once per `connect`.
    func clientClosed(_ client: XMPPClient)
}

/// One client connection as a channel handler: a small state machine running
/// stream open → features → STARTTLS → SASL → restart → bind → session (if required)
/// → initial presence (optional) → ready, then clean close with `</stream:stream>`.
///
/// Standard XMPP only (RFC 6120, RFC 6121, RFC 7395, XEP-0077), so it drives any server.
/// Everything runs on the channel's event loop.
final class XMPPClient: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    enum Phase: String {
        case idle, connecting, negotiating, startingTLS, authenticating, registering, binding, establishingSession, ready, closing, closed
    }

    let index: Int
    let username: String
    let settings: ClientSettings
    let goal: ClientGoal
    weak var delegate: (any XMPPClientDelegate)?

    private(set) var phase: Phase = .idle
    /// The full JID the server bound.
    private(set) var boundJID: String?
    private(set) var startNanos: UInt64 = 0
    private(set) var readyNanos: UInt64 = 0

    // Scenario bookkeeping (owned by the worker that created the client).
    var holdsSlot = false
    var markNanos: UInt64 = 0
    var messagePrefix: ByteBuffer?
    var messageSuffix: ByteBuffer?
    /// Deliver `<message>` bytes to the delegate's fast path instead of parsing them.
    var fastMessages = false

    private var context: ChannelHandlerContext?
    private var channel: (any Channel)?
    private var framer: StanzaFramer
    private var parser: XMLStreamParser
    private let webSocket: Bool
    private let defaultNamespace: String
    private var secure: Bool
    private var started = false
    private var authenticated = false
    private var sessionRequired = false
    private var scram: SCRAMClient?
    private var scramFinalSent = false
    private var timeoutTask: Scheduled<Void>?
    private var closeTask: Scheduled<Void>?
    private var failed = false
    private var closedReported = false
    private var needsFlush = false

    private static let limits = XMLStreamLimits(maxStanzaBytes: 4 * 1024 * 1024, maxDepth: 64)

    init(index: Int, settings: ClientSettings, goal: ClientGoal, delegate: any XMPPClientDelegate) {
        self.index = index
        self.username = settings.username(index)
        self.settings = settings
        self.goal = goal
        self.delegate = delegate
        webSocket = settings.transport.isWebSocket
        defaultNamespace = webSocket ? "" : NS.client
        framer = StanzaFramer(mode: webSocket ? .framed : .stream)
        parser = XMLStreamParser(limits: Self.limits, framing: webSocket ? .framed : .stream)
        secure = settings.transport == .tls || settings.transport == .wss
    }

    // MARK: - Connecting

    /// Opens the connection on `loop` (must be the current loop).
    func connect(on loop: any EventLoop, source: SocketAddress?) {
        phase = .connecting
        startNanos = MonotonicClock.nanos()
        timeoutTask = loop.assumeIsolated().scheduleTask(in: settings.loginTimeout) { [weak self] in
            self?.loginTimedOut()
        }
        let bound = NIOLoopBound(self, eventLoop: loop)
        let settings = self.settings
        ChannelSetup.bootstrap(on: loop, settings: settings, source: source) { channel in
            try ChannelSetup.configure(channel, settings: settings, client: bound)
        }
        .connect(to: settings.serverAddress)
        .assumeIsolated()
        .whenComplete { [self] result in
            switch result {
            case .success(let channel):
                self.channel = channel
                channel.closeFuture.assumeIsolated().whenComplete { _ in self.finishClosed() }
                if phase == .closing || phase == .closed || failed { channel.close(promise: nil) }
            case .failure(let error):
                fail("connect: \(ChannelSetup.describe(error))")
                finishClosed()
            }
        }
    }

    // MARK: - Channel events

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        channel = context.channel
        if context.channel.isActive { start() }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    func channelActive(context: ChannelHandlerContext) {
        start()
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        finishClosed()
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if phase != .closing && phase != .closed {
            fail("connection error in \(phase.rawValue): \(ChannelSetup.describe(error))")
        }
        context.close(promise: nil)
    }

    /// An error seen by a handler in front of this one before it was added (WebSocket upgrade).
    func pipelineFailed(_ error: any Error, channel: any Channel) {
        if phase != .closing && phase != .closed {
            fail("\(ChannelSetup.describe(error))")
        }
        channel.close(promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = unwrapInboundIn(data)
        framer.append(&buffer)
        while phase != .closed {
            let event: StanzaFramer.Event?
            do {
                event = try framer.next()
            } catch {
                fail("unparseable data from server: \(error)")
                context.close(promise: nil)
                return
            }
            guard let event else { break }
            handle(event)
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        flushIfNeeded()
        context.fireChannelReadComplete()
    }

    private func start() {
        guard !started else { return }
        started = true
        if phase == .connecting { phase = .negotiating }
        openStream()
    }

    // MARK: - Output

    /// Writes one element and flushes.
    func send(_ element: XMLElement) {
        guard let context else { return }
        var buffer = context.channel.allocator.buffer(capacity: 256)
        XMLSerializer.write(element, into: &buffer, defaultNamespace: defaultNamespace, streamPrefixDeclared: !webSocket)
        context.writeAndFlush(wrapOutboundOut(buffer), promise: nil)
        needsFlush = false
    }

    private func sendRaw(_ text: String) {
        guard let context else { return }
        context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(string: text)), promise: nil)
        needsFlush = false
    }

    /// Hot path: queues bytes without flushing (flushed at the end of the read batch or by `flushIfNeeded`).
    func write(_ buffer: ByteBuffer) {
        guard let context else { return }
        context.write(wrapOutboundOut(buffer), promise: nil)
        needsFlush = true
    }

    func flushIfNeeded() {
        guard needsFlush, let context else { return }
        needsFlush = false
        context.flush()
    }

    var allocator: ByteBufferAllocator { context?.channel.allocator ?? ByteBufferAllocator() }

    var isWritable: Bool { context?.channel.isWritable ?? false }

    private func openStream() {
        if webSocket {
            send(XMLElement("open", xmlns: XMLNamespace.framing, ["to": settings.domain, "version": "1.0"]))
        } else {
            var header = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='"
            var escaped = ByteBuffer()
            XMLSerializer.writeEscaped(settings.domain, into: &escaped, attribute: true)
            header += escaped.readString(length: escaped.readableBytes) ?? ""
            header += "' version='1.0' xml:lang='en'>"
            sendRaw(header)
        }
    }

    /// Restarts the stream (after STARTTLS or SASL success): new framer state, new parser, new header.
    private func restartStream() {
        framer.reset()
        parser = XMLStreamParser(limits: Self.limits, framing: webSocket ? .framed : .stream)
        phase = .negotiating
        openStream()
    }

    // MARK: - Closing and failing

    /// Closes the stream cleanly (`</stream:stream>` or `<close/>`), then the connection once
    /// the server closed its stream, or after `closeTimeout`.
    func close() {
        guard phase != .closing, phase != .closed else { return }
        let wasNegotiating = phase == .connecting || !started
        phase = .closing
        timeoutTask?.cancel()
        timeoutTask = nil
        guard let context, context.channel.isActive, !wasNegotiating else {
            channel?.close(promise: nil)
            return
        }
        if webSocket {
            sendRaw("<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>")
        } else {
            sendRaw("</stream:stream>")
        }
        closeTask = context.eventLoop.assumeIsolated().scheduleTask(in: settings.closeTimeout) { [weak self] in
            self?.channel?.close(promise: nil)
        }
    }

    /// Drops the connection without a closing handshake.
    func abort() {
        if phase != .closed { phase = .closing }
        channel?.close(promise: nil)
    }

    /// Reports a failure (once) and closes cleanly.
    func fail(_ reason: String) {
        guard !failed, phase != .closed else { return }
        failed = true
        let afterReady = readyNanos != 0
        delegate?.clientFailed(self, reason, afterReady: afterReady)
        close()
    }

    private func loginTimedOut() {
        timeoutTask = nil
        guard phase != .ready, phase != .closing, phase != .closed else { return }
        fail("timed out (phase \(phase.rawValue))")
        abort()
    }

    private func finishClosed() {
        guard !closedReported else { return }
        closedReported = true
        timeoutTask?.cancel()
        timeoutTask = nil
        closeTask?.cancel()
        closeTask = nil
        if phase != .closing && !failed {
            failed = true
            delegate?.clientFailed(self, "connection closed by the server (phase \(phase.rawValue))", afterReady: readyNanos != 0)
        }
        phase = .closed
        delegate?.clientClosed(self)
    }

    private func serverClosedStream() {
        if phase != .closing {
            fail("server closed the stream (phase \(phase.rawValue))")
        }
        phase = .closing
        channel?.close(promise: nil)
    }

    // MARK: - Input

    private func handle(_ event: StanzaFramer.Event) {
        switch event {
        case .streamOpened(let tag):
            parser = XMLStreamParser(limits: Self.limits, framing: .stream)
            do {
                try parser.feed(tag) { _ in }
            } catch {
                fail("invalid stream header from server: \(error)")
                abort()
            }
        case .streamClosed:
            serverClosedStream()
        case .element(let bytes):
            if fastMessages, phase == .ready, FastScan.isElement(bytes, named: "message"),
                let delegate, delegate.client(self, receivedMessageBytes: bytes)
            {
                return
            }
            do {
                try parser.feed(bytes) { event in
                    if case .element(let element) = event { self.handleElement(element) }
                }
            } catch {
                fail("invalid XML from server: \(error)")
                abort()
            }
        }
    }

    private func handleElement(_ element: XMLElement) {
        guard phase != .closed else { return }
        switch element.namespace {
        case XMLNamespace.framing:
            if element.name == "close" { serverClosedStream() }
            return  // <open/>: the server's stream header
        case NS.streams:
            if element.name == "error" {
                fail("stream error: \(Self.describeError(element, namespace: NS.streamErrors))")
                abort()
            } else if element.name == "features" {
                onFeatures(element)
            }
            return
        case NS.tls:
            if element.name == "proceed" {
                onProceed()
            } else {
                fail("STARTTLS refused")
            }
            return
        case NS.sasl:
            onSASL(element)
            return
        default:
            break
        }
        switch element.name {
        case "iq":
            onIQ(element)
        case "message", "presence":
            if phase == .ready { delegate?.client(self, receivedStanza: element) }
        default:
            break
        }
    }

    private func onFeatures(_ features: XMLElement) {
        guard phase == .negotiating else { return }
        if !authenticated {
            if settings.transport == .starttls && !secure {
                guard features.child("starttls", namespace: NS.tls) != nil else {
                    fail("server does not offer STARTTLS")
                    return
                }
                phase = .startingTLS
                send(XMLElement("starttls", xmlns: NS.tls))
                return
            }
            if case .register = goal {
                sendRegistration()
                return
            }
            let offered = features.child("mechanisms", namespace: NS.sasl)?.elements
                .filter { $0.name == "mechanism" }.map { $0.text } ?? []
            guard offered.contains(settings.mechanism.rawValue) else {
                fail("server does not offer \(settings.mechanism.rawValue) (offers: \(offered.joined(separator: " ")))")
                return
            }
            authenticate()
        } else {
            guard features.child("bind", namespace: NS.bind) != nil else {
                fail("server does not offer resource binding")
                return
            }
            if let session = features.child("session", namespace: NS.session) {
                sessionRequired = session.child("optional", namespace: NS.session) == nil
            }
            phase = .binding
            var bind = XMLElement("bind", xmlns: NS.bind)
            if !settings.resource.isEmpty {
                bind.append(XMLElement("resource", xmlns: NS.bind).withText(settings.resource))
            }
            send(XMLElement("iq", xmlns: NS.client, ["type": "set", "id": "bind1"], children: [bind]))
        }
    }

    private func onProceed() {
        guard phase == .startingTLS, let context, let tlsContext = settings.tlsContext else {
            fail("unexpected <proceed/>")
            return
        }
        do {
            let handler = try NIOSSLClientHandler(context: tlsContext, serverHostname: settings.tlsServerName)
            try context.pipeline.syncOperations.addHandler(handler, position: .first)
        } catch {
            fail("could not start TLS: \(error)")
            abort()
            return
        }
        secure = true
        restartStream()
    }

    // MARK: - SASL

    private func authenticate() {
        phase = .authenticating
        var auth = XMLElement("auth", xmlns: NS.sasl, ["mechanism": settings.mechanism.rawValue])
        if let hash = settings.mechanism.scramHash {
            var client = SCRAMClient(hash: hash, username: username, password: settings.password, saltedPasswordCache: settings.scramCache)
            auth.append(text: Data(client.clientFirst()).base64EncodedString())
            scram = client
        } else {
            auth.append(text: Data(PLAINMessage.encode(authcid: username, password: settings.password)).base64EncodedString())
        }
        send(auth)
    }

    private static func decodeBase64(_ text: String) -> [UInt8]? {
        let trimmed = text.trimmingCharacters(in: .whitespacesAndNewlines)
        if trimmed.isEmpty || trimmed == "=" { return [] }
        guard let data = Data(base64Encoded: trimmed) else { return nil }
        return Array(data)
    }

    private func onSASL(_ element: XMLElement) {
        guard phase == .authenticating else { return }
        switch element.name {
        case "challenge":
            guard var client = scram, let payload = Self.decodeBase64(element.text) else {
                fail("unexpected SASL challenge")
                return
            }
            do {
                if !scramFinalSent {
                    let final = try client.receiveServerFirst(payload)
                    scramFinalSent = true
                    scram = client
                    send(XMLElement("response", xmlns: NS.sasl).withText(Data(final).base64EncodedString()))
                } else {
                    // Server-final-message as a challenge (RFC 6120 §6.4.6 allows either); answer empty.
                    try client.receiveServerFinal(payload)
                    scram = client
                    send(XMLElement("response", xmlns: NS.sasl))
                }
            } catch {
                fail("SCRAM: \(error)")
            }
        case "success":
            if var client = scram, !client.isAuthenticated {
                guard let payload = Self.decodeBase64(element.text), !payload.isEmpty else {
                    fail("SCRAM success without server signature")
                    return
                }
                do {
                    try client.receiveServerFinal(payload)
                    scram = client
                } catch {
                    fail("SCRAM server signature: \(error)")
                    return
                }
            }
            scram = nil
            authenticated = true
            restartStream()
        case "failure":
            fail("SASL failure: \(Self.describeError(element, namespace: NS.sasl))")
        default:
            fail("unexpected SASL element <\(element.name)>")
        }
    }

    // MARK: - IQs

    private func sendRegistration() {
        phase = .registering
        var query = XMLElement("query", xmlns: NS.register)
        query.append(XMLElement("username", xmlns: NS.register).withText(username))
        query.append(XMLElement("password", xmlns: NS.register).withText(settings.password))
        send(XMLElement("iq", xmlns: NS.client, ["type": "set", "id": "reg1"], children: [query]))
    }

    private func onIQ(_ iq: XMLElement) {
        let type = iq.stanzaType ?? ""
        let id = iq.id ?? ""
        switch phase {
        case .registering where id == "reg1":
            if type == "result" {
                registered(.created)
            } else if type == "error" {
                if Self.errorCondition(iq) == "conflict" {
                    registered(.existed)
                } else {
                    fail("registration refused: \(Self.describeStanzaError(iq))")
                }
            }
        case .binding where id == "bind1":
            guard type == "result" else {
                fail("bind refused: \(Self.describeStanzaError(iq))")
                return
            }
            boundJID = iq.child("bind", namespace: NS.bind)?.child("jid", namespace: NS.bind)?.text
            if sessionRequired {
                phase = .establishingSession
                send(XMLElement("iq", xmlns: NS.client, ["type": "set", "id": "sess1"], children: [XMLElement("session", xmlns: NS.session)]))
            } else {
                becomeReady()
            }
        case .establishingSession where id == "sess1":
            guard type == "result" else {
                fail("session refused: \(Self.describeStanzaError(iq))")
                return
            }
            becomeReady()
        case .ready, .closing:
            if type == "get" || type == "set" {
                answer(iq)
            } else if phase == .ready {
                delegate?.client(self, receivedStanza: iq)
            }
        default:
            break
        }
    }

    /// RFC 6120 §8.2.3: every IQ get/set gets a reply. Pings get a result, anything else service-unavailable.
    private func answer(_ iq: XMLElement) {
        var reply = XMLElement(name: "iq", namespace: NS.client)
        if let id = iq.id { reply[attribute: "id"] = id }
        if let from = iq[attribute: "from"] { reply[attribute: "to"] = from }
        if iq.child("ping", namespace: NS.ping) != nil {
            reply[attribute: "type"] = "result"
        } else {
            reply[attribute: "type"] = "error"
            var error = XMLElement("error", xmlns: NS.client, ["type": "cancel"])
            error.append(XMLElement("service-unavailable", xmlns: NS.stanzaErrors))
            reply.append(error)
        }
        send(reply)
    }

    private func registered(_ outcome: RegisterOutcome) {
        timeoutTask?.cancel()
        timeoutTask = nil
        readyNanos = MonotonicClock.nanos()
        delegate?.clientRegistered(self, outcome)
        close()
    }

    private func becomeReady() {
        timeoutTask?.cancel()
        timeoutTask = nil
        readyNanos = MonotonicClock.nanos()
        if case .session(presence: true) = goal {
            send(XMLElement(name: "presence", namespace: NS.client))
        }
        phase = .ready
        delegate?.clientReady(self)
    }

    // MARK: - Error descriptions

    static func errorCondition(_ stanza: XMLElement) -> String? {
        stanza.child("error")?.child(namespace: NS.stanzaErrors)?.name
    }

    static func describeStanzaError(_ stanza: XMLElement) -> String {
        guard let error = stanza.child("error") else { return "no error element" }
        return describeError(error, namespace: NS.stanzaErrors)
    }

    /// "condition (text)" from a stream, SASL or stanza error element.
    static func describeError(_ error: XMLElement, namespace: String) -> String {
        var condition = "unknown"
        var text = ""
        for child in error.elements where child.namespace == namespace {
            if child.name == "text" { text = child.text } else { condition = child.name }
        }
        return text.isEmpty ? condition : "\(condition) (\(text))"
    }
}

/// Monotonic time.
enum MonotonicClock {
    @inline(__always)
    static func nanos() -> UInt64 { NIODeadline.now().uptimeNanoseconds }
}
