import Logging
import NIOCore
import NIOPosix
import NIOSSL

/// One connection to an LDAPv3 directory (RFC 4511).
///
/// ```swift
/// let connection = try await LDAPConnection.connect(configuration, logger: logger)
/// defer { Task { await connection.close() } }
/// try await connection.bind(dn: "cn=sync,dc=example,dc=com", password: secret)
/// let people = try await connection.search(base: "ou=Departments,dc=example,dc=com",
///                                          filter: "(objectClass=inetOrgPerson)", pageSize: 500)
/// ```
///
/// Operations may run concurrently from several tasks; they are multiplexed by message ID on
/// the one socket. A cancelled task abandons its operation. Call `close()` when done.
public final class LDAPConnection: Sendable {
    public let configuration: LDAPConfiguration
    private let channel: any Channel
    private let handler: NIOLoopBound<LDAPClientHandler>
    private let messageIDs: MessageIDGenerator
    private let logger: Logger

    private init(
        configuration: LDAPConfiguration, channel: any Channel, handler: NIOLoopBound<LDAPClientHandler>,
        messageIDs: MessageIDGenerator, logger: Logger
    ) {
        self.configuration = configuration
        self.channel = channel
        self.handler = handler
        self.messageIDs = messageIDs
        self.logger = logger
    }

    /// A connection dropped without `close()` still closes its socket (without an unbind).
    deinit {
        channel.close(promise: nil)
    }

    /// False once the connection was closed, by either side or after a fatal error.
    public var isActive: Bool { channel.isActive }

    // MARK: Connecting

    /// Opens a TCP connection, then TLS (LDAPS from the first byte, or StartTLS when configured).
    ///
    /// - Throws: `.connectionFailed` (refused, unreachable), `.timeout` (connect or handshake
    ///   longer than `connectTimeout`), `.tlsFailure` (untrusted certificate, wrong name,
    ///   StartTLS refused, unreadable CA file).
    public static func connect(
        _ configuration: LDAPConfiguration,
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        logger: Logger = Logger(label: "switchboard.ldap")
    ) async throws -> LDAPConnection {
        var logger = logger
        logger[metadataKey: "ldap.url"] = "\(configuration.url)"
        let tlsContext = configuration.transportSecurity == .none ? nil : try makeTLSContext(configuration)
        let messageIDs = MessageIDGenerator()
        let maximumMessageSize = configuration.maximumMessageSize
        let operationTimeout = TimeAmount(configuration.operationTimeout)
        let handlerLogger = logger
        let bootstrap = ClientBootstrap(group: group)
            .connectTimeout(TimeAmount(configuration.connectTimeout))
            .channelOption(ChannelOptions.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let operations = channel.pipeline.syncOperations
                    try operations.addHandler(ByteToMessageHandler(LDAPMessageDecoder(maximumMessageSize: maximumMessageSize)))
                    try operations.addHandler(
                        LDAPClientHandler(operationTimeout: operationTimeout, messageIDs: messageIDs, logger: handlerLogger))
                }
            }
        let channel: any Channel
        do {
            channel = try await bootstrap.connect(host: configuration.host, port: configuration.port).get()
        } catch {
            if case ChannelError.connectTimeout = error { throw LDAPError.timeout }
            throw LDAPError.connectionFailed(String(describing: error))
        }
        do {
            let handler = try await channel.eventLoop.submit {
                NIOLoopBound(try channel.pipeline.syncOperations.handler(type: LDAPClientHandler.self), eventLoop: channel.eventLoop)
            }.get()
            let connection = LDAPConnection(
                configuration: configuration, channel: channel, handler: handler, messageIDs: messageIDs, logger: logger)
            if let tlsContext {
                if configuration.transportSecurity == .startTLS {
                    try await connection.requestStartTLS()
                }
                try await connection.addTLS(tlsContext)
            }
            logger.debug("LDAP: connected", metadata: ["ldap.tls": "\(configuration.transportSecurity)"])
            return connection
        } catch {
            try? await channel.close()
            throw LDAPClientHandler.map(error)
        }
    }

    private static func makeTLSContext(_ configuration: LDAPConfiguration) throws -> NIOSSLContext {
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.minimumTLSVersion = .tlsv12
        tls.certificateVerification = configuration.verifyHostname ? .fullVerification : .noHostnameVerification
        if let path = configuration.caCertificatePath {
            do {
                tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(path))
            } catch {
                throw LDAPError.tlsFailure("cannot load CA certificates from \(path): \(error)")
            }
        }
        do {
            return try NIOSSLContext(configuration: tls)
        } catch {
            throw LDAPError.tlsFailure("cannot create the TLS context: \(error)")
        }
    }

    /// RFC 4511 §4.14: the StartTLS extended operation; TLS starts right after its success response.
    private func requestStartTLS() async throws {
        let messages = try await perform(.extendedRequest(name: LDAPControl.startTLSOID, value: nil), closeOnTimeout: true)
        guard case .extendedResponse(let result, _, _) = messages.last?.operation else {
            throw LDAPError.protocolError("expected an ExtendedResponse to StartTLS")
        }
        guard result.isSuccess else {
            throw LDAPError.tlsFailure("the server refused StartTLS: \(result.error)")
        }
    }

    /// Puts a TLS client handler at the front of the pipeline and waits for the handshake.
    private func addTLS(_ context: NIOSSLContext) async throws {
        let channel = self.channel
        let host = configuration.host
        // SNI must be a DNS name; for an IP literal NIOSSL checks the certificate's IP SANs
        // against the peer address instead.
        let serverHostname: String? = (try? SocketAddress(ipAddress: host, port: 0)) == nil ? host : nil
        let timeout = TimeAmount(configuration.connectTimeout)
        let promise = channel.eventLoop.makePromise(of: Void.self)
        channel.eventLoop.execute {
            do {
                let operations = channel.pipeline.syncOperations
                try operations.addHandler(TLSHandshakeHandler(promise: promise), position: .first)
                try operations.addHandler(
                    try NIOSSLClientHandler(context: context, serverHostname: serverHostname), position: .first)
                let timer = channel.eventLoop.scheduleTask(in: timeout) {
                    promise.fail(LDAPError.timeout)
                }
                promise.futureResult.whenComplete { _ in timer.cancel() }
            } catch {
                promise.fail(LDAPError.tlsFailure(String(describing: error)))
            }
        }
        try await promise.futureResult.get()
    }

    // MARK: Operations

    /// Simple bind (RFC 4511 §4.2). Use it to check a user's password, or to authenticate the
    /// connection as a service account before searching.
    ///
    /// - Throws: `.invalidArgument` for an empty password, without contacting the server: an
    ///   empty simple bind is an *unauthenticated* bind (RFC 4513 §5.1.2) that many servers
    ///   answer with success, which would let anyone log in as anyone. A failed password is
    ///   `.result` with `isInvalidCredentials`. A bind that times out closes the connection.
    public func bind(dn: String, password: String) async throws {
        guard !password.isEmpty else {
            throw LDAPError.invalidArgument(
                "refusing a simple bind with an empty password: the server would treat it as an unauthenticated bind")
        }
        let messages = try await perform(
            .bindRequest(version: 3, dn: dn, password: Array(password.utf8)), closeOnTimeout: true)
        guard case .bindResponse(let result) = messages.last?.operation else {
            throw LDAPError.protocolError("expected a BindResponse")
        }
        guard result.isSuccess else { throw result.error }
    }

    /// Searches and returns every matching entry.
    ///
    /// - Parameters:
    ///   - attributes: what to return; empty means all user attributes (`"+"` adds operational ones).
    ///   - sizeLimit: at most this many entries (0: the server's limit). Hitting it is not an error.
    ///   - pageSize: use RFC 2696 paged results with this page size, looping until the server's
    ///     cookie is empty. Needed for result sets above the server's size limit (AD: 1,000).
    public func search(
        base: String, scope: LDAPSearchScope = .subtree, filter: LDAPFilter = .any, attributes: [String] = [],
        sizeLimit: Int = 0, pageSize: Int? = nil
    ) async throws -> [LDAPEntry] {
        var entries: [LDAPEntry] = []
        try await search(
            base: base, scope: scope, filter: filter, attributes: attributes, sizeLimit: sizeLimit, pageSize: pageSize
        ) { entries.append($0) }
        return entries
    }

    /// `search` with the filter as an RFC 4515 string (`"(&(objectClass=person)(uid=zhangwei))"`).
    public func search(
        base: String, scope: LDAPSearchScope = .subtree, filter: String, attributes: [String] = [],
        sizeLimit: Int = 0, pageSize: Int? = nil
    ) async throws -> [LDAPEntry] {
        try await search(
            base: base, scope: scope, filter: try LDAPFilter(filter), attributes: attributes, sizeLimit: sizeLimit,
            pageSize: pageSize)
    }

    /// Streams entries to `body` page by page: with a `pageSize`, at most one page is held in
    /// memory and the next page is requested only after `body` has seen the previous one, so
    /// a 50,000-entry directory never sits in memory at once.
    ///
    /// If `body` throws, the paged search is abandoned on the server (RFC 2696 size 0) and the
    /// error is rethrown.
    public func search(
        base: String, scope: LDAPSearchScope = .subtree, filter: LDAPFilter = .any, attributes: [String] = [],
        sizeLimit: Int = 0, pageSize: Int?, forEach body: (LDAPEntry) async throws -> Void
    ) async throws {
        if let pageSize, pageSize <= 0 { throw LDAPError.invalidArgument("pageSize must be positive") }
        let request = LDAPSearchRequest(
            base: base, scope: scope, sizeLimit: sizeLimit, timeLimit: 0, filter: filter, attributes: attributes)
        var cookie: [UInt8] = []
        repeat {
            var controls: [LDAPControl] = []
            if let pageSize { controls.append(.pagedResults(size: pageSize, cookie: cookie)) }
            let messages = try await perform(.searchRequest(request), controls: controls)
            guard let done = messages.last, case .searchResultDone(let result) = done.operation else {
                throw LDAPError.protocolError("expected SearchResultDone")
            }
            let limitReached = result.code == LDAPResultCode.sizeLimitExceeded && sizeLimit > 0
            guard result.isSuccess || limitReached else { throw result.error }
            do {
                for message in messages {
                    if case .searchResultEntry(let entry) = message.operation { try await body(entry) }
                }
            } catch {
                if pageSize != nil, let control = done.control(LDAPControl.pagedResultsOID),
                    let next = try? control.pagedResultsCookie(), !next.isEmpty
                {
                    abandonPagedSearch(request, cookie: next)
                }
                throw error
            }
            guard pageSize != nil, !limitReached, let control = done.control(LDAPControl.pagedResultsOID) else { break }
            cookie = try control.pagedResultsCookie()
        } while !cookie.isEmpty
    }

    /// RFC 2696 §3: a request with size 0 and the last cookie releases the server's state.
    private func abandonPagedSearch(_ request: LDAPSearchRequest, cookie: [UInt8]) {
        let id = messageIDs.next()
        let handler = self.handler
        channel.eventLoop.execute {
            handler.value.submit(
                messageID: id, operation: .searchRequest(request), controls: [.pagedResults(size: 0, cookie: cookie)],
                promise: nil)
        }
    }

    /// One RFC 4533 content-synchronisation round in refreshOnly mode.
    ///
    /// Pass `cookie: nil` for a full load (every entry comes back as a change), then the returned
    /// cookie on the next run to get only what changed since. See `LDAPSyncResult` for how to
    /// apply the answer. Requires the `syncprov` overlay (OpenLDAP) or an equivalent; the bound
    /// identity needs read access to the entries.
    public func syncRefresh(
        base: String, scope: LDAPSearchScope = .subtree, filter: LDAPFilter = .any, attributes: [String] = [],
        cookie: [UInt8]?
    ) async throws -> LDAPSyncResult {
        let request = LDAPSearchRequest(base: base, scope: scope, sizeLimit: 0, timeLimit: 0, filter: filter, attributes: attributes)
        let messages = try await perform(.searchRequest(request), controls: [.syncRequest(cookie: cookie)])
        return try Self.syncResult(from: messages, previousCookie: cookie)
    }

    /// Folds the messages of a refreshOnly search into a result (separate for unit tests).
    static func syncResult(from messages: [LDAPMessage], previousCookie: [UInt8]?) throws -> LDAPSyncResult {
        var sync = LDAPSyncResult()
        sync.cookie = previousCookie
        sync.isFullRefresh = previousCookie == nil
        for message in messages {
            switch message.operation {
            case .searchResultEntry(let entry):
                guard let control = message.control(LDAPControl.syncStateOID) else {
                    throw LDAPError.protocolError("entry \(entry.dn) without a Sync State control")
                }
                let state = try control.syncState()
                if let cookie = state.cookie { sync.cookie = cookie }
                switch state.state {
                case 0: sync.presentEntryUUIDs.append(state.entryUUID)
                case 1: sync.changes.append(.init(kind: .add, entryUUID: state.entryUUID, entry: entry))
                case 2: sync.changes.append(.init(kind: .modify, entryUUID: state.entryUUID, entry: entry))
                default: sync.deletedEntryUUIDs.append(state.entryUUID)
                }
            case .intermediateResponse(let name, let value) where name == LDAPControl.syncInfoOID:
                switch try SyncInfo(value: value) {
                case .newCookie(let cookie):
                    sync.cookie = cookie
                case .refreshDelete(let cookie, _), .refreshPresent(let cookie, _):
                    if let cookie { sync.cookie = cookie }
                case .syncIdSet(let cookie, let refreshDeletes, let uuids):
                    if let cookie { sync.cookie = cookie }
                    if refreshDeletes {
                        sync.deletedEntryUUIDs.append(contentsOf: uuids)
                    } else {
                        sync.presentEntryUUIDs.append(contentsOf: uuids)
                    }
                }
            case .searchResultDone(let result):
                if result.code == LDAPResultCode.syncRefreshRequired {
                    sync.refreshRequired = true
                    sync.cookie = nil
                    return sync
                }
                guard result.isSuccess else { throw result.error }
                // Without it we could not tell explicit deletions from a present phase, and
                // guessing "present phase" would make the caller delete everything not listed.
                guard let control = message.control(LDAPControl.syncDoneOID) else {
                    throw LDAPError.protocolError("refreshOnly search ended without a Sync Done control")
                }
                let done = try control.syncDone()
                if let cookie = done.cookie { sync.cookie = cookie }
                sync.refreshDeletes = done.refreshDeletes
            default:
                continue
            }
        }
        return sync
    }

    /// Sends an unbind and closes the socket. Operations still in flight fail with `.closed`.
    public func close() async {
        let handler = self.handler
        let id = messageIDs.next()
        let channel = self.channel
        let closed: EventLoopFuture<Void> = channel.eventLoop.flatSubmit {
            handler.value.submit(messageID: id, operation: .unbindRequest, controls: [], promise: nil)
            return channel.close()
        }
        try? await closed.get()
    }

    /// Sends one request and waits for its final response; all messages for its ID are returned.
    func perform(_ operation: LDAPOperation, controls: [LDAPControl] = [], closeOnTimeout: Bool = false) async throws
        -> [LDAPMessage]
    {
        let id = messageIDs.next()
        let promise = channel.eventLoop.makePromise(of: [LDAPMessage].self)
        let handler = self.handler
        let eventLoop = channel.eventLoop
        eventLoop.execute {
            handler.value.submit(
                messageID: id, operation: operation, controls: controls, promise: promise, closeOnTimeout: closeOnTimeout)
        }
        return try await withTaskCancellationHandler {
            try await promise.futureResult.get()
        } onCancel: {
            eventLoop.execute { handler.value.abandon(messageID: id, error: CancellationError()) }
        }
    }
}

extension TimeAmount {
    /// Saturating conversion from a Swift `Duration`.
    init(_ duration: Duration) {
        let (seconds, attoseconds) = duration.components
        let (scaled, overflow) = seconds.multipliedReportingOverflow(by: 1_000_000_000)
        if overflow {
            self = .nanoseconds(seconds < 0 ? .min : .max)
        } else {
            self = .nanoseconds(scaled.addingReportingOverflow(attoseconds / 1_000_000_000).overflow ? .max : scaled + attoseconds / 1_000_000_000)
        }
    }
}
