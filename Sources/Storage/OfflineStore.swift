/// Messages kept for users who were offline (XEP-0160), oldest first.
public protocol OfflineStore: Sendable {
    /// Durably stores one serialised stanza; returns only after it is committed.
    func store(_ stanza: String, for user: String, at time: Double) async throws
    /// The stored messages, oldest first, with their ids.
    func messages(for user: String) async throws -> [OfflineMessage]
    /// Removes delivered messages.
    func remove(ids: [Int64], for user: String) async throws
    func count(for user: String) async throws -> Int
}

public struct OfflineMessage: Sendable, Hashable {
    public var id: Int64
    public var stanza: String
    public var time: Double

    public init(id: Int64, stanza: String, time: Double) {
        self.id = id
        self.stanza = stanza
        self.time = time
    }
}
