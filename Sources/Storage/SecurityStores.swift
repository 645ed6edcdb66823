/// Encrypts and decrypts stored fields (message bodies, audit records). Implemented by the
/// key ring (`Vault`); stores call it so no plaintext reaches the database file.
public protocol FieldCipher: Sendable {
    /// Seals `plaintext`; `context` (e.g. the table) is authenticated, so a value copied to
    /// another place does not decrypt there.
    func seal(_ plaintext: [UInt8], context: String) throws -> [UInt8]
    /// Seals a text's UTF-8 bytes: the same as `seal(Array(text.utf8), context:)`.
    func seal(text: String, context: String) throws -> [UInt8]
    func open(_ sealed: [UInt8], context: String) throws -> [UInt8]
    /// Whether this value was sealed (stores keep reading rows written before encryption was on).
    func isSealed(_ value: [UInt8]) -> Bool
    /// Whether re-encryption should rewrite this value (plaintext, or sealed with an older key).
    func needsResealing(_ value: [UInt8]) -> Bool
}

extension FieldCipher {
    public func seal(text: String, context: String) throws -> [UInt8] { try seal(Array(text.utf8), context: context) }
}

/// A data-encryption key as stored: wrapped (encrypted) by a master key.
public struct WrappedDataKey: Sendable, Hashable {
    public var id: Int64
    public var wrapped: [UInt8]
    /// Fingerprint of the master key that wraps it.
    public var masterID: String
    public var createdAt: Double
    /// Retired keys still decrypt; new data uses the newest active key.
    public var retired: Bool

    public init(id: Int64, wrapped: [UInt8], masterID: String, createdAt: Double, retired: Bool = false) {
        self.id = id
        self.wrapped = wrapped
        self.masterID = masterID
        self.createdAt = createdAt
        self.retired = retired
    }
}

public protocol DataKeyStore: Sendable {
    func dataKeys() async throws -> [WrappedDataKey]
    /// Stores a new key (its `id` is assigned) and retires the others; returns the id.
    func addDataKey(_ key: WrappedDataKey) async throws -> Int64
    /// Replaces the wrapping of existing keys (master key rotation), all in one transaction.
    func rewrapDataKeys(_ keys: [WrappedDataKey]) async throws
}

/// One entry of the tamper-evident trail: each carries the hash of the one before.
public struct TrailEntry: Sendable, Hashable {
    public var seq: Int64
    public var time: Double
    /// Who: "xmpp:auditor@example.com", "cli:root", "server", "ldap-sync" …
    public var actor: String
    /// What: "audit.request", "audit.approve", "audit.search", "user.disable", "keys.rotate" …
    public var action: String
    /// Details as canonical JSON text.
    public var details: String
    public var previousHash: [UInt8]
    public var hash: [UInt8]
    /// A signature over `hash` on anchor entries.
    public var signature: [UInt8]?

    public init(
        seq: Int64, time: Double, actor: String, action: String, details: String, previousHash: [UInt8], hash: [UInt8],
        signature: [UInt8]? = nil
    ) {
        self.seq = seq
        self.time = time
        self.actor = actor
        self.action = action
        self.details = details
        self.previousHash = previousHash
        self.hash = hash
        self.signature = signature
    }
}

public protocol TrailStore: Sendable {
    /// Appends the entry `make` builds from the current last entry (nil for the first), in one
    /// transaction, so concurrent writers (server and CLI) still form one chain.
    func appendTrail(_ make: @escaping @Sendable (TrailEntry?) throws -> TrailEntry) async throws -> TrailEntry
    /// Entries with seq ≥ `from`, ascending.
    func trail(from: Int64, limit: Int) async throws -> [TrailEntry]
}

/// One message in the audit record: independent of users' own archives (a retraction there
/// changes nothing here). The stanza is sealed by the store's cipher.
public struct AuditRecord: Sendable, Hashable {
    public var id: Int64
    public var time: Double
    /// Bare JID of the sender (a room occupant's real JID for group chat).
    public var sender: String
    /// Bare JIDs of the recipients (the room's JID for group chat).
    public var recipients: [String]
    /// chat, groupchat, headline, normal.
    public var type: String
    /// The room, for group chat.
    public var room: String?
    /// The message as routed.
    public var stanza: String
    /// Attachment metadata (URLs, names, sizes) found in the message.
    public var attachments: [String]

    public init(
        id: Int64 = 0, time: Double, sender: String, recipients: [String], type: String, room: String? = nil, stanza: String,
        attachments: [String] = []
    ) {
        self.id = id
        self.time = time
        self.sender = sender
        self.recipients = recipients
        self.type = type
        self.room = room
        self.stanza = stanza
        self.attachments = attachments
    }
}

/// What an approved request lets an auditor see: named users and rooms, within a time range.
public struct AuditScope: Sendable, Hashable, Codable {
    public var users: [String]
    public var rooms: [String]
    public var start: Double
    public var end: Double

    public init(users: [String], rooms: [String], start: Double, end: Double) {
        self.users = users
        self.rooms = rooms
        self.start = start
        self.end = end
    }
}

public protocol AuditArchiveStore: Sendable {
    func appendAudit(_ records: [AuditRecord]) async throws
    /// Records within the scope (a participant named in it, or a room named in it, and in the
    /// time range), oldest first, at most `limit` after `afterID`.
    func auditRecords(in scope: AuditScope, afterID: Int64, limit: Int) async throws -> [AuditRecord]
    /// Deletes records older than `before` (optionally only those whose participants are all in
    /// `users`); returns how many went.
    func purgeAudit(before: Double, users: [String]?) async throws -> Int
    func auditCount() async throws -> Int
}

/// An auditor's request to read archived messages, and its decision.
public struct AccessRequest: Sendable, Hashable, Codable {
    public enum Status: String, Sendable, Codable { case pending, approved, rejected, expired }
    public var id: Int64
    public var auditor: String
    public var scope: AuditScope
    public var reason: String
    public var status: Status
    public var createdAt: Double
    public var approver: String?
    public var decidedAt: Double?
    /// Approved requests end here.
    public var expiresAt: Double?
    public var decisionNote: String?

    public init(
        id: Int64 = 0, auditor: String, scope: AuditScope, reason: String, status: Status = .pending, createdAt: Double,
        approver: String? = nil, decidedAt: Double? = nil, expiresAt: Double? = nil, decisionNote: String? = nil
    ) {
        self.id = id
        self.auditor = auditor
        self.scope = scope
        self.reason = reason
        self.status = status
        self.createdAt = createdAt
        self.approver = approver
        self.decidedAt = decidedAt
        self.expiresAt = expiresAt
        self.decisionNote = decisionNote
    }
}

public protocol AccessRequestStore: Sendable {
    func createAccessRequest(_ request: AccessRequest) async throws -> Int64
    func accessRequest(_ id: Int64) async throws -> AccessRequest?
    func accessRequests(status: AccessRequest.Status?, limit: Int) async throws -> [AccessRequest]
    /// Stores the decision only if the request is still pending (returns false otherwise).
    func decideAccessRequest(_ request: AccessRequest) async throws -> Bool
}
