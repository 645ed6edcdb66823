/// Who may read a personal-eventing node (XEP-0060 access models, as PEP uses them).
public enum AccessModel: String, Sendable, Hashable, Codable, CaseIterable {
    /// Contacts with a presence subscription to the owner (the PEP default).
    case presence
    /// Anyone (e.g. OMEMO bundles and device lists).
    case open
    /// The owner only (e.g. bookmarks, XEP-0223 private data).
    case whitelist
}

/// A node of a user's personal eventing service (XEP-0163).
public struct PubSubNode: Sendable, Hashable {
    public var owner: String
    public var name: String
    public var accessModel: AccessModel
    /// Items kept; older ones are dropped on publish.
    public var maxItems: Int

    public init(owner: String, name: String, accessModel: AccessModel = .presence, maxItems: Int = 1) {
        self.owner = owner
        self.name = name
        self.accessModel = accessModel
        self.maxItems = maxItems
    }
}

/// A published item.
public struct PubSubItem: Sendable, Hashable {
    public var id: String
    /// The payload element, serialised with its namespace.
    public var payload: String
    public var time: Double

    public init(id: String, payload: String, time: Double) {
        self.id = id
        self.payload = payload
        self.time = time
    }
}

/// Personal eventing (PEP) nodes and items, one service per user.
public protocol PubSubStore: Sendable {
    func node(owner: String, name: String) async throws -> PubSubNode?
    func nodes(owners: [String]) async throws -> [PubSubNode]
    /// Creates or updates the node's configuration.
    func saveNode(_ node: PubSubNode) async throws
    /// Stores (or replaces, by id) an item as the newest and trims to the node's `maxItems`.
    func publish(_ item: PubSubItem, to node: PubSubNode) async throws
    /// Newest first, at most `limit` (all when nil); only the given ids when `ids` is non-empty.
    func items(owner: String, node: String, ids: [String], limit: Int?) async throws -> [PubSubItem]
    /// Returns false if there was no such item.
    func retract(owner: String, node: String, id: String) async throws -> Bool
    /// Deletes the node and its items; false if there was none.
    func deleteNode(owner: String, name: String) async throws -> Bool
}
