import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import Storage
import XMLStream
import XMPPCore

/// What every session and module shares: configuration, stores, router and modules.
public final class ServerContext: Sendable {
    public let configuration: ServerConfiguration
    public let domain: String
    public let domainJID: JID
    public let stores: Stores
    public let router: Router
    public let modules: ModuleRegistry
    // The registry's per-stanza fields, stored apart: read through `modules`, each access
    // copied the whole registry (some thirty arrays and dictionaries retained and released).
    private let preparationHooks: [MessagePreparationHook]
    /// In priority order (the registry sorts them).
    private let routedHooks: [MessageHook]
    let deliveryFilters: [DeliveryFilter]
    private let components: [String: ServiceComponent]
    public let logger: Logger
    public let metrics: ServerMetrics
    let throttle: LoginThrottle
    /// Per-address connection limits of the client listeners.
    let connectionLimiter: ConnectionLimiter
    let resumable = ResumableSessions()
    let plainLogins = PlainLoginCache()
    /// HTTP file upload slots and files (XEP-0363).
    public let fileShare: FileShare
    /// The durable log in front of the message archive and the audit record.
    public let journal: MessageJournal
    /// Work that must finish before the process exits (sessions ending, unacked stanzas being stored).
    let pendingWork = NIOLockedValueBox(0)
    /// Secret for deterministic fake SCRAM salts of unknown users.
    let fakeSaltKey: [UInt8]

    public init(configuration: ServerConfiguration, stores: Stores, modules: [any ServerModule], logger: Logger) throws {
        self.configuration = configuration
        self.domain = configuration.domain
        self.domainJID = try JID(configuration.domain)
        self.stores = stores
        self.router = Router()
        var registry = ModuleRegistry()
        for module in modules { registry.register(module) }
        self.modules = registry
        self.preparationHooks = registry.messagePreparationHooks
        self.routedHooks = registry.messageRoutedHooks.map(\.1)
        self.deliveryFilters = registry.deliveryFilters
        self.components = registry.components
        self.logger = logger
        self.metrics = ServerMetrics()
        self.throttle = LoginThrottle(
            maxFailures: configuration.limits.maxLoginFailures,
            window: Double(configuration.limits.loginFailureWindowSeconds),
            lockout: Double(configuration.limits.loginLockoutSeconds),
            maxLockout: Double(configuration.limits.loginLockoutMaxSeconds)
        )
        self.connectionLimiter = ConnectionLimiter(
            maxOpen: configuration.limits.maxConnectionsPerAddress,
            ratePerSecond: configuration.limits.connectionRatePerAddress,
            burst: configuration.limits.connectionBurstPerAddress,
            exempt: configuration.limits.exemptAddresses.compactMap(AddressRange.init)
        )
        self.fileShare = FileShare(configuration: configuration)
        self.journal = MessageJournal(directory: configuration.dataDir + "/journal", logger: logger)
        var generator = SystemRandomNumberGenerator()
        self.fakeSaltKey = (0..<32).map { _ in UInt8.random(in: .min ... .max, using: &generator) }
    }

    /// Checks a plain-text password (SASL PLAIN, the HTTP API's Basic authentication): external
    /// authorities first (LDAP bind for directory users), then the local SCRAM keys. Returns nil
    /// when the password is right and the account enabled, else the SASL failure to report.
    public func verifyPassword(_ username: String, _ password: String) async throws -> SASLError? {
        guard let account = try await stores.accounts.account(username) else { return .notAuthorized }
        for verifier in modules.passwordVerifiers {
            switch await verifier(username, password, self) {
            case .accepted: return account.disabled ? .accountDisabled : nil
            case .rejected: return .notAuthorized
            case .unavailable:
                return SASLError(.temporaryAuthFailure, text: "the company directory cannot be reached; try again shortly")
            case .notApplicable: continue
            }
        }
        guard let credentials = account.credentials else { return .notAuthorized }
        let storedKey = credentials.sha256.storedKey
        if !plainLogins.matches(username, password: password, storedKey: storedKey) {
            guard credentials.sha256.verify(password: password) else { return .notAuthorized }
            plainLogins.remember(username, password: password, storedKey: storedKey)
        }
        return account.disabled ? .accountDisabled : nil
    }

    /// Seconds until `account` may try a password again (nil: now), for password checks outside
    /// XMPP (the HTTP API) that share the logins' throttle.
    public func passwordRetryAfter(account: String) -> Double? { throttle.retryAfter(account: account, address: nil) }

    public func recordPasswordFailure(account: String) { throttle.recordFailure(account: account, address: nil) }

    /// Whether `jid` is in the served domain.
    public func isLocal(_ jid: JID) -> Bool { jid.domainpart == domain }

    /// Whether a local account exists for a bare JID (routing to unknown users gets an error).
    public func accountExists(_ jid: JID) async throws -> Bool {
        guard isLocal(jid), let local = jid.localpart else { return false }
        if !router.sessions(of: jid.bare.description).isEmpty { return true }
        return try await stores.accounts.account(local) != nil
    }

    // MARK: - Local delivery, used by sessions and modules

    /// Outcome of trying to deliver a message synchronously.
    enum MessageDelivery {
        /// Delivered to these sessions.
        case delivered([SessionHandle])
        /// No session takes it: run the undeliverable-message hooks (offline storage).
        case undeliverable(JID)
        case error(StanzaError)
        case dropped
    }

    /// Runs the message-preparation hooks (archive ids …).
    /// - Parameter stanza: consumed, so that the preparation hooks change it in place.
    func prepareMessage(_ stanza: consuming XMLElement, to: JID) -> PreparedMessage {
        var prepared = PreparedMessage(stanza: stanza)
        prepared.toBareKey = to.bare.description
        for index in preparationHooks.indices { preparationHooks[index](&prepared, to, self) }
        // Serialised once: the same bytes go to the recipient and into the archive.
        prepared.text = XMLSerializer.string(prepared.stanza)
        return prepared
    }

    /// Waits until everything accepted so far is durable.
    public func durabilityBarrier() async {
        await journal.durable()
        for barrier in modules.durabilityBarriers { await barrier(self) }
    }

    /// Delivers a message to local sessions per RFC 6121 §8.5, without touching storage.
    func deliverMessage(_ stanza: XMLElement, to: JID, text: String? = nil, bareKey: String? = nil) -> MessageDelivery {
        guard isLocal(to) else { return .error(StanzaError(.remoteServerNotFound)) }
        guard to.localpart != nil else { return .dropped }
        let type = stanza.stanzaType ?? "normal"
        let bareKey = bareKey ?? to.bare.description
        if to.resourcepart != nil, let session = router.session(to, bare: bareKey) {
            session.deliver(stanza, text: text)
            return .delivered([session])
        }
        switch type {
        case "groupchat":
            return .error(.serviceUnavailable)
        case "error":
            return .dropped
        case "headline":
            let targets = router.bareMessageTargets(bareKey)
            for session in targets { session.deliver(stanza, text: text) }
            return .delivered(targets)
        default:
            let targets = router.bareMessageTargets(bareKey)
            if targets.isEmpty { return .undeliverable(to.bare) }
            for session in targets { session.deliver(stanza, text: text) }
            return .delivered(targets)
        }
    }

    /// Delivers a message, running the undeliverable hooks (offline storage) when needed.
    /// Returns an error to bounce to the sender, if any.
    /// - Parameter replay: the message was routed before (e.g. re-routed when a session ended
    ///   with it unacknowledged): skip preparation and the routed hooks (no second archive entry).
    public func routeMessage(_ message: XMLElement, to: JID, from session: SessionHandle?, replay: Bool = false) async -> StanzaError? {
        if let component = component(for: to.domainpart) {
            guard let from = message[attribute: "from"].flatMap({ try? JID($0) }) else { return .badRequest }
            switch component.handler(ComponentStanza(stanza: message, from: from, to: to, session: session, server: self)) {
            case .done: return nil
            case .error(let error): return error
            case .later(let work): return await work()
            }
        }
        let prepared = replay ? PreparedMessage(stanza: message) : prepareMessage(message, to: to)
        let stanza = prepared.stanza
        switch deliverMessage(stanza, to: to, text: prepared.text, bareKey: prepared.toBareKey) {
        case .delivered(let recipients):
            if !replay { messageRouted(prepared, to: to, sender: session, recipients: recipients) }
            return nil
        case .dropped: return nil
        case .error(let error): return error
        case .undeliverable(let bare):
            let error = await handleUndeliverable(stanza, to: bare, session: session)
            if error == nil, !replay { messageRouted(prepared, to: to, sender: session, recipients: []) }
            return error
        }
    }

    /// Runs the group-message hooks (the audit record) for a message a service broadcast to a room.
    /// - Parameters:
    ///   - text: the stanza serialised, when the caller has it already.
    ///   - archived: the room's archive copy of the message, if it keeps one: journaled in the
    ///     same append as the hooks' entries.
    public func groupMessageSent(_ stanza: XMLElement, room: String, sender: String, text: String? = nil, archived: ArchiveRecord? = nil) {
        var entries: [JournalEntry] = archived.map { [.archive($0)] } ?? []
        let hooks = modules.groupMessageHooks
        if !hooks.isEmpty {
            var event = GroupMessageEvent(stanza: stanza, room: room, sender: sender, server: self, text: text ?? XMLSerializer.string(stanza))
            for hook in hooks { hook(&event) }
            entries.append(contentsOf: event.journalEntries)
        }
        journal.append(consume entries)
    }

    /// Runs the synchronous message hooks (carbons, later the archive) for a routed message.
    func messageRouted(_ message: PreparedMessage, to: JID, sender: SessionHandle?, recipients: [SessionHandle]) {
        let hooks = routedHooks
        guard !hooks.isEmpty else { return }
        var event = MessageEvent(
            stanza: message.stanza, to: to, sender: sender, toBareKey: message.toBareKey ?? to.bare.description, recipients: recipients,
            server: self, marks: message.marks,
            // Made by the router for what it routes; serialised here for what a service delivered.
            text: message.text ?? XMLSerializer.string(message.stanza))
        event.journalEntries.reserveCapacity(3)
        for index in hooks.indices { hooks[index](&event) }
        // Taken out of the event, so that the journal moves them in rather than copying them.
        var entries: [JournalEntry] = []
        swap(&entries, &event.journalEntries)
        journal.append(consume entries)
    }

    func handleUndeliverable(_ stanza: XMLElement, to bare: JID, session: SessionHandle?) async -> StanzaError? {
        do {
            guard try await accountExists(bare) else { return .serviceUnavailable }
            let context = StanzaHookContext(stanza: stanza, to: bare, session: session, server: self)
            for (_, hook) in modules.undeliverableMessageHooks where try await hook(context) == .handled {
                return nil
            }
            return .serviceUnavailable
        } catch {
            logger.error("undeliverable message handling failed", metadata: ["error": "\(error)"])
            return .internalServerError
        }
    }

    /// The delivery filters' verdict for a stanza; the first non-`allow` wins.
    public func filter(_ stanza: XMLElement, from: JID, to: JID) -> FilterVerdict {
        for filter in deliveryFilters {
            let verdict = filter(stanza, from, to)
            if case .allow = verdict { continue }
            return verdict
        }
        return .allow
    }

    /// Delivers presence: to one full JID if bound, or to every available session of a bare JID.
    /// Presence the filters do not allow is dropped.
    public func deliverPresence(_ stanza: XMLElement, to: JID) {
        if toComponent(stanza, to: to) { return }
        guard isLocal(to) else { return }
        if !deliveryFilters.isEmpty, let from = stanza[attribute: "from"].flatMap({ try? JID($0) }) {
            guard case .allow = filter(stanza, from: from, to: to) else { return }
        }
        if to.resourcepart != nil {
            router.session(to)?.deliver(stanza)
        } else {
            for session in router.availableSessions(of: to.bare.description) { session.deliver(stanza) }
        }
    }

    // MARK: - Service components

    /// The component owning a domain, if any.
    func component(for domain: String) -> ServiceComponent? {
        components.isEmpty ? nil : components[domain]
    }

    /// Hands a stanza the server sends on a user's behalf (e.g. unavailable presence at logout)
    /// to the component owning `to`'s domain; false if no component owns it. Errors are dropped.
    func toComponent(_ stanza: XMLElement, to: JID) -> Bool {
        guard let component = component(for: to.domainpart) else { return false }
        guard let from = stanza[attribute: "from"].flatMap({ try? JID($0) }) else { return true }
        switch component.handler(ComponentStanza(stanza: stanza, from: from, to: to, session: nil, server: self)) {
        case .done, .error: break
        case .later(let work): track { _ = await work() }
        }
        return true
    }

    /// Sends a stanza from a service (a component) to a local address through the normal
    /// delivery path: message preparation, routing and routed hooks (so carbons, CSI, stream
    /// management, archive and offline storage behave as for any message), presence through
    /// the delivery filters. Synchronous; an undeliverable message is stored offline in the
    /// background. Returns the error a message met (e.g. the occupant's session is gone).
    @discardableResult
    public func sendFromService(_ stanza: XMLElement, to: JID) -> StanzaError? {
        switch stanza.name {
        case "message":
            let prepared = prepareMessage(stanza, to: to)
            switch deliverMessage(prepared.stanza, to: to) {
            case .delivered(let recipients):
                messageRouted(prepared, to: to, sender: nil, recipients: recipients)
                return nil
            case .dropped:
                return nil
            case .error(let error):
                return error
            case .undeliverable(let bare):
                track {
                    if await self.handleUndeliverable(prepared.stanza, to: bare, session: nil) == nil {
                        self.messageRouted(prepared, to: to, sender: nil, recipients: [])
                    }
                }
                return nil
            }
        case "presence":
            deliverPresence(stanza, to: to)
            return nil
        default:
            guard isLocal(to) else { return StanzaError(.remoteServerNotFound) }
            if to.resourcepart != nil { router.session(to)?.deliver(stanza) }
            return nil
        }
    }

    /// Delivers a service's stanzas to bound sessions so that order holds: each recipient gets
    /// them in the given order, and every recipient sees the batches in the order they were
    /// submitted (a room submits under its lock, so all occupants see one order). The work is
    /// enqueued on each recipient's event loop, one task per loop and batch; there it runs
    /// through the delivery filters and, for messages, the preparation and routed hooks.
    /// - Returns: the recipients that are not bound (any more).
    public func deliverInOrder(_ deliveries: [ServiceDelivery], from: JID) -> [JID] {
        var batches: [(loop: any EventLoop, items: [(SessionHandle, ServiceDelivery)])] = []
        var gone: [JID] = []
        for delivery in deliveries {
            guard let session = router.sessions(of: delivery.bareKey).first(where: { $0.jid == delivery.to }) else {
                gone.append(delivery.to)
                continue
            }
            if let index = batches.firstIndex(where: { $0.loop === session.eventLoop }) {
                batches[index].items.append((session, delivery))
            } else {
                batches.append((session.eventLoop, [(session, delivery)]))
            }
        }
        for batch in batches {
            let items = batch.items
            batch.loop.execute {
                for (session, delivery) in items { self.deliverNow(delivery, to: session, from: from) }
            }
        }
        return gone
    }

    private func deliverNow(_ delivery: ServiceDelivery, to session: SessionHandle, from: JID) {
        switch delivery {
        case .shared(let shared, _, _):
            if !deliveryFilters.isEmpty {
                guard case .allow = filter(shared.element, from: from, to: session.jid) else { return }
            }
            session.deliver(shared)
            if !shared.isPresence, !routedHooks.isEmpty {
                messageRouted(PreparedMessage(stanza: shared.element), to: session.jid, sender: nil, recipients: [session])
            }
        case .stanza(let stanza, _, _):
            if !deliveryFilters.isEmpty {
                guard case .allow = filter(stanza, from: from, to: session.jid) else { return }
            }
            guard stanza.name == "message" else {
                session.deliver(stanza)
                return
            }
            let prepared = prepareMessage(stanza, to: session.jid)
            session.deliver(prepared.stanza)
            messageRouted(prepared, to: session.jid, sender: nil, recipients: [session])
        }
    }

    /// Sends a stanza to every session of a bare JID that wants roster pushes.
    public func deliverToInterested(_ stanza: XMLElement, bare: String) {
        for session in router.sessions(of: bare) where session.presence.interestedInRoster {
            var copy = stanza
            copy[attribute: "to"] = session.jid.description
            session.deliver(copy)
        }
    }

    /// Runs the hooks for a newly bound session.
    func sessionBound(_ session: SessionHandle) async {
        for (_, hook) in modules.boundHooks {
            do {
                try await hook(session, self)
            } catch {
                logger.error("session-bound hook failed", metadata: ["error": "\(error)", "xmpp.jid": "\(session.jid)"])
            }
        }
    }

    /// Runs the hooks for a session's initial presence.
    public func sessionBecameAvailable(_ session: SessionHandle) async {
        for (_, hook) in modules.availableHooks {
            do {
                try await hook(session, self)
            } catch {
                logger.error("session-available hook failed", metadata: ["error": "\(error)", "xmpp.jid": "\(session.jid)"])
            }
        }
    }

    /// Runs `body` as a task that shutdown waits for.
    public func track(_ body: @escaping @Sendable () async -> Void) {
        pendingWork.withLockedValue { $0 += 1 }
        Task {
            await body()
            self.pendingWork.withLockedValue { $0 -= 1 }
        }
    }

    /// Ends a session for good: session-end hooks (unavailable presence), then its unacknowledged
    /// stanzas (XEP-0198) go to the user's other sessions or offline storage, never lost.
    func endSession(_ session: SessionHandle, unacked: [XMLElement], runHooks: Bool = true) {
        track {
            if runHooks { await self.sessionEnded(session) }
            for stanza in unacked where stanza.name == "message" {
                guard stanza.stanzaType != "error", stanza.stanzaType != "groupchat" else { continue }
                var copy = stanza
                copy[attribute: "to"] = session.jid.bare.description
                _ = await self.routeMessage(copy, to: session.jid.bare, from: nil, replay: true)
            }
        }
    }

    /// Runs the hooks for an ended session.
    func sessionEnded(_ session: SessionHandle) async {
        for (_, hook) in modules.sessionEndHooks {
            do {
                try await hook(session, self)
            } catch {
                logger.error("session-end hook failed", metadata: ["error": "\(error)", "xmpp.jid": "\(session.jid)"])
            }
        }
    }
}
