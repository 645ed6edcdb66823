/// A persistent multi-user chat room (XEP-0045) as stored: what must survive a restart.
/// Occupants, roles and history are not stored (history comes from the room's archive).
public struct MUCRoomRecord: Sendable, Hashable {
    /// The room's bare JID, e.g. `team@conference.example.com`.
    public var jid: String
    /// The room configuration, JSON-encoded by the MUC module (opaque to the store).
    public var config: String
    public var subject: String?
    /// Nick of whoever set the subject.
    public var subjectBy: String?
    /// Affiliations by bare JID: `owner`, `admin`, `member` or `outcast`.
    public var affiliations: [String: String]
    public var createdAt: Double

    public init(
        jid: String, config: String, subject: String? = nil, subjectBy: String? = nil, affiliations: [String: String] = [:],
        createdAt: Double
    ) {
        self.jid = jid
        self.config = config
        self.subject = subject
        self.subjectBy = subjectBy
        self.affiliations = affiliations
        self.createdAt = createdAt
    }
}

/// Persistent multi-user chat rooms. All rooms are loaded at start-up; each change writes the
/// whole room (configuration, subject and affiliation list) in one transaction.
public protocol MUCStore: Sendable {
    func rooms() async throws -> [MUCRoomRecord]
    /// Creates or replaces the room.
    func saveRoom(_ room: MUCRoomRecord) async throws
    /// Removes the room and its affiliations (no error if there is none).
    func deleteRoom(_ jid: String) async throws
}
