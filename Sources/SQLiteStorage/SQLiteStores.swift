import Foundation
import Storage
import XMPPCore

/// All stores on one SQLite database file.
public final class SQLiteStores: Sendable {
    public let database: SQLiteDatabase
    /// A second connection for the message archive and the audit record, on a thread of its own
    /// at a lower CPU priority: its bulk inserts, fsyncs and WAL checkpoints never make a login,
    /// roster read or offline store wait, and yield the core to the event loops.
    let archiveDatabase: SQLiteDatabase
    /// Seals message bodies (archive, offline messages, audit record) when set.
    public let cipher: (any FieldCipher)?

    /// Opens `directory/switchboard.sqlite`, creating the directory (mode 0700) if needed.
    public init(directory: String) throws {
        try FileManager.default.createDirectory(
            atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700]
        )
        database = try SQLiteDatabase(path: directory + "/switchboard.sqlite")
        archiveDatabase = try SQLiteDatabase(path: directory + "/switchboard.sqlite", background: true)
        cipher = nil
    }

    private init(database: SQLiteDatabase, archiveDatabase: SQLiteDatabase, cipher: (any FieldCipher)?) {
        self.database = database
        self.archiveDatabase = archiveDatabase
        self.cipher = cipher
    }

    /// The same database, with message bodies sealed by `cipher` from now on (rows written
    /// before stay readable).
    public func encrypted(with cipher: any FieldCipher) -> SQLiteStores {
        SQLiteStores(database: database, archiveDatabase: archiveDatabase, cipher: cipher)
    }

    public var stores: Stores {
        var stores = Stores(
            accounts: self, rosters: self, offline: self, privateXML: self, blocklists: self, archive: self, uploads: self,
            pubsub: self, directory: self, muc: self, audit: self, accessRequests: self, trail: self, certificates: self)
        stores.cipher = cipher
        return stores
    }

    /// A value to store: sealed when a cipher is set, UTF-8 text otherwise.
    func sealed(_ text: String, context: String) throws -> SQLValue {
        guard let cipher else { return .text(text) }
        return .blob(try cipher.seal(text: text, context: context))
    }

    /// Reads a value written by `sealed` (or before encryption was on).
    func opened(_ bytes: [UInt8], context: String) throws -> String {
        guard let cipher, cipher.isSealed(bytes) else { return String(decoding: bytes, as: UTF8.self) }
        return String(decoding: try cipher.open(bytes, context: context), as: UTF8.self)
    }
}

private let encoder = JSONEncoder()
private let decoder = JSONDecoder()

func encode<T: Encodable>(_ value: T) throws -> [UInt8] { Array(try encoder.encode(value)) }
func decode<T: Decodable>(_ type: T.Type, _ bytes: [UInt8]) throws -> T {
    do {
        return try decoder.decode(type, from: Data(bytes))
    } catch {
        throw StorageError.corrupt("undecodable \(T.self) record: \(error)")
    }
}

extension SQLiteStores: AccountStore {
    public func account(_ username: String) async throws -> Account? {
        try await database.run { db in
            try db.query("SELECT username, credentials, disabled, created_at FROM accounts WHERE username = ?", [.text(username)]) {
                Account(
                    username: $0.text(0) ?? username,
                    credentials: try Self.credentials($0.blob(1)),
                    disabled: $0.int(2) != 0,
                    createdAt: $0.double(3)
                )
            }.first
        }
    }

    /// An empty blob is an account without local credentials (authenticated elsewhere, e.g. LDAP).
    static func credentials(_ blob: [UInt8]) throws -> StoredCredentials? {
        blob.isEmpty ? nil : try decode(StoredCredentials.self, blob)
    }

    public func createAccount(_ account: Account) async throws {
        let blob = try account.credentials.map(encode) ?? []
        try await database.run { db in
            do {
                try db.run(
                    "INSERT INTO accounts (username, credentials, disabled, created_at) VALUES (?, ?, ?, ?)",
                    [.text(account.username), .blob(blob), .int(account.disabled ? 1 : 0), .double(account.createdAt)]
                )
            } catch let error as StorageError where error.isConflict {
                throw StorageError.conflict("account \(account.username) already exists")
            }
        }
    }

    public func setCredentials(_ username: String, _ credentials: StoredCredentials) async throws -> Bool {
        let blob = try encode(credentials)
        return try await database.run { db in
            try db.run("UPDATE accounts SET credentials = ? WHERE username = ?", [.blob(blob), .text(username)]) > 0
        }
    }

    public func deleteAccount(_ username: String) async throws -> Bool {
        try await database.transaction { db in try Self.deleteAccount(username, db) }
    }

    /// Deletes an account and everything stored for it, inside the caller's transaction.
    static func deleteAccount(_ username: String, _ db: Connection) throws -> Bool {
        try removeFromDirectory(username, db)
        let removed = try db.run("DELETE FROM accounts WHERE username = ?", [.text(username)]) > 0
        // Copies of this user's messages the running server has not stored yet are dropped when
        // they arrive (`append`); a later account of the same name starts afresh.
        try db.run(
            "INSERT INTO deleted_accounts (username, deleted_at) VALUES (?, ?) ON CONFLICT (username) DO UPDATE SET deleted_at = excluded.deleted_at",
            [.text(username), .double(Date().timeIntervalSince1970)])
        // Everything else is keyed by bare JID "username@domain": match that exact prefix
        // (not LIKE, whose `_` and `%` wildcards could hit other users).
        let prefix = SQLValue.text(username + "@")
        for table in ["roster_items", "roster_versions", "offline_messages", "private_xml", "blocklist"] {
            try db.run("DELETE FROM \(table) WHERE substr(user, 1, length(?1)) = ?1", [prefix])
        }
        // Rooms keep their archives in the same table under the room's JID: a room named like
        // the user ("sales@conference…") is not the user's.
        let owners = try db.query(
            "SELECT id FROM jid_keys WHERE substr(jid, 1, length(?1)) = ?1 AND jid NOT IN (SELECT jid FROM muc_rooms)", [prefix]
        ) { $0.int(0) }
        for owner in owners { try ArchiveRuns.deleteArchive(owner: owner, in: db) }
        try db.run("DELETE FROM pep_items WHERE substr(owner, 1, length(?1)) = ?1", [prefix])
        try db.run("DELETE FROM pep_nodes WHERE substr(owner, 1, length(?1)) = ?1", [prefix])
        return removed
    }

    public func listAccounts() async throws -> [String] {
        try await database.run { db in
            try db.query("SELECT username FROM accounts ORDER BY username") { $0.text(0) ?? "" }
        }
    }

    public func accountCount() async throws -> Int {
        try await database.run { db in
            Int(try db.query("SELECT count(*) FROM accounts") { $0.int(0) }.first ?? 0)
        }
    }
}

extension SQLiteStores: RosterStore {
    public func roster(of user: String) async throws -> Roster {
        try await database.run { db in
            let version = try db.query("SELECT version FROM roster_versions WHERE user = ?", [.text(user)]) { $0.int(0) }.first ?? 0
            let items = try db.query("SELECT item FROM roster_items WHERE user = ? ORDER BY contact", [.text(user)]) {
                try decode(RosterItem.self, $0.blob(0))
            }
            return Roster(version: version, items: items)
        }
    }

    public func item(of user: String, contact: String) async throws -> RosterItem? {
        try await database.run { db in
            try db.query("SELECT item FROM roster_items WHERE user = ? AND contact = ?", [.text(user), .text(contact)]) {
                try decode(RosterItem.self, $0.blob(0))
            }.first
        }
    }

    public func put(_ item: RosterItem, of user: String) async throws -> Int64 {
        let blob = try encode(item)
        return try await database.transaction { db in
            try db.run(
                "INSERT INTO roster_items (user, contact, item) VALUES (?, ?, ?) ON CONFLICT (user, contact) DO UPDATE SET item = excluded.item",
                [.text(user), .text(item.jid), .blob(blob)]
            )
            return try Self.bumpVersion(db, user)
        }
    }

    public func remove(_ contact: String, of user: String) async throws -> Int64 {
        try await database.transaction { db in
            if try db.run("DELETE FROM roster_items WHERE user = ? AND contact = ?", [.text(user), .text(contact)]) > 0 {
                return try Self.bumpVersion(db, user)
            }
            return try db.query("SELECT version FROM roster_versions WHERE user = ?", [.text(user)]) { $0.int(0) }.first ?? 0
        }
    }

    private static func bumpVersion(_ db: Connection, _ user: String) throws -> Int64 {
        try db.run(
            "INSERT INTO roster_versions (user, version) VALUES (?, 1) ON CONFLICT (user) DO UPDATE SET version = version + 1",
            [.text(user)]
        )
        return try db.query("SELECT version FROM roster_versions WHERE user = ?", [.text(user)]) { $0.int(0) }.first ?? 1
    }
}

extension SQLiteStores: OfflineStore {
    public func store(_ stanza: String, for user: String, at time: Double) async throws {
        try await database.run { db in
            try db.run(
                "INSERT INTO offline_messages (user, stanza, created_at) VALUES (?, ?, ?)",
                [.text(user), try self.sealed(stanza, context: "offline"), .double(time)])
        }
    }

    public func messages(for user: String) async throws -> [OfflineMessage] {
        try await database.run { db in
            try db.query("SELECT id, stanza, created_at FROM offline_messages WHERE user = ? ORDER BY id", [.text(user)]) {
                OfflineMessage(id: $0.int(0), stanza: try self.opened($0.blob(1), context: "offline"), time: $0.double(2))
            }
        }
    }

    public func remove(ids: [Int64], for user: String) async throws {
        guard !ids.isEmpty else { return }
        try await database.transaction { db in
            for id in ids {
                try db.run("DELETE FROM offline_messages WHERE id = ? AND user = ?", [.int(id), .text(user)])
            }
        }
    }

    public func count(for user: String) async throws -> Int {
        try await database.run { db in
            Int(try db.query("SELECT count(*) FROM offline_messages WHERE user = ?", [.text(user)]) { $0.int(0) }.first ?? 0)
        }
    }
}

extension SQLiteStores: PrivateXMLStore {
    public func document(of user: String, key: String) async throws -> String? {
        try await database.run { db in
            try db.query("SELECT xml FROM private_xml WHERE user = ? AND key = ?", [.text(user), .text(key)]) { $0.text(0) }.first ?? nil
        }
    }

    public func documents(key: String) async throws -> [(user: String, xml: String)] {
        try await database.run { db in
            try db.query("SELECT user, xml FROM private_xml WHERE key = ?", [.text(key)]) { ($0.text(0) ?? "", $0.text(1) ?? "") }
        }
    }

    public func setDocument(_ xml: String?, of user: String, key: String) async throws {
        try await database.run { db in
            if let xml {
                try db.run(
                    "INSERT INTO private_xml (user, key, xml) VALUES (?, ?, ?) ON CONFLICT (user, key) DO UPDATE SET xml = excluded.xml",
                    [.text(user), .text(key), .text(xml)]
                )
            } else {
                try db.run("DELETE FROM private_xml WHERE user = ? AND key = ?", [.text(user), .text(key)])
            }
        }
    }
}

extension SQLiteStores: BlocklistStore {
    public func blocklist(of user: String) async throws -> [String] {
        try await database.run { db in
            try db.query("SELECT jid FROM blocklist WHERE user = ? ORDER BY jid", [.text(user)]) { $0.text(0) ?? "" }
        }
    }

    public func allBlocklists() async throws -> [String: [String]] {
        try await database.run { db in
            var lists: [String: [String]] = [:]
            for (user, jid) in try db.query("SELECT user, jid FROM blocklist ORDER BY user, jid", [], { ($0.text(0) ?? "", $0.text(1) ?? "") }) {
                lists[user, default: []].append(jid)
            }
            return lists
        }
    }

    public func block(_ jids: [String], for user: String) async throws {
        try await database.transaction { db in
            for jid in jids {
                try db.run("INSERT OR IGNORE INTO blocklist (user, jid) VALUES (?, ?)", [.text(user), .text(jid)])
            }
        }
    }

    public func unblock(_ jids: [String]?, for user: String) async throws {
        try await database.transaction { db in
            guard let jids else {
                try db.run("DELETE FROM blocklist WHERE user = ?", [.text(user)])
                return
            }
            for jid in jids {
                try db.run("DELETE FROM blocklist WHERE user = ? AND jid = ?", [.text(user), .text(jid)])
            }
        }
    }
}

extension SQLiteStores: ArchiveStore {
    /// Idempotent: a record whose position is already stored is skipped (the message journal
    /// may apply an entry again after a crash). An archive copy whose text is that of an audit
    /// record this call inserts stores no text of its own: `content` names the audit record
    /// (one seal and one copy of the bytes per message instead of three).
    public func append(_ records: [ArchiveRecord], audit: [AuditRecord]) async throws {
        guard !records.isEmpty || !audit.isEmpty else { return }
        // Seal the audit records outside the database queue; archive copies are sealed on it
        // (only those that turn out to need their own text).
        // (Lists read in place throughout: a copy of a record retains and releases its texts.)
        let auditRows = try audit.withUnsafeBufferPointer { audit in
            try audit.indices.map { try sealedAuditRow(stanza: audit[$0].stanza, attachments: audit[$0].attachments) }
        }
        // A message's copies and its audit record are made from one text value (the router's
        // serialisation, a room's message serialised once, a journal frame's text read once):
        // found by that value's storage, then confirmed byte for byte. (A table keyed by the
        // texts themselves hashed every text: more than binding the rows cost.) Equal texts
        // made apart are simply stored apart.
        var byStorage: [UInt: Int] = [:]
        if !records.isEmpty {
            byStorage.reserveCapacity(audit.count)
            audit.withUnsafeBufferPointer { audit in
                for index in audit.indices where audit[index].id != 0 {
                    if let identity = audit[index].stanza.storageIdentity { byStorage[identity] = index }
                }
            }
        }
        let sharable = byStorage
        // Rows go in owner by owner (user by user for the audit participants): in arrival order a
        // batch's rows hop between a thousand owners' index pages, each out of the CPU's caches
        // again by the time its owner's next row comes; grouped, the page searched for one row is
        // the page the next row goes to. (Grouped, not sorted: no string comparisons; grouped by
        // the owners' JID keys, so each owner's text is hashed once, for its key.)
        try await archiveDatabase.transaction { db in
            try records.withUnsafeBufferPointer { records in
                try audit.withUnsafeBufferPointer { audit in
                    try self.insert(records, audit: audit, auditRows: auditRows, sharable: sharable, in: db)
                }
            }
        }
    }

    /// The body of `append`'s transaction.
    private func insert(
        _ records: UnsafeBufferPointer<ArchiveRecord>, audit: UnsafeBufferPointer<AuditRecord>, auditRows: [SealedAuditRow],
        sharable: [UInt: Int], in db: Connection
    ) throws {
        // Accounts deleted (a CLI may delete while the server's journal still holds copies):
        // a copy owned by one, older than the deletion, is not stored. Rooms are not accounts.
        let deleted = records.isEmpty ? [:] : Dictionary(
            try db.query("SELECT username, deleted_at FROM deleted_accounts") { ($0.text(0) ?? "", $0.double(1)) },
            uniquingKeysWith: max)
        let rooms = deleted.isEmpty ? [] : Set(try db.query("SELECT jid FROM muc_rooms") { $0.text(0) ?? "" })
        func dropped(_ index: Int) -> Bool {
            guard !deleted.isEmpty else { return false }
            let owner = records[index].owner
            guard let at = owner.firstIndex(of: "@"), let gone = deleted[String(owner[..<at])] else { return false }
            return records[index].time <= gone && !rooms.contains(owner)
        }
        // A dropped copy's owner gets no key (-1: never used).
        let owners = try records.indices.map { try dropped($0) ? -1 : db.jidKey(records[$0].owner) }
        let copies = Self.groupedOrder(owners.count, by: { owners[$0] })
        var inserted = [Bool](repeating: false, count: audit.count)
        // The copies that can share a record's text, each record's as a list through `nextCopy`
        // from `firstCopy` (no array per record). Confirmed byte for byte (String's == also
        // matches canonically equivalent texts). A copy shares only a record this transaction
        // inserts: a position already taken could be another message's (an entry applied again
        // finds its own copy stored anyway).
        var shareOf = [Int](repeating: -1, count: records.count)
        var firstCopy = [Int](repeating: -1, count: sharable.isEmpty ? 0 : audit.count)
        var nextCopy = [Int](repeating: -1, count: sharable.isEmpty ? 0 : records.count)
        if !sharable.isEmpty {
            for index in records.indices where owners[index] >= 0 {
                guard let identity = records[index].stanza.storageIdentity, let share = sharable[identity],
                    audit[share].stanza.hasSameBytes(as: records[index].stanza)
                else { continue }
                shareOf[index] = share
                nextCopy[index] = firstCopy[share]
                firstCopy[share] = index
            }
        }
        var list: [UInt8] = []
        // Statements prepared once per batch, parameters bound one by one.
        let insertRecord = try db.prepare(
            "INSERT OR IGNORE INTO audit_records (id, created_at, sender, recipients, type, room, stanza, attachments, copies) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")
        // Participants and copies go in several rows per statement (`rowsPerInsert`): a
        // statement's own work (starting, halting, resetting it) is then paid once per group.
        let insertParticipant = try db.prepare("INSERT OR IGNORE INTO audit_participants (user, created_at, message) VALUES (?, ?, ?)")
        let insertParticipants = try db.prepare(
            "INSERT OR IGNORE INTO audit_participants (user, created_at, message) VALUES " + Self.rowsOfParameters(3, count: Self.rowsPerInsert))
        // Keyed as they are found, so the grouping below hashes integers, not texts.
        var participants: [(user: Int64, time: Double, id: Int64)] = []
        participants.reserveCapacity(auditRows.count * 2)
        for index in audit.indices {
            try Self.bindAuditRow(audit[index], auditRows[index], to: insertRecord)
            if firstCopy.isEmpty || firstCopy[index] < 0 {
                try insertRecord.bind(9, .null)
            } else {
                list.removeAll(keepingCapacity: true)
                let copies = sequence(first: firstCopy[index]) { nextCopy[$0] >= 0 ? nextCopy[$0] : nil }
                ArchiveSharing.encode(copies.lazy.map { records[$0].id }, record: audit[index].id, into: &list)
                try insertRecord.bind(9, list)
            }
            guard try insertRecord.execute() > 0 else { continue }
            inserted[index] = true
            let id = db.lastInsertRowID
            let time = audit[index].time
            try Self.forEachParticipant(sender: audit[index].sender, recipients: audit[index].recipients, room: audit[index].room) { user in
                participants.append((try db.jidKey(user), time, id))
            }
        }
        let participantOrder = Self.groupedOrder(participants.count, by: { participants[$0].user })
        var next = 0
        while next < participantOrder.count {
            let group = participantOrder.count - next >= Self.rowsPerInsert ? Self.rowsPerInsert : 1
            let statement = group == 1 ? insertParticipant : insertParticipants
            for row in 0..<group {
                let participant = participants[participantOrder[next + row]]
                let base = Int32(row * 3)
                try statement.bind(base + 1, participant.user)
                try statement.bind(base + 2, participant.time)
                try statement.bind(base + 3, participant.id)
            }
            try statement.execute()
            next += group
        }
        // A copy at a position past every stored one, with an id made from it, and not
        // twice in this batch, cannot be there already: such copies go in several rows per
        // statement. The others (an apply again after a crash, a straggler from another
        // event loop) go one by one, and RETURNING says whether each was stored.
        let copyColumns = "INSERT OR IGNORE INTO archive (id, uid, owner, peer, outgoing, created_at, stanza, content, uid_random) VALUES "
        let insertCopy = try db.prepare(copyColumns + Self.rowsOfParameters(9, count: 1) + " RETURNING id")
        let insertCopies = try db.prepare(copyColumns + Self.rowsOfParameters(9, count: Self.rowsPerInsert))
        let lastStored = try db.query("SELECT max(id) FROM archive") { $0.isNull(0) ? Int64.min : $0.int(0) }.first ?? Int64.min
        // Copies this transaction stored, for the runs.
        var stored: [(owner: Int64, entry: ArchiveRuns.Entry)] = []
        stored.reserveCapacity(records.count)
        // Consecutive copies of one owner mostly share their peer: its key is looked up once.
        var lastPeer: (jid: String, key: Int64)?
        var fresh: [(index: Int, uid: ArchiveUID)] = []
        fresh.reserveCapacity(Self.rowsPerInsert)
        var seen = Set<Int64>(minimumCapacity: records.count)
        func bindCopy(_ index: Int, row: Int, to statement: Statement, uid: ArchiveUID?) throws {
            let base = Int32(row * 9)
            try statement.bind(base + 1, records[index].id)
            // An id made from this position is kept as its random half (no id index entry).
            if let uid {
                try statement.bind(base + 2, .null)
                try statement.bind(base + 9, Int64(bitPattern: uid.random))
            } else {
                try statement.bind(base + 2, records[index].uid)
                try statement.bind(base + 9, .null)
            }
            let peer: Int64
            if let lastPeer, lastPeer.jid == records[index].peer {
                peer = lastPeer.key
            } else {
                peer = try db.jidKey(records[index].peer)
                lastPeer = (records[index].peer, peer)
            }
            try statement.bind(base + 3, owners[index])
            try statement.bind(base + 4, peer)
            try statement.bind(base + 5, Int64(records[index].outgoing ? 1 : 0))
            try statement.bind(base + 6, records[index].time)
            if shareOf[index] >= 0, inserted[shareOf[index]] {
                try statement.bind(base + 7, [UInt8]())
                try statement.bind(base + 8, audit[shareOf[index]].id)
            } else {
                try statement.bind(base + 7, try self.sealed(records[index].stanza, context: "archive"))
                try statement.bind(base + 8, .null)
            }
        }
        func note(_ index: Int) {
            stored.append((owners[index], ArchiveRuns.Entry(position: records[index].id, time: records[index].time)))
        }
        func insertFresh() throws {
            for (row, copy) in fresh.enumerated() { try bindCopy(copy.index, row: row, to: insertCopies, uid: copy.uid) }
            guard try insertCopies.execute() == fresh.count else {
                throw StorageError.backend("archive copies at new positions were not all stored")
            }
            for copy in fresh { note(copy.index) }
            fresh.removeAll(keepingCapacity: true)
        }
        func insertOne(_ index: Int, uid: ArchiveUID?) throws {
            try bindCopy(index, row: 0, to: insertCopy, uid: uid)
            var wasStored = false
            try insertCopy.execute { _ in wasStored = true }
            if wasStored { note(index) }
        }
        // What waits for a group, one by one (the last few, or before a copy that may
        // hold one of their positions).
        func insertWaitingOneByOne() throws {
            for copy in fresh { try insertOne(copy.index, uid: copy.uid) }
            fresh.removeAll(keepingCapacity: true)
        }
        for index in copies where owners[index] >= 0 {
            let id = records[index].id
            let uid = ArchiveUID(records[index].uid).flatMap { $0.position == id ? $0 : nil }
            // Every position is noted, whichever way it goes in.
            let firstTime = seen.insert(id).inserted
            if let uid, id > lastStored, firstTime {
                fresh.append((index, uid))
                if fresh.count == Self.rowsPerInsert { try insertFresh() }
                continue
            }
            // A position seen before in this batch may be waiting in `fresh`: that copy
            // goes in first, as it came first.
            if !firstTime { try insertWaitingOneByOne() }
            try insertOne(index, uid: uid)
        }
        try insertWaitingOneByOne()
        try ArchiveRuns.index(stored, in: db)
    }

    /// Rows per multi-row `INSERT` in the apply (the rest of a batch goes one by one).
    static let rowsPerInsert = 8

    /// `(?, ?, ?), (?, ?, ?)` for `count` rows of `columns` parameters each.
    static func rowsOfParameters(_ columns: Int, count: Int) -> String {
        let row = "(" + repeatElement("?", count: columns).joined(separator: ", ") + ")"
        return repeatElement(row, count: count).joined(separator: ", ")
    }

    /// Positions 0..<count ordered so that equal keys are together, in first-seen order of the
    /// keys and in position order within a key (a counting sort over the keys' first sightings).
    static func groupedOrder<Key: Hashable>(_ count: Int, by key: (Int) -> Key) -> [Int] {
        var groups: [Key: Int] = [:]
        var groupOf = [Int](repeating: 0, count: count)
        var sizes: [Int] = []
        for position in 0..<count {
            let group: Int
            if let known = groups[key(position)] {
                group = known
            } else {
                group = sizes.count
                groups[key(position)] = group
                sizes.append(0)
            }
            groupOf[position] = group
            sizes[group] += 1
        }
        var start = 0
        for group in sizes.indices {
            let size = sizes[group]
            sizes[group] = start
            start += size
        }
        var order = [Int](repeating: 0, count: count)
        for position in 0..<count {
            order[sizes[groupOf[position]]] = position
            sizes[groupOf[position]] += 1
        }
        return order
    }

    /// The archive columns (owner and peer as JIDs), and the shared text of an audit record
    /// when the copy has none.
    private static let archiveColumns = """
        a.id, a.uid, (SELECT jid FROM jid_keys WHERE id = a.owner), (SELECT jid FROM jid_keys WHERE id = a.peer), \
        a.outgoing, a.created_at, a.stanza, a.content, m.stanza, a.uid_random FROM archive a LEFT JOIN audit_records m ON m.id = a.content
        """

    /// An SQL expression for the key of the JID bound to its parameter (NULL, matching nothing,
    /// for a JID that has none: nothing was ever stored under it).
    static let jidKeyOf = "(SELECT id FROM jid_keys WHERE jid = ?)"

    private func archiveRecord(_ row: Statement) throws -> ArchiveRecord {
        if !row.isNull(7), row.isNull(8) {
            // Not expected: a purge gives sharing copies their own text before the record goes.
            storageLogger.error("archive copy names an audit record that is gone", metadata: ["archive.id": "\(row.int(0))", "audit.id": "\(row.int(7))"])
        }
        let stanza = row.isNull(7) ? try opened(row.blob(6), context: "archive") : try opened(row.blob(8), context: "audit")
        return ArchiveRecord(
            id: row.int(0), uid: row.text(1) ?? Self.uid(position: row.int(0), random: row.isNull(9) ? nil : row.int(9)),
            owner: row.text(2) ?? "", peer: row.text(3) ?? "",
            outgoing: row.int(4) != 0, time: row.double(5), stanza: stanza)
    }

    /// The id of a copy stored without a text id: made from its position and random half
    /// (rows from before schema 13 always have a text id; the position alone is the last resort).
    private static func uid(position: Int64, random: Int64?) -> String {
        guard let random else { return String(position) }
        return ArchiveUID(position: position, random: UInt64(bitPattern: random)).text
    }

    /// The position of the owner's copy with archive id `uid`: by the primary key when the id is
    /// one made from a position (confirmed by its random half), else by the text ids' index.
    private static func position(of uid: String, owner: String, in db: Connection) throws -> Int64? {
        func first(_ sql: String, _ values: [SQLValue]) throws -> Int64? {
            try db.query(sql, values) { $0.int(0) }.first
        }
        if let made = ArchiveUID(uid),
            let id = try first(
                "SELECT id FROM archive WHERE id = ? AND owner = \(jidKeyOf) AND uid_random = ?",
                [.int(made.position), .text(owner), .int(Int64(bitPattern: made.random))])
        {
            return id
        }
        return try first("SELECT id FROM archive WHERE uid = ? AND owner = \(jidKeyOf)", [.text(uid), .text(owner)])
    }

    public func query(_ query: ArchiveQuery) async throws -> ArchivePage? {
        try await archiveDatabase.run { db in
            func position(_ uid: String) throws -> Int64? {
                try Self.position(of: uid, owner: query.owner, in: db)
            }
            var after: Int64?
            var before: Int64?
            if let uid = query.after {
                guard let id = try position(uid) else { return nil }
                after = id
            }
            if let uid = query.before {
                guard let id = try position(uid) else { return nil }
                before = id
            }
            // Nothing was ever stored under a JID without a key.
            guard let owner = try db.existingJidKey(query.owner) else { return ArchivePage(records: [], complete: true) }
            let backwards = query.before != nil || query.fromEnd
            let limit = max(0, query.limit)
            var records: [ArchiveRecord] = []
            if let with = query.with {
                // One peer's copies: the (owner, peer, id) index.
                guard let peer = try db.existingJidKey(with) else { return ArchivePage(records: [], complete: true) }
                var conditions = ["a.owner = ?", "a.peer = ?"]
                var values: [SQLValue] = [.int(owner), .int(peer)]
                if let start = query.start {
                    conditions.append("a.created_at >= ?")
                    values.append(.double(start))
                }
                if let end = query.end {
                    conditions.append("a.created_at <= ?")
                    values.append(.double(end))
                }
                if let after {
                    conditions.append("a.id > ?")
                    values.append(.int(after))
                }
                if let before {
                    conditions.append("a.id < ?")
                    values.append(.int(before))
                }
                values.append(.int(Int64(limit + 1)))
                let sql = "SELECT \(Self.archiveColumns) WHERE "
                    + conditions.joined(separator: " AND ") + " ORDER BY a.id " + (backwards ? "DESC" : "ASC") + " LIMIT ?"
                records = try db.query(sql, values, self.archiveRecord)
            } else {
                // All the owner's copies: its runs.
                let timed = query.start != nil || query.end != nil
                try ArchiveRuns.forEach(
                    owner: owner, after: after, before: before, start: query.start, end: query.end, descending: backwards, in: db
                ) { position in
                    if timed {
                        // The time alone first: copies outside the range are not opened.
                        guard
                            let time = try db.query("SELECT created_at FROM archive WHERE id = ?", [.int(position)], { $0.double(0) }).first,
                            query.start.map({ time >= $0 }) ?? true, query.end.map({ time <= $0 }) ?? true
                        else { return true }
                    }
                    // A listed copy that is gone or not the owner's is skipped (not expected).
                    guard
                        let record = try db.query("SELECT \(Self.archiveColumns) WHERE a.id = ?", [.int(position)], self.archiveRecord).first,
                        record.owner == query.owner
                    else { return true }
                    records.append(record)
                    return records.count <= limit
                }
            }
            let complete = records.count <= limit
            if !complete { records.removeLast() }
            if backwards { records.reverse() }
            return ArchivePage(records: records, complete: complete)
        }
    }

    public func record(owner: String, uid: String) async throws -> ArchiveRecord? {
        try await archiveDatabase.run { db in
            guard let id = try Self.position(of: uid, owner: owner, in: db) else { return nil }
            return try db.query("SELECT \(Self.archiveColumns) WHERE a.id = ?", [.int(id)], self.archiveRecord).first
        }
    }

    /// The copy gets its own text (it no longer shares the audit record's, which stays as it was).
    public func replaceStanza(owner: String, uid: String, stanza: String) async throws -> Bool {
        try await archiveDatabase.run { db in
            guard let id = try Self.position(of: uid, owner: owner, in: db) else { return false }
            return try db.run(
                "UPDATE archive SET stanza = ?, content = NULL WHERE id = ?", [try self.sealed(stanza, context: "archive"), .int(id)]) > 0
        }
    }

    public func lastPosition() async throws -> Int64 {
        try await archiveDatabase.run { db in
            try db.query(
                "SELECT max(coalesce((SELECT max(id) FROM archive), 0), coalesce((SELECT max(id) FROM audit_records), 0))"
            ) { $0.int(0) }.first ?? 0
        }
    }

    public func archiveCount(owner: String) async throws -> Int {
        try await archiveDatabase.run { db in
            guard let key = try db.existingJidKey(owner) else { return 0 }
            return try ArchiveRuns.count(owner: key, in: db)
        }
    }
}

extension SQLiteStores: UploadStore {
    public func recordUpload(_ file: UploadedFile) async throws {
        try await database.run { db in
            try db.run(
                "INSERT INTO uploads (token, owner, filename, size, content_type, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                [.text(file.token), .text(file.owner), .text(file.filename), .int(Int64(file.size)), .text(file.contentType), .double(file.time)])
        }
    }

    public func upload(token: String) async throws -> UploadedFile? {
        try await database.run { db in
            try db.query("SELECT token, owner, filename, size, content_type, created_at FROM uploads WHERE token = ?", [.text(token)]) {
                UploadedFile(
                    token: $0.text(0) ?? "", owner: $0.text(1) ?? "", filename: $0.text(2) ?? "", size: Int($0.int(3)),
                    contentType: $0.text(4) ?? "application/octet-stream", time: $0.double(5))
            }.first
        }
    }

    public func usage(of owner: String) async throws -> Int {
        try await database.run { db in
            Int(try db.query("SELECT coalesce(sum(size), 0) FROM uploads WHERE owner = ?", [.text(owner)]) { $0.int(0) }.first ?? 0)
        }
    }

    public func removeUploads(before time: Double) async throws -> [UploadedFile] {
        try await database.transaction { db in
            let files = try db.query("SELECT token, owner, filename, size, content_type, created_at FROM uploads WHERE created_at < ?", [.double(time)]) {
                UploadedFile(
                    token: $0.text(0) ?? "", owner: $0.text(1) ?? "", filename: $0.text(2) ?? "", size: Int($0.int(3)),
                    contentType: $0.text(4) ?? "application/octet-stream", time: $0.double(5))
            }
            try db.run("DELETE FROM uploads WHERE created_at < ?", [.double(time)])
            return files
        }
    }
}

extension SQLiteStores: PubSubStore {
    private static func node(_ row: Statement) -> PubSubNode {
        PubSubNode(
            owner: row.text(0) ?? "", name: row.text(1) ?? "",
            accessModel: AccessModel(rawValue: row.text(2) ?? "") ?? .presence, maxItems: Int(row.int(3)))
    }

    public func node(owner: String, name: String) async throws -> PubSubNode? {
        try await database.run { db in
            try db.query("SELECT owner, node, access_model, max_items FROM pep_nodes WHERE owner = ? AND node = ?", [.text(owner), .text(name)], Self.node).first
        }
    }

    public func nodes(owners: [String]) async throws -> [PubSubNode] {
        guard !owners.isEmpty else { return [] }
        return try await database.run { db in
            var nodes: [PubSubNode] = []
            for owner in owners {
                nodes += try db.query("SELECT owner, node, access_model, max_items FROM pep_nodes WHERE owner = ?", [.text(owner)], Self.node)
            }
            return nodes
        }
    }

    public func saveNode(_ node: PubSubNode) async throws {
        try await database.run { db in
            try db.run(
                "INSERT INTO pep_nodes (owner, node, access_model, max_items) VALUES (?, ?, ?, ?) ON CONFLICT (owner, node) DO UPDATE SET access_model = excluded.access_model, max_items = excluded.max_items",
                [.text(node.owner), .text(node.name), .text(node.accessModel.rawValue), .int(Int64(node.maxItems))])
        }
    }

    public func publish(_ item: PubSubItem, to node: PubSubNode) async throws {
        try await database.transaction { db in
            try db.run("DELETE FROM pep_items WHERE owner = ? AND node = ? AND item_id = ?", [.text(node.owner), .text(node.name), .text(item.id)])
            try db.run(
                "INSERT INTO pep_items (owner, node, item_id, payload, created_at) VALUES (?, ?, ?, ?, ?)",
                [.text(node.owner), .text(node.name), .text(item.id), .text(item.payload), .double(item.time)])
            try db.run(
                "DELETE FROM pep_items WHERE owner = ?1 AND node = ?2 AND seq NOT IN (SELECT seq FROM pep_items WHERE owner = ?1 AND node = ?2 ORDER BY seq DESC LIMIT ?3)",
                [.text(node.owner), .text(node.name), .int(Int64(max(1, node.maxItems)))])
        }
    }

    public func items(owner: String, node: String, ids: [String], limit: Int?) async throws -> [PubSubItem] {
        try await database.run { db in
            let rows = try db.query(
                "SELECT item_id, payload, created_at FROM pep_items WHERE owner = ? AND node = ? ORDER BY seq DESC",
                [.text(owner), .text(node)]) { PubSubItem(id: $0.text(0) ?? "", payload: $0.text(1) ?? "", time: $0.double(2)) }
            let selected = ids.isEmpty ? rows : rows.filter { ids.contains($0.id) }
            return limit.map { Array(selected.prefix($0)) } ?? selected
        }
    }

    public func retract(owner: String, node: String, id: String) async throws -> Bool {
        try await database.run { db in
            try db.run("DELETE FROM pep_items WHERE owner = ? AND node = ? AND item_id = ?", [.text(owner), .text(node), .text(id)]) > 0
        }
    }

    public func deleteNode(owner: String, name: String) async throws -> Bool {
        try await database.transaction { db in
            try db.run("DELETE FROM pep_items WHERE owner = ? AND node = ?", [.text(owner), .text(name)])
            return try db.run("DELETE FROM pep_nodes WHERE owner = ? AND node = ?", [.text(owner), .text(name)]) > 0
        }
    }
}

extension SQLiteStores: MUCStore {
    public func rooms() async throws -> [MUCRoomRecord] {
        try await database.run { db in
            var rooms = try db.query("SELECT jid, config, subject, subject_by, created_at FROM muc_rooms ORDER BY jid") {
                MUCRoomRecord(
                    jid: $0.text(0) ?? "", config: $0.text(1) ?? "{}", subject: $0.text(2), subjectBy: $0.text(3), createdAt: $0.double(4))
            }
            var affiliations: [String: [String: String]] = [:]
            for (room, jid, affiliation) in try db.query("SELECT room, jid, affiliation FROM muc_affiliations", [], {
                ($0.text(0) ?? "", $0.text(1) ?? "", $0.text(2) ?? "")
            }) {
                affiliations[room, default: [:]][jid] = affiliation
            }
            for index in rooms.indices { rooms[index].affiliations = affiliations[rooms[index].jid] ?? [:] }
            return rooms
        }
    }

    public func saveRoom(_ room: MUCRoomRecord) async throws {
        try await database.transaction { db in
            try db.run(
                "INSERT INTO muc_rooms (jid, config, subject, subject_by, created_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT (jid) DO UPDATE SET config = excluded.config, subject = excluded.subject, subject_by = excluded.subject_by",
                [.text(room.jid), .text(room.config), .optional(room.subject), .optional(room.subjectBy), .double(room.createdAt)])
            try db.run("DELETE FROM muc_affiliations WHERE room = ?", [.text(room.jid)])
            for (jid, affiliation) in room.affiliations.sorted(by: { $0.key < $1.key }) {
                try db.run(
                    "INSERT INTO muc_affiliations (room, jid, affiliation) VALUES (?, ?, ?)", [.text(room.jid), .text(jid), .text(affiliation)])
            }
        }
    }

    public func deleteRoom(_ jid: String) async throws {
        try await database.transaction { db in
            try db.run("DELETE FROM muc_affiliations WHERE room = ?", [.text(jid)])
            try db.run("DELETE FROM muc_rooms WHERE jid = ?", [.text(jid)])
        }
    }
}

extension Connection {
    /// The key of a JID that has one (nil: nothing was ever stored under it); makes none.
    func existingJidKey(_ jid: String) throws -> Int64? {
        if let key = jidKeys[jid] { return key }
        return try query("SELECT id FROM jid_keys WHERE jid = ?", [.text(jid)], { $0.int(0) }).first
    }

    /// The key of `jid` in `jid_keys`, made when it has none (inside the caller's transaction).
    func jidKey(_ jid: String) throws -> Int64 {
        if let key = jidKeys[jid] { return key }
        let key: Int64
        if let known = try existingJidKey(jid) {
            key = known
        } else {
            try run("INSERT INTO jid_keys (jid) VALUES (?)", [.text(jid)])
            key = lastInsertRowID
        }
        // Bounded: a server past a million JIDs reads the old ones back from the index.
        if jidKeys.count >= 1_000_000 { jidKeys.removeAll() }
        jidKeys[jid] = key
        return key
    }
}
