import Foundation

/// One archived message in one user's archive (XEP-0313). A 1:1 message is archived twice:
/// outgoing in the sender's archive, incoming in the recipient's.
public struct ArchiveRecord: Sendable, Hashable {
    /// Position: unique per server and increasing with time; orders the archive, never shown.
    public var id: Int64
    /// The archive id clients see (MAM result id, XEP-0359 stanza-id): a position or time and
    /// 64 random bits (`ArchiveUID`), so it cannot be guessed. When it is `ArchiveUID(position:
    /// id, …)` the store keeps only its random half and needs no index to find it.
    public var uid: String
    /// Bare JID whose archive this is.
    public var owner: String
    /// Bare JID of the other party.
    public var peer: String
    public var outgoing: Bool
    public var time: Double
    /// The message as routed, serialised with its namespace.
    public var stanza: String

    public init(id: Int64, uid: String, owner: String, peer: String, outgoing: Bool, time: Double, stanza: String) {
        self.id = id
        self.uid = uid
        self.owner = owner
        self.peer = peer
        self.outgoing = outgoing
        self.time = time
        self.stanza = stanza
    }
}

/// Filters and paging of an archive query (XEP-0313 form + XEP-0059 RSM).
public struct ArchiveQuery: Sendable, Hashable {
    public var owner: String
    /// Bare JID of the peer, or nil for all.
    public var with: String?
    public var start: Double?
    public var end: Double?
    /// Records strictly after the record with this uid (forward paging).
    public var after: String?
    /// Records strictly before the record with this uid (backward paging).
    public var before: String?
    /// Page from the end of the result set (RSM `<before/>` without an id).
    public var fromEnd: Bool
    public var limit: Int

    public init(
        owner: String, with: String? = nil, start: Double? = nil, end: Double? = nil, after: String? = nil,
        before: String? = nil, fromEnd: Bool = false, limit: Int = 50
    ) {
        self.owner = owner
        self.with = with
        self.start = start
        self.end = end
        self.after = after
        self.before = before
        self.fromEnd = fromEnd
        self.limit = limit
    }
}

/// The archive ids clients see: 22 characters of base 62, a position (or a time) in
/// microseconds, 11 characters in an alphabet sorted like ASCII so that the ids sort by it, then
/// 64 random bits, 11 characters, so that an id cannot be guessed.
///
/// An archive copy's id is made from the copy's own position (`ArchiveRecord.id`): the store
/// then keeps only the random half as an integer and finds the copy by its primary key, where a
/// stored text id needs an index of its own (a b-tree insert per copy, two per message). Ids of
/// any other form (older versions' random ids, an id made before its position) are kept as text.
public struct ArchiveUID: Sendable, Hashable {
    public var position: Int64
    public var random: UInt64

    public init(position: Int64, random: UInt64) {
        self.position = position
        self.random = random
    }

    /// The id `text` is, when it is exactly what `text` of some position and random half gives
    /// (so that keeping the two numbers keeps the id); nil for any other string.
    public init?(_ text: String) {
        var text = text
        guard let parsed = text.withUTF8({ Self.parse($0) }) else { return nil }
        self = parsed
    }

    private static func parse(_ bytes: UnsafeBufferPointer<UInt8>) -> ArchiveUID? {
        guard bytes.count == 22, let position = number(bytes[0..<11]), position <= UInt64(Int64.max),
            let random = number(bytes[11..<22])
        else { return nil }
        return ArchiveUID(position: Int64(position), random: random)
    }

    /// The value of 11 base-62 digits; nil past 2^64 (11 digits reach further: not what `text` writes).
    private static func number(_ digits: Slice<UnsafeBufferPointer<UInt8>>) -> UInt64? {
        var value: UInt64 = 0
        for byte in digits {
            guard let digit = digit(byte) else { return nil }
            let (times, overflow) = value.multipliedReportingOverflow(by: 62)
            let (sum, carry) = times.addingReportingOverflow(UInt64(digit))
            guard !overflow, !carry else { return nil }
            value = sum
        }
        return value
    }

    private static func digit(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): byte - UInt8(ascii: "0")
        case UInt8(ascii: "A")...UInt8(ascii: "Z"): byte - UInt8(ascii: "A") + 10
        case UInt8(ascii: "a")...UInt8(ascii: "z"): byte - UInt8(ascii: "a") + 36
        default: nil
        }
    }

    private static let alphabet = Array("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz".utf8)

    /// The 22 characters (written in place: one allocation, the string's).
    public var text: String {
        var position = UInt64(max(0, self.position))
        var random = self.random
        return String(unsafeUninitializedCapacity: 22) { characters in
            for index in stride(from: 10, through: 0, by: -1) {
                characters[index] = Self.alphabet[Int(position % 62)]
                position /= 62
            }
            for index in stride(from: 21, through: 11, by: -1) {
                characters[index] = Self.alphabet[Int(random % 62)]
                random /= 62
            }
            return 22
        }
    }
}

/// A page of results in chronological order; `complete` when nothing lies beyond it in the
/// paging direction.
public struct ArchivePage: Sendable, Hashable {
    public var records: [ArchiveRecord]
    public var complete: Bool

    public init(records: [ArchiveRecord], complete: Bool) {
        self.records = records
        self.complete = complete
    }
}

extension ArchiveStore {
    /// Durably appends the records in one transaction.
    public func append(_ records: [ArchiveRecord]) async throws {
        try await append(records, audit: [])
    }
}

/// Message archives.
public protocol ArchiveStore: Sendable {
    /// Durably appends archive copies and audit records in one transaction, idempotently: a
    /// record whose position is already stored is skipped (the message journal may apply an
    /// entry again after a crash). An archive copy whose text is the very value (the same
    /// storage, byte for byte) of an audit record stored by the same call may share that
    /// record's stored text (the store keeps it while either needs it).
    func append(_ records: [ArchiveRecord], audit: [AuditRecord]) async throws
    /// - Returns: nil when `after` or `before` names no record of the owner's archive.
    func query(_ query: ArchiveQuery) async throws -> ArchivePage?
    func archiveCount(owner: String) async throws -> Int
    /// The record with this archive id in the owner's archive (e.g. the message a retraction names).
    func record(owner: String, uid: String) async throws -> ArchiveRecord?
    /// Replaces the stored stanza of a record (e.g. by a XEP-0424/0425 tombstone); false if none.
    func replaceStanza(owner: String, uid: String, stanza: String) async throws -> Bool
    /// The highest position stored (archive copies and audit records), 0 when none.
    func lastPosition() async throws -> Int64
}

extension String {
    /// Where this text's bytes are stored, for texts that have storage of their own (longer than
    /// a small string's 15 bytes, native): values copied from one another share it. A lookup key
    /// only (confirm a match with `hasSameBytes`); nil when the text has none to compare.
    public var storageIdentity: UInt? {
        guard utf8.count > 15 else { return nil }
        return utf8.withContiguousStorageIfAvailable { UInt(bitPattern: $0.baseAddress) } ?? nil
    }

    /// Whether two texts are the same bytes (`==` also matches canonically equivalent texts, and
    /// `utf8.elementsEqual` walks them a byte at a time): counts, then one `memcmp`; texts that
    /// share storage compare without reading it.
    public func hasSameBytes(as other: String) -> Bool {
        guard utf8.count == other.utf8.count else { return false }
        var left = self
        var right = other
        return left.withUTF8 { a in
            right.withUTF8 { b in
                guard let first = a.baseAddress, let second = b.baseAddress else { return a.count == b.count }
                return first == second || memcmp(first, second, a.count) == 0
            }
        }
    }
}
