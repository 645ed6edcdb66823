import Foundation
import Logging
import NIOCore
import NIOSSL
import Storage
import XMLStream
import XMPPCore

/// How a client connection reaches us.
enum C2STransport: Equatable {
    /// RFC 6120 TCP stream; `directTLS` when TLS started before any XMPP (XEP-0368).
    case tcp(directTLS: Bool)
    /// RFC 7395 XMPP over WebSocket; each element travels in its own text frame.
    case websocket
}

/// One client connection: stream negotiation (STARTTLS, SASL, bind), then stanza handling.
///
/// All state belongs to the channel's event loop. Stanzas are processed strictly in order:
/// most complete synchronously (message routing to online sessions is fully synchronous);
/// those that need storage or a module's async handler pause the queue until they finish.
final class C2SHandler: ChannelInboundHandler, StanzaSink {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let server: ServerContext
    private let transport: C2STransport
    private let tlsContext: NIOSSLContext?
    /// Set when the server requests client certificates (a company CA exists).
    private let clientCertificates: ClientCertificateVerifier?
    /// The client's TLS certificate, evaluated once when the first stream over TLS opens.
    private var clientCertificate: ClientCertificateStatus = .absent
    private var clientCertificateChecked = false
    /// Serial of the certificate this connection authenticated with (SASL EXTERNAL).
    private var authenticatedSerial: String?
    private var logger: Logger
    private var context: ChannelHandlerContext?
    private var parser: XMLStreamParser
    private var streamOpen = false
    private var secure: Bool
    private var username: String?
    private var sasl: SASLState = .idle
    private var authFailures = 0
    private(set) var session: SessionHandle?
    private var pending = CircularBuffer<XMLElement>(initialCapacity: 4)
    private var busy = false
    private var flushScheduled = false
    private var closing = false
    private var pingOutstanding = false
    private var loginTimeout: Scheduled<Void>?
    private var remoteAddress: String?
    /// XEP-0198 state; `detached` while a resumable session waits for its client to come back.
    private var sm = StreamManagementState()
    private var detached = false
    private var resumptionExpiry: Scheduled<Void>?
    /// Set once a resuming connection took this session over; late deliveries go there.
    private var successor: SessionHandle?
    private let streamID = UUID().uuidString.lowercased()

    private enum SASLState {
        case idle
        case lookingUp
        case scram(SCRAMServer, username: String, disabled: Bool)
    }

    /// Stanzas queued behind an async one. Past `pauseReadingAt` the handler stops reading from
    /// the socket (TCP backpressure) until the queue drains, so a fast client cannot make the
    /// server buffer more than a few stanzas (each at most `max_stanza_bytes`).
    private static let pauseReadingAt = 8
    private var readingPaused = false

    /// Stanza rate limit (`limits.stanza_rate_per_second`): one token per top-level element.
    /// When the bucket is empty the queue stops and the socket is not read (TCP backpressure)
    /// until a tenth of a second's worth of tokens is earned; a client still backlogged after
    /// `stanza_rate_disconnect_after_seconds` of that gets `policy-violation`.
    private var bucket: TokenBucket?
    private var rateHold: Scheduled<Void>?
    /// Input held while the message journal catches up with the stores.
    private var journalHold = false
    /// Start of the current episode of continuous holding back, and the last resume in it.
    private var heldSince: NIODeadline?
    private var lastResume: NIODeadline?

    init(server: ServerContext, transport: C2STransport, tlsContext: NIOSSLContext?, clientCertificates: ClientCertificateVerifier? = nil) {
        self.server = server
        self.transport = transport
        self.tlsContext = tlsContext
        self.clientCertificates = clientCertificates
        self.logger = server.logger
        self.secure = transport == .tcp(directTLS: true)
        self.parser = Self.makeParser(server: server, transport: transport, authenticated: false)
        let limits = server.configuration.limits
        if limits.stanzaRatePerSecond > 0 {
            bucket = TokenBucket(
                rate: Double(limits.stanzaRatePerSecond), burst: Double(limits.stanzaBurst),
                now: NIODeadline.now().uptimeNanoseconds)
        }
    }

    /// Before authentication only SASL, STARTTLS and registration elements are expected, so the
    /// smaller `max_stanza_bytes_before_auth` bounds what an anonymous connection can make us hold.
    private static func makeParser(server: ServerContext, transport: C2STransport, authenticated: Bool) -> XMLStreamParser {
        let limits = server.configuration.limits
        return XMLStreamParser(
            limits: XMLStreamLimits(
                maxStanzaBytes: authenticated ? limits.maxStanzaBytes : min(limits.maxStanzaBytes, limits.maxStanzaBytesBeforeAuth),
                maxDepth: limits.maxDepth
            ),
            framing: transport == .websocket ? .framed : .stream
        )
    }

    // MARK: - Channel events

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        remoteAddress = context.channel.remoteAddress?.ipAddress
        logger[metadataKey: "xmpp.remote"] = "\(context.channel.remoteAddress?.description ?? "?")"
        server.metrics.connectionOpened()
        let seconds = Int64(server.configuration.limits.loginTimeoutSeconds)
        // Closures here hold the handler strongly (until they run or are cancelled): a weak
        // reference would give the handler a side table for life, and every retain and release
        // of it — several per routed message — would take the runtime's slow path.
        loginTimeout = context.eventLoop.assumeIsolated().scheduleTask(in: .seconds(seconds)) { [self] in
            guard session == nil, !closing else { return }
            self.server.metrics.limitHit(.loginTimeout)
            self.terminate(StreamError(.connectionTimeout, text: "login took too long"))
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    func channelInactive(context: ChannelHandlerContext) {
        loginTimeout?.cancel()
        rateHold?.cancel()
        rateHold = nil
        if session != nil, sm.resumable, !closing {
            // The connection dropped: keep the session for the client to resume (XEP-0198).
            detached = true
            session?.updatePresence { $0.detached = true }
            let seconds = Int64(server.configuration.limits.resumptionTimeoutSeconds)
            resumptionExpiry = context.eventLoop.assumeIsolated().scheduleTask(in: .seconds(seconds)) { [self] in
                guard detached else { return }
                logger.debug("resumption timed out")
                endSession()
            }
            logger.debug("session detached, resumable")
        } else {
            endSession()
        }
        // Counted closed once the session is detached or ended: whoever sees the gauge drop
        // (a test, an admin) sees the session's new state too.
        server.metrics.connectionClosed()
        context.fireChannelInactive()
    }

    /// Unbinds the session for good; unacknowledged messages are re-routed (never lost).
    private func endSession() {
        detached = false
        guard let session else { return }
        self.session = nil
        server.metrics.sessionsBound.decrement()
        if let token = sm.token { server.resumable.remove(token, ifHandle: session) }
        let unacked = Array(sm.unacked)
        sm.unacked.removeAll()
        if server.router.unbind(session) {
            server.endSession(session, unacked: unacked)
        } else if !unacked.isEmpty {
            server.endSession(session, unacked: unacked, runHooks: false)
        }
        logger.debug("session ended", metadata: ["xmpp.jid": "\(session.jid)"])
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !closing else { return }
        pingOutstanding = false
        let buffer = unwrapInboundIn(data)
        let parser = self.parser
        do {
            try parser.feed(buffer) { event in
                // A stream restart (STARTTLS, SASL success) replaces the parser; the old one's
                // remaining events belong to a finished stream and are ignored.
                guard parser === self.parser, !self.closing else { return }
                self.handle(event)
            }
        } catch let error as XMLStreamError {
            if parser === self.parser {
                logger.debug("refused XML", metadata: ["error": "\(error)"])
                if error.condition == .policyViolation {
                    server.metrics.limitHit(error.text.hasPrefix("elements nested") ? .stanzaDepth : .stanzaSize)
                }
                terminate(StreamError(error))
            }
        } catch {
            terminate(StreamError(.internalServerError))
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? IdleStateHandler.IdleStateEvent, event == .read {
            guard let session else { return }
            if pingOutstanding {
                if sm.resumable {
                    // Likely a dead mobile link: drop the connection but keep the session resumable.
                    context.close(promise: nil)
                } else {
                    terminate(StreamError(.connectionTimeout))
                }
            } else {
                pingOutstanding = true
                var ping = XMLElement("iq", xmlns: NS.client, ["type": "get", "id": "s2c-ping", "from": server.domain, "to": session.jid.description])
                ping.append(XMLElement("ping", xmlns: NS.ping))
                send(ping)
            }
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        logger.debug("connection error", metadata: ["error": "\(error)"])
        context.close(promise: nil)
    }

    // MARK: - Output

    // MARK: - Client state indication (XEP-0352)

    private var clientActive = true
    /// Presence held back while the client is inactive: the latest per sender, in arrival order.
    private var heldPresence: [String: XMLElement] = [:]
    private var heldOrder: [String] = []
    private static let maxHeldPresence = 2000

    func setClientActive(_ active: Bool) {
        clientActive = active
        if active { flushHeldPresence() }
    }

    private func flushHeldPresence() {
        guard !heldOrder.isEmpty else { return }
        let order = heldOrder
        let held = heldPresence
        heldOrder = []
        heldPresence = [:]
        for key in order { if let presence = held[key] { write(presence) } }
    }

    /// Sends a stanza, holding back unimportant presence while the client is inactive.
    func send(_ element: XMLElement) {
        send(element, text: nil)
    }

    /// `text`: the stanza serialised standalone (a routed message's text, shared with the
    /// archive): its bytes are written as they are. A redundant `xmlns='jabber:client'` on a
    /// TCP stream is the same element (the stream's default namespace).
    func send(_ element: XMLElement, text: String?) {
        if let successor {
            successor.deliver(element, text: text)
            return
        }
        if !clientActive {
            let type = element.stanzaType
            if element.name == "presence", type == nil || type == "unavailable" {
                let key = element[attribute: "from"] ?? ""
                if heldPresence.updateValue(element, forKey: key) == nil { heldOrder.append(key) }
                if heldOrder.count > Self.maxHeldPresence { flushHeldPresence() }
                return
            }
            flushHeldPresence()
        }
        write(element, text: text)
    }

    /// Like `send`, for a stanza serialised once for many recipients: on a plain TCP stream the
    /// bytes are copied with `to` spliced in; otherwise it takes the element path.
    func sendShared(_ shared: SharedStanza, to: String) {
        if successor != nil || transport == .websocket || (!clientActive && shared.isPresence) {
            send(shared.element(to: to))
            return
        }
        if !clientActive { flushHeldPresence() }
        var requestAck = false
        if sm.enabled { requestAck = sm.sent(shared.element(to: to)) }
        guard let context, !closing else { return }
        var buffer = context.channel.allocator.buffer(capacity: shared.byteCount + to.utf8.count)
        shared.write(to: to, into: &buffer)
        server.metrics.stanzasOut.increment()
        context.write(wrapOutboundOut(buffer), promise: nil)
        scheduleFlush()
        if requestAck { sendRaw("<r xmlns='urn:xmpp:sm:3'/>") }
    }

    /// Serialises and writes one element; flushes once per event-loop tick.
    private func write(_ element: XMLElement, text: String? = nil) {
        var requestAck = false
        if sm.enabled, element.isStanza {
            // Kept until acknowledged, also while detached or closing: re-sent on resumption,
            // re-routed if the session ends.
            requestAck = sm.sent(element)
        }
        guard let context, !closing else { return }
        defer { if requestAck { sendRaw("<r xmlns='urn:xmpp:sm:3'/>") } }
        var buffer = context.channel.allocator.buffer(capacity: text.map { $0.utf8.count } ?? 512)
        if let text {
            buffer.writeString(text)
        } else if transport == .websocket {
            XMLSerializer.write(element, into: &buffer, defaultNamespace: "", streamPrefixDeclared: false)
        } else {
            XMLSerializer.write(element, into: &buffer, defaultNamespace: NS.client)
        }
        if element.isStanza { server.metrics.stanzasOut.increment() }
        context.write(wrapOutboundOut(buffer), promise: nil)
        scheduleFlush()
    }

    private func sendRaw(_ text: String) {
        guard let context else { return }
        context.write(wrapOutboundOut(context.channel.allocator.buffer(string: text)), promise: nil)
        scheduleFlush()
    }

    private func scheduleFlush() {
        guard !flushScheduled, let context else { return }
        flushScheduled = true
        context.eventLoop.assumeIsolated().execute { [self] in
            self.flushScheduled = false
            self.context?.flush()
        }
    }

    /// Sends a stream error and closes the stream (RFC 6120 §4.9).
    func terminate(_ error: StreamError) {
        guard let context, !closing else { return }
        if !streamOpen { sendStreamHeader() }
        send(error.element)
        server.metrics.streamErrors.increment()
        closeStream(context: context)
    }

    private func closeStream(context: ChannelHandlerContext) {
        guard !closing else { return }
        if transport == .websocket {
            sendRaw("<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>")
        } else {
            sendRaw("</stream:stream>")
        }
        closing = true
        context.flush()
        context.close(promise: nil)
    }

    private func sendStreamHeader() {
        streamOpen = true
        let domain = server.domain
        if transport == .websocket {
            sendRaw(
                "<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' id='\(streamID)' from='\(domain)' version='1.0' xml:lang='en'/>"
            )
        } else {
            sendRaw(
                "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' id='\(streamID)' from='\(domain)' version='1.0' xml:lang='en'>"
            )
        }
    }

    private func sendFeatures() {
        var features = XMLElement("features", xmlns: NS.streams)
        let requireTLS = transport != .websocket && server.configuration.c2s.requireTLS
        if username == nil {
            if !secure, transport != .websocket, tlsContext != nil {
                var starttls = XMLElement("starttls", xmlns: NS.tls)
                if requireTLS { starttls.append(XMLElement("required", xmlns: NS.tls)) }
                features.append(starttls)
            }
            if secure || transport == .websocket || !requireTLS {
                var mechanisms = XMLElement("mechanisms", xmlns: NS.sasl)
                for name in offeredMechanisms {
                    mechanisms.append(XMLElement("mechanism", xmlns: NS.sasl).withText(name))
                }
                features.append(mechanisms)
                if server.configuration.registration.enabled {
                    features.append(XMLElement("register", xmlns: NS.registerFeature))
                }
            }
        } else {
            features.append(XMLElement("bind", xmlns: NS.bind))
            var session = XMLElement("session", xmlns: NS.session)
            session.append(XMLElement("optional", xmlns: NS.session))
            features.append(session)
            for feature in server.modules.streamFeatures { features.append(feature) }
            features.append(XMLElement("sm", xmlns: StreamManagementState.ns))
        }
        send(features)
    }

    /// EXTERNAL when the client presented a valid certificate (XEP-0178); SCRAM always; PLAIN
    /// only where the channel is encrypted (or loopback WebSocket behind a TLS proxy).
    private var offeredMechanisms: [String] {
        var names = [SCRAMHash.sha256.mechanismName, SCRAMHash.sha1.mechanismName]
        if secure, case .valid = clientCertificate { names.insert("EXTERNAL", at: 0) }
        if secure || transport == .websocket { names.append("PLAIN") }
        return names
    }

    // MARK: - Stream events

    /// - Parameter event: consumed: the stanza it carries goes on without another reference to
    ///   it, so the router's changes (`from`, a stanza-id) are made in place.
    private func handle(_ event: consuming XMLStreamEvent) {
        switch consume event {
        case .streamOpened(let root):
            openStream(root)
        case .streamClosed:
            if let context { closeStream(context: context) }
        case .element(let element):
            if transport == .websocket, element.namespace == XMLNamespace.framing {
                if element.name == "open" {
                    openStream(element)
                } else if element.name == "close", let context {
                    closeStream(context: context)
                } else {
                    terminate(StreamError(.badFormat))
                }
                return
            }
            guard streamOpen else {
                terminate(StreamError(.badFormat, text: "stream not opened"))
                return
            }
            pending.append(element)
            drain()
            if pending.count >= Self.pauseReadingAt, !readingPaused, let context {
                readingPaused = true
                context.channel.setOption(ChannelOptions.autoRead, value: false).whenFailure { _ in }
            }
        }
    }

    private func openStream(_ root: XMLElement) {
        if transport != .websocket {
            guard root.name == "stream", root.namespace == NS.streams else {
                terminate(StreamError(.invalidNamespace))
                return
            }
        }
        sendStreamHeader()
        checkClientCertificate()
        if let to = root[attribute: "to"], (try? JID(to))?.description != server.domain {
            terminate(StreamError(.hostUnknown, text: "this server serves \(server.domain)"))
            return
        }
        if let version = root[attribute: "version"], !version.hasPrefix("1.") {
            terminate(StreamError(.unsupportedVersion))
            return
        }
        sendFeatures()
    }

    /// Processes queued elements in order; an async one pauses the queue until it completes.
    private func drain() {
        while !busy, !closing, rateHold == nil, !journalHold, !pending.isEmpty {
            if bucket != nil, !takeToken() { return }
            if session != nil, server.journal.backedUp {
                holdUntilTheJournalCatchesUp()
                return
            }
            let element = pending.removeFirst()
            if let future = process(element) {
                busy = true
                future.assumeIsolated().whenComplete { [self] _ in
                    self.busy = false
                    self.drain()
                }
            }
        }
        if readingPaused, pending.isEmpty, !closing, let context {
            readingPaused = false
            context.channel.setOption(ChannelOptions.autoRead, value: true).whenFailure { _ in }
        }
    }

    /// Takes a stanza token; when there is none, holds the queue and stops reading until enough
    /// are earned (or ends the stream after too long). Returns whether to go on.
    private func takeToken() -> Bool {
        let wanted = (bucket?.rate ?? 10) / 10
        guard let wait = bucket?.take(wanted: wanted, now: { NIODeadline.now().uptimeNanoseconds }), context != nil else {
            return true
        }
        let now = NIODeadline.now()
        let pause = TimeAmount.nanoseconds(Int64(wait))
        // Held back again right after the last resume: the client is still backlogged, same episode.
        if let heldSince, let lastResume, now - lastResume <= pause + .seconds(1) {
            let limit = server.configuration.limits.stanzaRateDisconnectAfterSeconds
            if limit > 0, now - heldSince >= .seconds(Int64(limit)) {
                server.metrics.limitHit(.stanzaRateDisconnect)
                logger.info("stanza rate exceeded for too long", metadata: ["limit.seconds": "\(limit)"])
                terminate(StreamError(.policyViolation, text: "too many stanzas for too long; slow down"))
                return false
            }
        } else {
            heldSince = now
            server.metrics.limitHit(.stanzaRate)
        }
        hold(for: pause)
        return false
    }

    /// The message journal has more waiting for the stores than it may (`MessageJournal.backedUp`):
    /// stop reading and processing this client's input (TCP backpressure) until it catches up.
    private func holdUntilTheJournalCatchesUp() {
        guard let context, !journalHold else { return }
        journalHold = true
        pauseReading(context)
        let handler = NIOLoopBound(self, eventLoop: context.eventLoop)
        server.journal.whenCaughtUp {
            handler.eventLoop.execute {
                handler.value.journalHold = false
                handler.value.drain()
            }
        }
    }

    private func pauseReading(_ context: ChannelHandlerContext) {
        guard !readingPaused else { return }
        readingPaused = true
        context.channel.setOption(ChannelOptions.autoRead, value: false).whenFailure { _ in }
    }

    /// Stops reading and processing this client's input for `pause`, then goes on.
    private func hold(for pause: TimeAmount) {
        guard let context else { return }
        pauseReading(context)
        rateHold = context.eventLoop.assumeIsolated().scheduleTask(in: pause) { [self] in
            self.rateHold = nil
            self.lastResume = .now()
            self.drain()
        }
    }

    /// Handles one top-level element; returns a future when the work continues asynchronously.
    private func process(_ element: consuming XMLElement) -> EventLoopFuture<Void>? {
        switch element.namespace {
        case NS.tls:
            startTLS(element)
            return nil
        case NS.sasl:
            return handleSASL(element)
        case StreamManagementState.ns:
            return handleStreamManagement(element)
        case NS.client:
            break
        default:
            if let session, let handler = server.modules.nonzaHandlers[element.namespace], handler(element, session) {
                return nil
            }
            terminate(StreamError(.unsupportedStanzaType, text: "unexpected element in \(element.namespace)"))
            return nil
        }
        guard element.name == "message" || element.name == "presence" || element.name == "iq" else {
            terminate(StreamError(.unsupportedStanzaType))
            return nil
        }
        if let session {
            return handleStanza(element, session: session)  // its last use: handed over
        }
        if username != nil, element.name == "iq" {
            return handlePreBindIQ(element)
        }
        if username == nil, element.name == "iq", server.configuration.registration.enabled,
            element.child("query", namespace: NS.register) != nil
        {
            return handleRegistration(element)
        }
        terminate(StreamError(.notAuthorized))
        return nil
    }

    // MARK: - STARTTLS

    private func startTLS(_ element: XMLElement) {
        guard element.name == "starttls", let context, let tlsContext, !secure, username == nil,
            transport == .tcp(directTLS: false)
        else {
            terminate(StreamError(.policyViolation, text: "STARTTLS not allowed here"))
            return
        }
        send(XMLElement("proceed", xmlns: NS.tls))
        context.flush()
        do {
            try context.pipeline.syncOperations.addHandler(
                TLSSetup.serverHandler(context: tlsContext, requestsClientCertificates: clientCertificates != nil), position: .first)
        } catch {
            logger.error("could not start TLS", metadata: ["error": "\(error)"])
            context.close(promise: nil)
            return
        }
        secure = true
        restartStream()
    }

    private func restartStream() {
        parser = Self.makeParser(server: server, transport: transport, authenticated: username != nil)
        streamOpen = false
        pending.removeAll()
    }

    // MARK: - SASL

    private func handleSASL(_ element: XMLElement) -> EventLoopFuture<Void>? {
        guard username == nil else {
            terminate(StreamError(.policyViolation, text: "already authenticated"))
            return nil
        }
        switch element.name {
        case "auth":
            return startAuthentication(element)
        case "response":
            return continueAuthentication(element)
        case "abort":
            sasl = .idle
            saslFailure(.aborted, account: nil, countsAsFailure: false)
            return nil
        default:
            terminate(StreamError(.unsupportedStanzaType))
            return nil
        }
    }

    private func decodePayload(_ element: XMLElement) -> [UInt8]? {
        let text = element.text.trimmingCharacters(in: .whitespacesAndNewlines)
        if text.isEmpty || text == "=" { return [] }
        guard let data = Data(base64Encoded: text) else { return nil }
        return Array(data)
    }

    private func startAuthentication(_ element: XMLElement) -> EventLoopFuture<Void>? {
        guard case .idle = sasl else {
            saslFailure(.malformedRequest, account: nil, countsAsFailure: false)
            return nil
        }
        let mechanism = element[attribute: "mechanism"] ?? ""
        if mechanism == "EXTERNAL", secure, clientCertificates != nil {
            if throttled(account: nil, address: remoteAddress) { return nil }
            guard let payload = decodePayload(element) else {
                saslFailure(.incorrectEncoding, account: nil, countsAsFailure: false)
                return nil
            }
            return authenticateEXTERNAL(payload)
        }
        guard offeredMechanisms.contains(mechanism) else {
            if mechanism == "PLAIN" && !secure {
                saslFailure(.encryptionRequired, account: nil, countsAsFailure: false)
            } else {
                saslFailure(.invalidMechanism, account: nil, countsAsFailure: false)
            }
            return nil
        }
        if throttled(account: nil, address: remoteAddress) { return nil }
        guard let payload = decodePayload(element) else {
            saslFailure(.incorrectEncoding, account: nil, countsAsFailure: false)
            return nil
        }
        if mechanism == "PLAIN" {
            return authenticatePLAIN(payload)
        }
        guard let hash = SCRAMHash(mechanismName: mechanism) else {
            saslFailure(.invalidMechanism, account: nil, countsAsFailure: false)
            return nil
        }
        var scram = SCRAMServer(hash: hash)
        guard let username = saslParse({ () throws -> String in
            let first = try scram.receiveClientFirst(payload)
            return try normalizeUsername(first.username, authzid: first.authzid)
        }) else { return nil }
        if throttled(account: username, address: nil) { return nil }
        sasl = .lookingUp
        let accounts = server.stores.accounts
        return runAsync({ try await accounts.account(username) }) { [self] result in
            switch result {
            case .success(let account):
                let challenge = scram.serverFirst(
                    credentials: account?.credentials?.credentials(for: hash), fakeSaltKey: server.fakeSaltKey)
                sasl = .scram(scram, username: username, disabled: account?.disabled ?? false)
                send(XMLElement("challenge", xmlns: NS.sasl).withText(Data(challenge).base64EncodedString()))
            case .failure(let error):
                logger.error("account lookup failed", metadata: ["error": "\(error)"])
                sasl = .idle
                saslFailure(.temporaryAuthFailure, account: nil, countsAsFailure: false)
            }
        }
    }

    private func continueAuthentication(_ element: XMLElement) -> EventLoopFuture<Void>? {
        guard case .scram(var scram, let username, let disabled) = sasl else {
            saslFailure(.malformedRequest, account: nil, countsAsFailure: false)
            return nil
        }
        sasl = .idle
        guard let payload = decodePayload(element) else {
            saslFailure(.incorrectEncoding, account: username, countsAsFailure: true)
            return nil
        }
        do {
            let serverFinal = try scram.receiveClientFinal(payload)
            if disabled {
                saslFailure(.accountDisabled, account: username, countsAsFailure: false)
                return nil
            }
            if let refusal = server.passwordLoginRefusal(username) {
                logger.info("password login refused: certificate required", metadata: ["xmpp.user": "\(username)"])
                saslFailure(refusal, account: username, countsAsFailure: true)
                return nil
            }
            authenticated(username, additionalData: serverFinal)
        } catch {
            saslFailure(error, account: username, countsAsFailure: true)
        }
        return nil
    }

    private func authenticatePLAIN(_ payload: [UInt8]) -> EventLoopFuture<Void>? {
        guard let (username, password) = saslParse({ () throws -> (String, String) in
            let message = try PLAINMessage.parse(payload)
            return (try normalizeUsername(message.authcid, authzid: message.authzid), message.password)
        }) else { return nil }
        if throttled(account: username, address: nil) { return nil }
        sasl = .lookingUp
        let server = self.server
        return runAsync({ () -> SASLError? in
            // The certificate-login policy speaks only after the password proved right.
            try await server.verifyPassword(username, password) ?? server.passwordLoginRefusal(username)
        }) { [self] result in
            sasl = .idle
            switch result {
            case .success(nil):
                authenticated(username, additionalData: nil)
            case .success(let error?):
                saslFailure(error, account: username, countsAsFailure: error.condition == .notAuthorized)
            case .failure(let error):
                logger.error("account lookup failed", metadata: ["error": "\(error)"])
                saslFailure(.temporaryAuthFailure, account: nil, countsAsFailure: false)
            }
        }
    }

    // MARK: - SASL EXTERNAL with the TLS client certificate (XEP-0178)

    /// Reads the TLS peer certificate once the first stream over TLS opens (the handshake is
    /// complete by then: the client sent application data).
    private func checkClientCertificate() {
        guard secure, !clientCertificateChecked, let clientCertificates, let context, transport != .websocket else { return }
        clientCertificateChecked = true
        let peer = (try? context.pipeline.syncOperations.handler(type: NIOSSLServerHandler.self))?.peerCertificate
        clientCertificate = clientCertificates.evaluate(peer, domain: server.domain)
        switch clientCertificate {
        case .absent: break
        case .invalid(let reason):
            logger.debug("client certificate unusable", metadata: ["tls.client_certificate": "\(reason)"])
        case .valid(let identity):
            logger.debug("client certificate", metadata: ["tls.client_serial": "\(identity.serial)"])
        }
    }

    /// RFC 6120 §6.4, XEP-0178: the certificate authenticates; the authzid (or, when empty, the
    /// certificate's only address) names the account, which must be one of its xmppAddrs.
    private func authenticateEXTERNAL(_ payload: [UInt8]) -> EventLoopFuture<Void>? {
        let identity: ClientCertificateIdentity
        switch clientCertificate {
        case .valid(let valid):
            identity = valid
        case .invalid(let reason):
            logger.info("certificate login refused", metadata: ["sasl.reason": "\(reason)"])
            saslFailure(SASLError(.notAuthorized, text: reason), account: nil, countsAsFailure: true)
            return nil
        case .absent:
            saslFailure(
                SASLError(.invalidMechanism, text: "no client certificate was presented in the TLS handshake"), account: nil,
                countsAsFailure: false)
            return nil
        }
        guard let authzid = String(validating: payload, as: UTF8.self) else {
            saslFailure(.malformedRequest, account: nil, countsAsFailure: false)
            return nil
        }
        let address: JID
        if authzid.isEmpty {
            guard identity.addresses.count == 1 else {
                saslFailure(
                    SASLError(.invalidAuthzid, text: "the certificate names several addresses; send the one to log in as"),
                    account: nil, countsAsFailure: false)
                return nil
            }
            address = identity.addresses[0]
        } else {
            guard let requested = try? JID(authzid), requested.resourcepart == nil,
                let match = identity.addresses.first(where: { $0 == requested })
            else {
                logger.info(
                    "certificate login refused: certificate of another user",
                    metadata: ["tls.client_serial": "\(identity.serial)", "sasl.authzid": "\(authzid)"])
                saslFailure(
                    SASLError(.notAuthorized, text: "the client certificate does not name \(authzid)"), account: nil,
                    countsAsFailure: true)
                return nil
            }
            address = match
        }
        guard let username = address.localpart else {
            saslFailure(.notAuthorized, account: nil, countsAsFailure: true)
            return nil
        }
        if throttled(account: username, address: nil) { return nil }
        sasl = .lookingUp
        let stores = server.stores
        return runAsync({ () -> SASLError? in
            guard let account = try await stores.accounts.account(username) else {
                return SASLError(.notAuthorized, text: "the account named by the client certificate does not exist")
            }
            let record = try await stores.certificates.certificate(serial: identity.serial)
            if let record, let revokedAt = record.revokedAt {
                let date = ISO8601DateFormatter().string(from: Date(timeIntervalSince1970: revokedAt))
                return SASLError(.notAuthorized, text: "the client certificate was revoked on \(date)")
            }
            if let record, record.username != username {
                return SASLError(.notAuthorized, text: "the client certificate was issued to another user")
            }
            if record == nil, identity.issuedByLocalAuthority {
                return SASLError(.notAuthorized, text: "the client certificate is not in this server's record of issued certificates")
            }
            return account.disabled ? .accountDisabled : nil
        }) { [self] result in
            sasl = .idle
            switch result {
            case .success(nil):
                logger.info("certificate login", metadata: ["xmpp.user": "\(username)", "tls.client_serial": "\(identity.serial)"])
                authenticatedSerial = identity.serial
                authenticated(username, additionalData: nil)
            case .success(let error?):
                logger.info(
                    "certificate login refused",
                    metadata: [
                        "xmpp.user": "\(username)", "tls.client_serial": "\(identity.serial)", "sasl.reason": "\(error.text ?? error.condition.rawValue)",
                    ])
                saslFailure(error, account: username, countsAsFailure: error.condition == .notAuthorized)
            case .failure(let error):
                logger.error("certificate lookup failed", metadata: ["error": "\(error)"])
                saslFailure(.temporaryAuthFailure, account: nil, countsAsFailure: false)
            }
        }
    }

    /// Refuses (temporary-auth-failure) while the account or address is throttled.
    private func throttled(account: String?, address: String?) -> Bool {
        guard let wait = server.throttle.retryAfter(account: account, address: address) else { return false }
        server.metrics.loginsThrottled.increment()
        let text = "Too many failed logins; try again in \(Int(wait.rounded(.up))) s"
        logger.debug("login refused: locked out", metadata: ["xmpp.user": "\(account ?? "-")", "retry.seconds": "\(Int(wait.rounded(.up)))"])
        saslFailure(SASLError(.temporaryAuthFailure, text: text), account: nil, countsAsFailure: false)
        return true
    }

    /// Runs a SASL parsing step; a failure is answered (malformed-request if not a SASL error) and gives nil.
    private func saslParse<T>(_ body: () throws -> T) -> T? {
        do {
            return try body()
        } catch let error as SASLError {
            saslFailure(error, account: nil, countsAsFailure: false)
        } catch {
            saslFailure(.malformedRequest, account: nil, countsAsFailure: false)
        }
        return nil
    }

    /// The SASL authcid as a JID localpart; an authzid must name the same account.
    private func normalizeUsername(_ authcid: String, authzid: String?) throws -> String {
        guard let local = (try? JID(localpart: authcid, domainpart: server.domain, resourcepart: nil))?.localpart else {
            throw SASLError.notAuthorized
        }
        if let authzid, !authzid.isEmpty {
            guard let requested = try? JID(authzid), requested.bare.description == "\(local)@\(server.domain)" else {
                throw SASLError.invalidAuthzid
            }
        }
        return local
    }

    private func authenticated(_ username: String, additionalData: [UInt8]?) {
        self.username = username
        server.throttle.recordSuccess(account: username)
        server.metrics.loginsSucceeded.increment()
        logger[metadataKey: "xmpp.user"] = "\(username)"
        logger.debug("authenticated")
        var success = XMLElement("success", xmlns: NS.sasl)
        if let additionalData { success.append(text: Data(additionalData).base64EncodedString()) }
        send(success)
        restartStream()
    }

    private func saslFailure(_ error: SASLError, account: String?, countsAsFailure: Bool) {
        var failure = XMLElement("failure", xmlns: NS.sasl)
        failure.append(XMLElement(error.elementName, xmlns: NS.sasl))
        if let text = error.text { failure.append(XMLElement("text", xmlns: NS.sasl).withText(text)) }
        send(failure)
        guard countsAsFailure else { return }
        server.metrics.loginsFailed.increment()
        let locked = server.throttle.recordFailure(account: account, address: remoteAddress)
        for _ in 0..<locked { server.metrics.limitHit(.loginLockout) }
        if locked > 0 {
            logger.notice("login lockout started", metadata: ["xmpp.user": "\(account ?? "?")", "xmpp.remote_ip": "\(remoteAddress ?? "?")"])
        }
        logger.info("authentication failed", metadata: ["xmpp.user": "\(account ?? "?")", "sasl.condition": "\(error.condition.rawValue)"])
        authFailures += 1
        if authFailures >= 3 {
            terminate(StreamError(.notAuthorized, text: "too many failed attempts"))
        }
    }

    // MARK: - Registration (XEP-0077), before authentication

    private func handleRegistration(_ element: XMLElement) -> EventLoopFuture<Void>? {
        let request = element
        let server = self.server
        // Over plain TCP only where the administrator turned off require_tls.
        let secure = self.secure || transport == .websocket || !server.configuration.c2s.requireTLS
        return runAsync({ () -> XMLElement in
            do {
                return try await InBandRegistration.handle(request, server: server, secure: secure)
            } catch let error as StanzaError {
                return error.reply(to: request)
            }
        }) { [self] result in
            switch result {
            case .success(let reply): send(reply)
            case .failure: send(StanzaError.internalServerError.reply(to: request))
            }
        }
    }

    // MARK: - Resource binding

    private func handlePreBindIQ(_ element: XMLElement) -> EventLoopFuture<Void>? {
        guard element.stanzaType == "set" || element.stanzaType == "get" else { return nil }
        if let bind = element.child("bind", namespace: NS.bind), element.stanzaType == "set" {
            return bindResource(element, bind: bind)
        } else if element.child("session", namespace: NS.session) != nil {
            send(element.iqResult())
        } else {
            send(StanzaError(.notAuthorized, text: "bind a resource first").reply(to: element))
        }
        return nil
    }

    private func bindResource(_ iq: XMLElement, bind: XMLElement) -> EventLoopFuture<Void>? {
        guard let username, let context else { return nil }
        var resource = bind.child("resource", namespace: NS.bind)?.text ?? ""
        if resource.isEmpty {
            resource = "sb-" + String(UInt64.random(in: .min ... .max), radix: 36)
        }
        let jid: JID
        do {
            jid = try JID(localpart: username, domainpart: server.domain, resourcepart: resource)
        } catch {
            send(StanzaError(.badRequest, text: "invalid resource").reply(to: iq))
            return nil
        }
        let handle = SessionHandle(
            jid: jid, id: server.router.nextID(), eventLoop: context.eventLoop, sink: self, certificateSerial: authenticatedSerial)
        switch server.router.bind(handle, maxSessions: server.configuration.limits.maxSessionsPerUser) {
        case .bound(replacing: let replaced?):
            replaced.close(StreamError(.conflict, text: "replaced by a new session with the same resource"))
        case .bound(replacing: nil):
            break
        case .refused:
            // RFC 6120 §7.6.2.1: the account has reached its number of connected resources.
            server.metrics.limitHit(.sessionsPerUser)
            logger.info("bind refused: too many sessions", metadata: ["xmpp.user": "\(username)"])
            send(StanzaError(.resourceConstraint, text: "too many sessions for this account").reply(to: iq))
            return nil
        }
        session = handle
        loginTimeout?.cancel()
        loginTimeout = nil
        server.metrics.sessionsBound.increment()
        logger[metadataKey: "xmpp.jid"] = "\(jid)"
        let idle = Int64(server.configuration.limits.idleTimeoutSeconds)
        try? context.pipeline.syncOperations.addHandler(
            IdleStateHandler(readTimeout: .seconds(idle)), position: .before(self))
        var result = XMLElement("bind", xmlns: NS.bind)
        result.append(XMLElement("jid", xmlns: NS.bind).withText(jid.description))
        var reply = iq.iqResult(result)
        reply[attribute: "from"] = nil
        reply[attribute: "to"] = nil
        guard !server.modules.boundHooks.isEmpty else {
            send(reply)
            return nil
        }
        let server = self.server
        return runAsync({ await server.sessionBound(handle) }) { [self] _ in send(reply) }
    }

    // MARK: - Stanzas of a bound session

    /// - Parameter element: consumed, so that stamping `from` changes it in place (a copy of
    ///   a shared element would copy its attributes).
    private func handleStanza(_ element: consuming XMLElement, session: SessionHandle) -> EventLoopFuture<Void>? {
        server.metrics.stanzasIn.increment()
        if sm.enabled { sm.handledInbound &+= 1 }
        var stanza = element
        stanza[attribute: "from"] = session.fullKey
        var to: JID?
        if let toString = stanza[attribute: "to"] {
            do {
                to = try JID(toString)
            } catch {
                bounce(stanza, StanzaError(.jidMalformed))
                return nil
            }
        }
        if let to, !server.deliveryFilters.isEmpty {
            switch server.filter(stanza, from: session.jid, to: to) {
            case .allow: break
            case .drop: return nil
            case .reject(let error):
                bounce(stanza, error)
                return nil
            }
        }
        if let to, let component = server.component(for: to.domainpart) {
            return toComponent(component, stanza, to: to, session: session)
        }
        switch stanza.name {
        case "message":
            return routeMessage(stanza, to: to ?? session.jid.bare, session: session)
        case "presence":
            return handlePresence(stanza, to: to, session: session)
        default:
            return handleIQ(stanza, to: to, session: session)
        }
    }

    /// A stanza for a service domain a module owns (e.g. a MUC service).
    private func toComponent(_ component: ServiceComponent, _ stanza: XMLElement, to: JID, session: SessionHandle) -> EventLoopFuture<Void>? {
        if stanza.name == "iq" {
            let type = stanza.stanzaType ?? ""
            guard ["get", "set", "result", "error"].contains(type) else {
                bounce(stanza, .badRequest)
                return nil
            }
            if type == "get" || type == "set", stanza.elements.reduce(0, { count, _ in count + 1 }) != 1 {
                bounce(stanza, StanzaError(.badRequest, text: "an IQ request has exactly one payload"))
                return nil
            }
        }
        let item = ComponentStanza(stanza: stanza, from: session.jid, to: to, session: session, server: server)
        switch component.handler(item) {
        case .done:
            return nil
        case .error(let error):
            bounce(stanza, error)
            return nil
        case .later(let work):
            return runAsync({ await work() }) { [self] result in
                switch result {
                case .success(let error?): bounce(stanza, error)
                case .success(nil): break
                case .failure(let error):
                    logger.error("component failed", metadata: ["error": "\(error)", "xmpp.component": "\(component.domain)"])
                    bounce(stanza, .internalServerError)
                }
            }
        }
    }

    /// Sends an error reply unless the stanza is itself an error (no error loops).
    private func bounce(_ stanza: XMLElement, _ error: StanzaError) {
        guard stanza.stanzaType != "error" else { return }
        server.metrics.stanzaErrors.increment()
        send(error.reply(to: stanza))
    }

    private func routeMessage(_ message: consuming XMLElement, to: JID, session: SessionHandle) -> EventLoopFuture<Void>? {
        let prepared = server.prepareMessage(message, to: to)
        let stanza = prepared.stanza
        switch server.deliverMessage(stanza, to: to, text: prepared.text, bareKey: prepared.toBareKey) {
        case .delivered(let recipients):
            server.messageRouted(prepared, to: to, sender: session, recipients: recipients)
            return nil
        case .dropped:
            return nil
        case .error(let error):
            bounce(stanza, error)
            return nil
        case .undeliverable(let bare):
            let server = self.server
            return runAsync({ await server.handleUndeliverable(stanza, to: bare, session: session) }) { [self] result in
                switch result {
                case .success(let error?): bounce(stanza, error)
                case .success(nil): server.messageRouted(prepared, to: to, sender: session, recipients: [])
                case .failure: bounce(stanza, .internalServerError)
                }
            }
        }
    }

    private func handlePresence(_ stanza: XMLElement, to: JID?, session: SessionHandle) -> EventLoopFuture<Void>? {
        let server = self.server
        let hooks = server.modules.presenceHooks
        guard !hooks.isEmpty else { return nil }
        return runAsync({ () -> StanzaError? in
            let context = StanzaHookContext(stanza: stanza, to: to, session: session, server: server)
            do {
                for (_, hook) in hooks where try await hook(context) == .handled { break }
                return nil
            } catch let error as StanzaError {
                return error
            }
        }) { [self] result in
            switch result {
            case .success(let error?): bounce(stanza, error)
            case .success(nil): break
            case .failure(let error):
                logger.error("presence handling failed", metadata: ["error": "\(error)"])
                bounce(stanza, .internalServerError)
            }
        }
    }

    private func handleIQ(_ stanza: XMLElement, to: JID?, session: SessionHandle) -> EventLoopFuture<Void>? {
        let type = stanza.stanzaType ?? ""
        if type == "result" || type == "error" {
            if let to, to.resourcepart != nil, server.isLocal(to) {
                server.router.session(to)?.deliver(stanza)
            }
            return nil
        }
        guard type == "get" || type == "set" else {
            bounce(stanza, .badRequest)
            return nil
        }
        let children = Array(stanza.elements)
        guard children.count == 1, let payload = children.first else {
            bounce(stanza, StanzaError(.badRequest, text: "an IQ request has exactly one payload"))
            return nil
        }
        let target: IQTarget
        let addressee: JID
        if let to {
            guard server.isLocal(to) else {
                bounce(stanza, StanzaError(.remoteServerNotFound))
                return nil
            }
            if to.resourcepart != nil {
                if let recipient = server.router.session(to) {
                    recipient.deliver(stanza)
                } else {
                    bounce(stanza, .serviceUnavailable)
                }
                return nil
            }
            target = to.localpart == nil ? .server : .account
            addressee = to
        } else {
            target = .account
            addressee = session.jid.bare
        }
        guard let handler = server.modules.iqHandler(payload.namespace, target) else {
            bounce(stanza, .serviceUnavailable)
            return nil
        }
        let request = IQRequest(
            stanza: stanza, payload: payload, from: session.jid, to: addressee,
            isSet: type == "set", session: session, server: server)
        return runAsync({ () -> XMLElement in
            do {
                var result = stanza.iqResult(try await handler(request))
                if stanza[attribute: "to"] == nil { result[attribute: "from"] = nil }
                return result
            } catch let error as StanzaError {
                return error.reply(to: stanza)
            }
        }) { [self] result in
            switch result {
            case .success(let reply):
                if reply.stanzaType == "error" { server.metrics.stanzaErrors.increment() }
                send(reply)
            case .failure(let error):
                logger.error("IQ handler failed", metadata: ["error": "\(error)", "xmpp.ns": "\(payload.namespace)"])
                bounce(stanza, .internalServerError)
            }
        }
    }

    // MARK: - Stream management (XEP-0198)

    private func handleStreamManagement(_ element: XMLElement) -> EventLoopFuture<Void>? {
        switch element.name {
        case "enable":
            guard let session, !sm.enabled, let username else {
                smFailed("unexpected-request")
                return nil
            }
            sm.enabled = true
            var enabled = XMLElement("enabled", xmlns: StreamManagementState.ns)
            if element[attribute: "resume"] == "true" || element[attribute: "resume"] == "1" {
                let token = UUID().uuidString.lowercased()
                sm.resumable = true
                sm.token = token
                server.resumable.register(token, user: username, handle: session)
                enabled[attribute: "id"] = token
                enabled[attribute: "resume"] = "true"
                enabled[attribute: "max"] = String(server.configuration.limits.resumptionTimeoutSeconds)
            }
            send(enabled)
        case "r":
            guard sm.enabled else { return nil }
            let handled = sm.handledInbound
            // Acknowledge only what is durable (journaled for the archive and the audit record,
            // and whatever modules add): wait for the barrier first.
            let server = self.server
            return runAsync({ await server.durabilityBarrier() }) { [self] _ in
                sendRaw("<a xmlns='urn:xmpp:sm:3' h='\(handled)'/>")
            }
        case "a":
            guard sm.enabled else { return nil }
            guard let h = element[attribute: "h"].flatMap(UInt32.init) else {
                terminate(StreamError(.undefinedCondition, text: "an acknowledgement needs a numeric h"))
                return nil
            }
            guard sm.acknowledge(h) else {
                terminate(handledCountTooHigh(h))
                return nil
            }
        case "resume":
            return resume(element)
        default:
            terminate(StreamError(.unsupportedStanzaType))
        }
        return nil
    }

    /// XEP-0198 §4: the client acknowledged more than we sent.
    private func handledCountTooHigh(_ h: UInt32) -> StreamError {
        let sent = sm.acknowledged &+ UInt32(sm.unacked.count)
        return StreamError(
            .undefinedCondition, text: "acknowledged more stanzas than were sent",
            applicationCondition: XMLElement(
                "handled-count-too-high", xmlns: StreamManagementState.ns, ["h": String(h), "send-count": String(sent)]))
    }

    private func smFailed(_ condition: String) {
        var failed = XMLElement("failed", xmlns: StreamManagementState.ns)
        failed.append(XMLElement(condition, xmlns: NS.stanzaErrors))
        send(failed)
    }

    /// Takes over a detached (or still attached) session of the same user.
    private func resume(_ element: XMLElement) -> EventLoopFuture<Void>? {
        guard let username, session == nil, let context,
            let token = element[attribute: "previd"], let h = element[attribute: "h"].flatMap(UInt32.init),
            let entry = server.resumable.take(token, user: username)
        else {
            smFailed("item-not-found")
            return nil
        }
        let previous = entry.handle
        let handle = SessionHandle(
            jid: previous.jid, id: server.router.nextID(), eventLoop: context.eventLoop, sink: self,
            certificateSerial: authenticatedSerial)
        return previous.handOver(to: handle).hop(to: context.eventLoop).assumeIsolated().map { [self] handOver in
            guard let handOver, let context = self.context else {
                smFailed("item-not-found")
                return
            }
            handle.adoptPresence(of: previous)
            handle.updatePresence { $0.detached = false }
            _ = server.router.bind(handle)  // replaces the previous handle, which is already closed
            session = handle
            loginTimeout?.cancel()
            loginTimeout = nil
            server.metrics.sessionsBound.increment()
            logger[metadataKey: "xmpp.jid"] = "\(handle.jid)"
            try? context.pipeline.syncOperations.addHandler(
                IdleStateHandler(readTimeout: .seconds(Int64(server.configuration.limits.idleTimeoutSeconds))),
                position: .before(self))
            sm = StreamManagementState()
            sm.enabled = true
            sm.resumable = true
            sm.token = handOver.token
            sm.handledInbound = handOver.handledInbound
            sm.acknowledged = handOver.acknowledged
            sm.unacked = CircularBuffer(handOver.unacked)
            server.resumable.register(handOver.token, user: username, handle: handle)
            sendRaw("<resumed xmlns='urn:xmpp:sm:3' previd='\(handOver.token)' h='\(sm.handledInbound)'/>")
            guard sm.acknowledge(h) else {
                terminate(handledCountTooHigh(h))
                return
            }
            // Whatever the client has not seen is sent again, in order, then held presence.
            let again = Array(sm.unacked)
            sm.unacked.removeAll()
            for stanza in again { write(stanza) }
            for presence in handOver.held { send(presence) }
            logger.debug("session resumed", metadata: ["sm.resent": "\(again.count)"])
        }.nonisolated()
    }

    /// Gives this session to a resuming connection (on this handler's event loop).
    func handOver(to successor: SessionHandle) -> StreamHandOver? {
        guard session != nil, sm.resumable, self.successor == nil, let token = sm.token else { return nil }
        self.successor = successor
        resumptionExpiry?.cancel()
        detached = false
        // Presence held back for an inactive client (XEP-0352) goes along, after the unacked stanzas.
        let held = heldOrder.compactMap { heldPresence[$0] }
        heldOrder = []
        heldPresence = [:]
        let handOver = StreamHandOver(
            unacked: Array(sm.unacked), acknowledged: sm.acknowledged, handledInbound: sm.handledInbound, token: token,
            held: held)
        sm.unacked.removeAll()
        session = nil
        server.metrics.sessionsBound.decrement()
        if let context, !closing {
            // The old connection is still open (the client noticed the failure first): drop it quietly.
            closing = true
            context.close(promise: nil)
        }
        return handOver
    }

    // MARK: - Async bridge

    /// Runs `body` as a task and `completion` back on this event loop; the returned future
    /// completes after `completion` ran, which is what the ordered queue waits for.
    private func runAsync<T: Sendable>(
        _ body: @escaping @Sendable () async throws -> T,
        _ completion: @escaping (Result<T, any Error>) -> Void
    ) -> EventLoopFuture<Void>? {
        guard let context else { return nil }
        let promise = context.eventLoop.makePromise(of: T.self)
        promise.completeWithTask(body)
        return promise.futureResult.assumeIsolated().map { value in
            completion(.success(value))
        }.flatMapErrorThrowing { error in
            completion(.failure(error))
        }.nonisolated()
    }
}
