import Logging
import XMLStream
import XMPPCore

/// One feature of the server (roster, presence, vCard …): registered once, declares what it handles.
///
/// A module registers IQ handlers, hooks and disco features in `register(in:)`; the registry
/// is built at start-up and immutable afterwards, so dispatch needs no locks.
public protocol ServerModule: Sendable {
    /// Stable identifier, used in logs and configuration.
    var id: String { get }
    func register(in registry: inout ModuleRegistry)
}

/// Whom an IQ is addressed to, for handler lookup.
public enum IQTarget: Hashable, Sendable {
    /// The server domain itself.
    case server
    /// A local account's bare JID (no `to` means the sender's own account).
    case account
}

/// An IQ get/set being handled.
public struct IQRequest: Sendable {
    /// The stanza, `from` stamped with the sender's full JID.
    public let stanza: XMLElement
    /// The single payload child.
    public let payload: XMLElement
    public let from: JID
    /// The addressed account (the sender's own when the IQ had no `to`), or the domain for `.server`.
    public let to: JID
    public let isSet: Bool
    /// The sending session, when the IQ came from a client session.
    public let session: SessionHandle?
    public let server: ServerContext

    /// The addressed account is the sender's own.
    public var isToSelf: Bool { to.bare == from.bare }
}

/// What an IQ handler returns: the payload of the result (nil for an empty result).
public typealias IQHandler = @Sendable (IQRequest) async throws -> XMLElement?

/// A hook's answer: stop here, or let lower-priority handlers run.
public enum HookResult: Sendable {
    case handled
    case pass
}

/// Priorities for hook ordering; higher runs first.
public struct HookPriority: Comparable, Hashable, Sendable {
    public let value: Int
    public init(_ value: Int) { self.value = value }
    public static let high = HookPriority(100)
    public static let normal = HookPriority(0)
    public static let low = HookPriority(-100)
    public static func < (lhs: HookPriority, rhs: HookPriority) -> Bool { lhs.value < rhs.value }
}

/// A stanza hook: a presence from a session, or a message nobody online could take.
public struct StanzaHookContext: Sendable {
    public let stanza: XMLElement
    /// Addressee (nil for presence broadcast).
    public let to: JID?
    public let session: SessionHandle?
    public let server: ServerContext
}

/// A message the server routed (delivered to sessions, or stored for later).
public struct MessageEvent: Sendable {
    /// The message as routed, `from` stamped.
    public let stanza: XMLElement
    public let to: JID
    /// The local session that sent it, if any.
    public let sender: SessionHandle?
    /// `to.bare` as text (made once per message).
    public let toBareKey: String
    /// Sessions that received it; empty when it was stored for an offline user.
    public let recipients: [SessionHandle]
    public let server: ServerContext
    /// Notes hooks leave for later hooks (the archive's positions, fixed before delivery, and
    /// the sender's archive id for sent carbons).
    public var marks: MessageMarks
    /// The message as routed, serialised standalone (`XMLSerializer.string`): the bytes that
    /// went to the recipient, for the archive and the audit record to store as they are.
    public let text: String
    /// What the hooks have the message journal store (archive copies, the audit record):
    /// appended in one call once every hook has run, so a message's entries travel together.
    public var journalEntries: [JournalEntry] = []
}

/// What hooks note about a message on its way, for the hooks after them. Typed fields, not a
/// dictionary of strings: every routed message carries them (two positions as text, parsed
/// back, and a dictionary per message were measurable on the event loop).
public struct MessageMarks: Sendable {
    /// Archive positions taken before delivery, so the archive's order is the order in which
    /// the server accepted the messages (recipient's copy, sender's copy).
    public var incomingPosition: Int64?
    public var outgoingPosition: Int64?
    /// The id of the sender's archive copy (the stanza-id a sent carbon carries).
    public var senderArchiveID: String?
    /// The stanza-id the recipient's copy carries (set with it, so the archive need not look
    /// for it in the stanza again).
    public var incomingArchiveID: String?

    public init() {}
}

/// A message about to be delivered, with notes for the routed hooks.
public struct PreparedMessage: Sendable {
    public var stanza: XMLElement
    public var marks = MessageMarks()
    /// The addressee's bare JID as text, made once for the router and the hooks (nil when the
    /// message did not go through preparation).
    public var toBareKey: String?
    /// Set by the router once preparation is over: the stanza serialised once for delivery
    /// and storage.
    public var text: String?
}

/// Synchronous, on the hot path: must not block. Runs on the sender's event loop, in
/// priority order; a hook may annotate the event for the ones after it.
public typealias MessageHook = @Sendable (inout MessageEvent) -> Void

/// Runs before a message is delivered and may add to it (e.g. the archive's XEP-0359
/// `<stanza-id/>`) or note things for the routed hooks. Synchronous, on the hot path.
public typealias MessagePreparationHook = @Sendable (_ message: inout PreparedMessage, _ to: JID, _ server: ServerContext) -> Void

/// Completes when everything the server has accepted so far is durable (e.g. archived); XEP-0198
/// acknowledgements wait for it, so a client is never told a message is safe before it is.
public typealias DurabilityBarrier = @Sendable (ServerContext) async -> Void

/// What a delivery filter decides for a stanza between two addresses.
public enum FilterVerdict: Sendable {
    case allow
    /// Silently discard.
    case drop
    /// Do not deliver; answer the sender with this error.
    case reject(StanzaError)
}

/// Decides whether a stanza from `from` may reach `to` (both with or without resource).
/// Synchronous, on the hot path: consult memory only.
public typealias DeliveryFilter = @Sendable (_ stanza: XMLElement, _ from: JID, _ to: JID) -> FilterVerdict

/// A message a group chat service broadcast to a room (once, not per occupant).
public struct GroupMessageEvent: Sendable {
    public let stanza: XMLElement
    /// Bare JID of the room.
    public let room: String
    /// Bare JID of the real sender.
    public let sender: String
    public let server: ServerContext
    /// The stanza serialised (the room's archive copy is the same text, stored once).
    public let text: String
    /// What the hooks have the message journal store (the audit record): the room appends
    /// them with its archive copy, in one call, so the two travel together.
    public var journalEntries: [JournalEntry] = []
}

/// Synchronous, on the hot path (e.g. the audit record's enqueue).
public typealias GroupMessageHook = @Sendable (inout GroupMessageEvent) -> Void

/// What an external authority says about a password (SASL PLAIN).
public enum PasswordCheck: Sendable {
    case accepted
    case rejected
    /// The authority cannot be asked now (down, timed out): a temporary failure, not a wrong password.
    case unavailable
    /// Not an account this authority handles: ask the next one, or the local credentials.
    case notApplicable
}

/// Checks a password against an external authority (e.g. LDAP bind). Must bound its own time.
public typealias PasswordVerifier = @Sendable (_ username: String, _ password: String, _ server: ServerContext) async -> PasswordCheck

/// Whether an account may log in with a password (SCRAM, PLAIN) or must present a certificate.
public enum PasswordLoginVerdict: Sendable, Equatable {
    case allowed
    /// Only SASL EXTERNAL with a client certificate; the text tells the user why.
    case certificateRequired(String)
}

/// Decides, after the password was checked and found right, whether password login is allowed
/// for `username`. Synchronous and consulted on the login path: answer from memory.
public typealias PasswordLoginPolicy = @Sendable (_ username: String, _ server: ServerContext) -> PasswordLoginVerdict

public typealias StanzaHook = @Sendable (StanzaHookContext) async throws -> HookResult
public typealias SessionHook = @Sendable (SessionHandle, ServerContext) async throws -> Void
/// Handles a nonza on the session's event loop; returns false if the element is not understood.
public typealias NonzaHandler = @Sendable (XMLElement, SessionHandle) -> Bool

/// A stanza addressed to a service domain a module owns (e.g. `conference.example.com`, or
/// `room@conference.example.com/nick`), with `from` stamped.
public struct ComponentStanza: Sendable {
    public let stanza: XMLElement
    public let from: JID
    public let to: JID
    /// The local session that sent it (nil when the server itself sends, e.g. unavailable presence at logout).
    public let session: SessionHandle?
    public let server: ServerContext
}

/// What a component did with a stanza.
public enum ComponentOutcome: Sendable {
    /// Handled (replies, if any, were sent by the component).
    case done
    /// Refused: the sender gets this error (never for error stanzas).
    case error(StanzaError)
    /// Needs storage or other async work: the sending session's queue waits for it, so the
    /// client's stanzas stay in order. A returned error is bounced to the sender.
    case later(@Sendable () async -> StanzaError?)
}

/// Handles stanzas for a service domain. Synchronous, on the sender's event loop: must not
/// block (answer `.later` for work that needs to wait).
public typealias ComponentHandler = @Sendable (ComponentStanza) -> ComponentOutcome

/// A service a module runs on its own (sub)domain, like an XEP-0114 component inside the server.
public struct ServiceComponent: Sendable {
    /// The domain it owns, e.g. `conference.example.com`.
    public let domain: String
    /// Human-readable name for the server's disco#items.
    public let name: String
    let handler: ComponentHandler
}

/// Everything modules registered.
public struct ModuleRegistry: Sendable {
    struct IQKey: Hashable, Sendable {
        let namespace: String
        let target: IQTarget
    }

    private(set) var iqHandlers: [IQKey: IQHandler] = [:]
    /// Disco#info features of the server, from the modules that implement them.
    public private(set) var serverFeatures: [String] = []
    /// XEP-0128 extended information forms in the server's disco#info.
    public private(set) var serverInfoForms: [XMLElement] = []
    /// Extra disco#info identities of an account's bare JID (e.g. pubsub/pep).
    public private(set) var accountIdentities: [(category: String, type: String)] = []
    /// Disco#info features of an account's bare JID.
    public private(set) var accountFeatures: [String] = []
    /// Stream features offered after binding (e.g. roster versioning).
    public private(set) var streamFeatures: [XMLElement] = []
    private(set) var presenceHooks: [(HookPriority, StanzaHook)] = []
    private(set) var undeliverableMessageHooks: [(HookPriority, StanzaHook)] = []
    private(set) var startHooks: [@Sendable (ServerContext) async throws -> Void] = []
    private(set) var backgroundTasks: [@Sendable (ServerContext) async -> Void] = []
    private(set) var passwordVerifiers: [PasswordVerifier] = []
    private(set) var groupMessageHooks: [GroupMessageHook] = []
    private(set) var httpRoutes: [(prefix: String, handler: HTTPRouteHandler)] = []
    private(set) var passwordLoginPolicies: [PasswordLoginPolicy] = []
    private(set) var boundHooks: [(HookPriority, SessionHook)] = []
    private(set) var availableHooks: [(HookPriority, SessionHook)] = []
    private(set) var sessionEndHooks: [(HookPriority, SessionHook)] = []
    private(set) var messageRoutedHooks: [(HookPriority, MessageHook)] = []
    private(set) var deliveryFilters: [DeliveryFilter] = []
    private(set) var messagePreparationHooks: [MessagePreparationHook] = []
    private(set) var durabilityBarriers: [DurabilityBarrier] = []
    /// Top-level elements (nonzas) a bound client may send, by namespace, e.g. CSI.
    private(set) var nonzaHandlers: [String: NonzaHandler] = [:]
    public private(set) var moduleIDs: [String] = []
    /// Service domains owned by modules, by domain.
    public private(set) var components: [String: ServiceComponent] = [:]
    private struct Provided: Sendable { let value: any Sendable }
    private var services: [ObjectIdentifier: Provided] = [:]

    public init() {}

    /// Makes a module the owner of a service domain: every stanza to `domain` or an address
    /// in it (`local@domain/resource`) goes to `handler` instead of the local-user router, and
    /// the server's disco#items lists it. One module per domain.
    public mutating func addComponent(domain: String, name: String, _ handler: @escaping ComponentHandler) {
        precondition(components[domain] == nil, "component domain \(domain) registered twice")
        components[domain] = ServiceComponent(domain: domain, name: name, handler: handler)
    }

    /// Makes a module's API reachable by other modules (e.g. the MUC service for the
    /// organisation directory): `server.modules.service(MUCModule.self)`.
    public mutating func provide<T: Sendable>(_ service: T) {
        services[ObjectIdentifier(T.self)] = Provided(value: service)
    }

    /// A service another module provided, by type.
    public func service<T: Sendable>(_ type: T.Type) -> T? {
        services[ObjectIdentifier(type)]?.value as? T
    }

    /// The component owning a domain, if any.
    public func component(for domain: String) -> ServiceComponent? {
        components.isEmpty ? nil : components[domain]
    }

    /// Registers a handler for IQ get/set whose payload is in `namespace`, addressed to `target`.
    public mutating func handleIQ(_ namespace: String, target: IQTarget, _ handler: @escaping IQHandler) {
        iqHandlers[IQKey(namespace: namespace, target: target)] = handler
    }

    public mutating func addServerFeature(_ feature: String) {
        if !serverFeatures.contains(feature) { serverFeatures.append(feature) }
    }

    /// Adds an XEP-0128 data form to the server's disco#info (e.g. upload limits).
    public mutating func addServerInfoForm(_ form: XMLElement) { serverInfoForms.append(form) }

    public mutating func addAccountIdentity(category: String, type: String) {
        accountIdentities.append((category, type))
    }

    public mutating func addAccountFeature(_ feature: String) {
        if !accountFeatures.contains(feature) { accountFeatures.append(feature) }
    }

    public mutating func addStreamFeature(_ feature: XMLElement) { streamFeatures.append(feature) }

    /// Presence stanzas sent by a bound client (after `from` stamping).
    public mutating func onPresence(_ priority: HookPriority = .normal, _ hook: @escaping StanzaHook) {
        presenceHooks.append((priority, hook))
        presenceHooks.sort { $0.0 > $1.0 }
    }

    /// A message for a local bare JID with no session to take it (offline storage, push …).
    public mutating func onUndeliverableMessage(_ priority: HookPriority = .normal, _ hook: @escaping StanzaHook) {
        undeliverableMessageHooks.append((priority, hook))
        undeliverableMessageHooks.sort { $0.0 > $1.0 }
    }

    /// Runs once at start-up, before the listeners open (load caches …). A failure stops start-up.
    public mutating func onStart(_ hook: @escaping @Sendable (ServerContext) async throws -> Void) {
        startHooks.append(hook)
    }

    /// Work that runs while the server serves (after the listeners open) and is cancelled at
    /// shutdown, e.g. watching for directory changes. Check `Task.isCancelled` between rounds.
    public mutating func addBackgroundTask(_ task: @escaping @Sendable (ServerContext) async -> Void) {
        backgroundTasks.append(task)
    }

    /// Serves HTTP requests under `prefix` (e.g. "/api/audit/") on the HTTP listener.
    public mutating func addHTTPRoute(prefix: String, _ handler: @escaping HTTPRouteHandler) {
        httpRoutes.append((prefix, handler))
    }

    /// A group chat message was broadcast to a room.
    public mutating func onGroupMessage(_ hook: @escaping GroupMessageHook) {
        groupMessageHooks.append(hook)
    }

    /// Checks plain-text passwords (SASL PLAIN over TLS) of the accounts it handles, before the
    /// local SCRAM credentials are consulted.
    public mutating func addPasswordVerifier(_ verifier: @escaping PasswordVerifier) {
        passwordVerifiers.append(verifier)
    }

    /// Restricts password login (e.g. to require certificates for administrators).
    public mutating func addPasswordLoginPolicy(_ policy: @escaping PasswordLoginPolicy) {
        passwordLoginPolicies.append(policy)
    }

    /// A session bound its resource; runs before the bind result is sent, so per-user state
    /// loaded here is in place before the client's first stanza.
    public mutating func onSessionBound(_ priority: HookPriority = .normal, _ hook: @escaping SessionHook) {
        boundHooks.append((priority, hook))
        boundHooks.sort { $0.0 > $1.0 }
    }

    /// A session sent its initial available presence.
    public mutating func onSessionAvailable(_ priority: HookPriority = .normal, _ hook: @escaping SessionHook) {
        availableHooks.append((priority, hook))
        availableHooks.sort { $0.0 > $1.0 }
    }

    /// A message was routed: delivered to sessions or stored offline (synchronous hook).
    public mutating func onMessageRouted(_ priority: HookPriority = .normal, _ hook: @escaping MessageHook) {
        messageRoutedHooks.append((priority, hook))
        messageRoutedHooks.sort { $0.0 > $1.0 }
    }

    /// Adds to a message before it is delivered.
    public mutating func onMessagePreparation(_ hook: @escaping MessagePreparationHook) {
        messagePreparationHooks.append(hook)
    }

    /// Registers work that acknowledgements must wait for.
    public mutating func onDurabilityBarrier(_ barrier: @escaping DurabilityBarrier) {
        durabilityBarriers.append(barrier)
    }

    /// Vets every stanza a client sends and every presence the server broadcasts (blocking, policy).
    public mutating func onDeliveryFilter(_ filter: @escaping DeliveryFilter) {
        deliveryFilters.append(filter)
    }

    /// A top-level non-stanza element in `namespace` from a bound client (e.g. XEP-0352 `<active/>`).
    public mutating func handleNonza(_ namespace: String, _ handler: @escaping NonzaHandler) {
        nonzaHandlers[namespace] = handler
    }

    /// A bound session ended (after the router dropped it).
    public mutating func onSessionEnd(_ priority: HookPriority = .normal, _ hook: @escaping SessionHook) {
        sessionEndHooks.append((priority, hook))
        sessionEndHooks.sort { $0.0 > $1.0 }
    }

    /// Registers a module; each id once.
    public mutating func register(_ module: any ServerModule) {
        precondition(!moduleIDs.contains(module.id), "module \(module.id) registered twice")
        moduleIDs.append(module.id)
        module.register(in: &self)
    }

    func iqHandler(_ namespace: String, _ target: IQTarget) -> IQHandler? {
        iqHandlers[IQKey(namespace: namespace, target: target)]
    }
}
