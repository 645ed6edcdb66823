import XMPPCore

/// RFC 6121 subscription state of a roster item.
public enum Subscription: String, Sendable, Hashable, Codable {
    case none, to, from, both

    /// The contact receives the user's presence.
    public var contactSeesUser: Bool { self == .from || self == .both }
    /// The user receives the contact's presence.
    public var userSeesContact: Bool { self == .to || self == .both }
}

/// One contact in a user's roster, plus the server-side subscription bookkeeping.
public struct RosterItem: Sendable, Hashable, Codable {
    public var jid: String
    public var name: String?
    public var subscription: Subscription
    /// An outbound subscription request is pending (`ask='subscribe'`).
    public var askSubscribe: Bool
    /// An inbound subscription request awaits the user's answer (RFC 6121 §3.1.3).
    public var pendingIn: Bool
    /// The stanza of the pending inbound request, delivered again at next login.
    public var pendingInStanza: String?
    /// False for a record that only holds `pendingIn` state and is not shown in the roster.
    public var inRoster: Bool
    public var groups: [String]

    public init(
        jid: String, name: String? = nil, subscription: Subscription = .none, askSubscribe: Bool = false,
        pendingIn: Bool = false, pendingInStanza: String? = nil, inRoster: Bool = true, groups: [String] = []
    ) {
        self.jid = jid
        self.name = name
        self.subscription = subscription
        self.askSubscribe = askSubscribe
        self.pendingIn = pendingIn
        self.pendingInStanza = pendingInStanza
        self.inRoster = inRoster
        self.groups = groups
    }
}

/// A user's roster at a version (XEP-0237).
public struct Roster: Sendable, Hashable {
    public var version: Int64
    public var items: [RosterItem]

    public init(version: Int64, items: [RosterItem]) {
        self.version = version
        self.items = items
    }
}

/// Rosters, one per user (bare JID string).
public protocol RosterStore: Sendable {
    func roster(of user: String) async throws -> Roster
    func item(of user: String, contact: String) async throws -> RosterItem?
    /// Stores the item and bumps the roster version; returns the new version.
    func put(_ item: RosterItem, of user: String) async throws -> Int64
    /// Deletes the item and bumps the version; returns the new version (unchanged if absent).
    func remove(_ contact: String, of user: String) async throws -> Int64
}
