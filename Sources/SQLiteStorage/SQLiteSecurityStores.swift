import Foundation
import Logging
import Storage

extension SQLiteStores: DataKeyStore {
    public func dataKeys() async throws -> [WrappedDataKey] {
        try await database.run { db in
            try db.query("SELECT id, wrapped, master_id, created_at, retired FROM data_keys ORDER BY id") {
                WrappedDataKey(id: $0.int(0), wrapped: $0.blob(1), masterID: $0.text(2) ?? "", createdAt: $0.double(3), retired: $0.int(4) != 0)
            }
        }
    }

    public func addDataKey(_ key: WrappedDataKey) async throws -> Int64 {
        try await database.transaction { db in
            try db.run("UPDATE data_keys SET retired = 1")
            try db.run(
                "INSERT INTO data_keys (wrapped, master_id, created_at, retired) VALUES (?, ?, ?, 0)",
                [.blob(key.wrapped), .text(key.masterID), .double(key.createdAt)])
            return db.lastInsertRowID
        }
    }

    public func rewrapDataKeys(_ keys: [WrappedDataKey]) async throws {
        try await database.transaction { db in
            for key in keys {
                try db.run("UPDATE data_keys SET wrapped = ?, master_id = ? WHERE id = ?", [.blob(key.wrapped), .text(key.masterID), .int(key.id)])
            }
        }
    }
}

extension SQLiteStores: TrailStore {
    public func appendTrail(_ make: @escaping @Sendable (TrailEntry?) throws -> TrailEntry) async throws -> TrailEntry {
        try await database.transaction { db in
            let last = try db.query(
                "SELECT seq, created_at, actor, action, details, previous_hash, hash, signature FROM trail ORDER BY seq DESC LIMIT 1"
            ) { Self.trailEntry($0) }.first
            let entry = try make(last)
            try db.run(
                "INSERT INTO trail (seq, created_at, actor, action, details, previous_hash, hash, signature) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    .int(entry.seq), .double(entry.time), .text(entry.actor), .text(entry.action), .text(entry.details),
                    .blob(entry.previousHash), .blob(entry.hash), entry.signature.map { .blob($0) } ?? .null,
                ])
            return entry
        }
    }

    public func trail(from: Int64, limit: Int) async throws -> [TrailEntry] {
        try await database.run { db in
            try db.query(
                "SELECT seq, created_at, actor, action, details, previous_hash, hash, signature FROM trail WHERE seq >= ? ORDER BY seq LIMIT ?",
                [.int(from), .int(Int64(limit))]
            ) { Self.trailEntry($0) }
        }
    }

    private static func trailEntry(_ row: Statement) -> TrailEntry {
        TrailEntry(
            seq: row.int(0), time: row.double(1), actor: row.text(2) ?? "", action: row.text(3) ?? "", details: row.text(4) ?? "",
            previousHash: row.blob(5), hash: row.blob(6), signature: row.isNull(7) ? nil : row.blob(7))
    }
}

/// Warnings of the stores themselves (the server's logging configuration applies).
let storageLogger = Logger(label: "switchboard.storage")

extension SQLiteStores: AuditArchiveStore {
    /// Records with an id (the server's archive positions) are idempotent: one already stored is
    /// skipped (the message journal may apply an entry again after a crash); id 0 takes the next.
    public func appendAudit(_ records: [AuditRecord]) async throws {
        try await append([], audit: records)
    }

    /// An audit record's sealed columns (sealed before the transaction, off the database's thread).
    struct SealedAuditRow {
        var stanza: SQLValue
        var attachments: SQLValue
    }

    func sealedAuditRow(stanza: String, attachments: [String]) throws -> SealedAuditRow {
        SealedAuditRow(
            stanza: try sealed(stanza, context: "audit"),
            // Nothing to hide in an empty list: skip the cipher (it costs a key schedule per call).
            attachments: attachments.isEmpty ? .blob([]) : try sealed(attachments.joined(separator: "\n"), context: "audit.attachments"))
    }

    /// Binds an audit record's row to `INSERT … audit_records (id, created_at, sender,
    /// recipients, type, room, stanza, attachments, …)`, parameter by parameter.
    static func bindAuditRow(_ record: AuditRecord, _ sealed: SealedAuditRow, to statement: Statement) throws {
        try statement.bind(1, record.id == 0 ? .null : .int(record.id))
        try statement.bind(2, record.time)
        try statement.bind(3, record.sender)
        try statement.bind(4, record.recipients.count == 1 ? record.recipients[0] : record.recipients.joined(separator: "\n"))
        try statement.bind(5, record.type)
        try statement.bind(6, .optional(record.room))
        try statement.bind(7, sealed.stanza)
        try statement.bind(8, sealed.attachments)
    }

    /// Everyone an audit record is indexed under: sender, recipients and room, once each.
    static func participants(sender: String, recipients: [String], room: String?) -> [String] {
        var unique: [String] = []
        unique.reserveCapacity(recipients.count + 2)
        forEachParticipant(sender: sender, recipients: recipients, room: room) { unique.append($0) }
        return unique
    }

    /// Calls `body` with each of `participants(sender:recipients:room:)`, in that order, without
    /// collecting them (a 1:1 message has two: comparing beats hashing them into a set).
    static func forEachParticipant(sender: String, recipients: [String], room: String?, _ body: (String) throws -> Void) rethrows {
        try body(sender)
        guard recipients.count <= 8 else {
            var seen: Set<String> = [sender]
            for name in recipients where seen.insert(name).inserted { try body(name) }
            if let room, seen.insert(room).inserted { try body(room) }
            return
        }
        for (index, name) in recipients.enumerated() where name != sender && !recipients[..<index].contains(name) { try body(name) }
        if let room, room != sender, !recipients.contains(room) { try body(room) }
    }

    public func auditRecords(in scope: AuditScope, afterID: Int64, limit: Int) async throws -> [AuditRecord] {
        let names = scope.users + scope.rooms
        guard !names.isEmpty, limit > 0 else { return [] }
        let rows = try await archiveDatabase.run { db in
            let placeholders = Array(repeating: "?", count: names.count).joined(separator: ", ")
            let values: [SQLValue] = names.map { .text($0) } + [.double(scope.start), .double(scope.end), .int(afterID), .int(Int64(limit))]
            return try db.query(
                """
                SELECT m.id, m.created_at, m.sender, m.recipients, m.type, m.room, m.stanza, m.attachments
                FROM audit_records m WHERE m.id IN (
                    SELECT message FROM audit_participants
                    WHERE user IN (SELECT id FROM jid_keys WHERE jid IN (\(placeholders))) AND created_at >= ? AND created_at <= ?)
                AND m.id > ? ORDER BY m.id LIMIT ?
                """,
                values
            ) { row in
                (row.int(0), row.double(1), row.text(2) ?? "", row.text(3) ?? "", row.text(4) ?? "", row.text(5), row.blob(6), row.blob(7))
            }
        }
        // Open outside the database queue.
        return try rows.map { row in
            AuditRecord(
                id: row.0, time: row.1, sender: row.2, recipients: row.3.split(separator: "\n").map(String.init), type: row.4, room: row.5,
                stanza: try opened(row.6, context: "audit"),
                attachments: try opened(row.7, context: "audit.attachments").split(separator: "\n").map(String.init))
        }
    }

    /// Deletes in chunks of 2,000 records per transaction. An archive copy that shares a
    /// deleted record's text gets its own sealed copy first: users' archives outlive the audit
    /// record's retention. A record whose text cannot be opened (a data key no longer in the
    /// key ring, encryption switched off over sealed data) stays, with a warning: deleting it
    /// would leave its copies empty, and retention goes on with the other records.
    public func purgeAudit(before: Double, users: [String]?) async throws -> Int {
        var condition = "created_at < ?"
        var values: [SQLValue] = [.double(before)]
        if let users {
            guard !users.isEmpty else { return 0 }
            condition += " AND sender IN (\(Array(repeating: "?", count: users.count).joined(separator: ", ")))"
            values += users.map { .text($0) }
        }
        var total = 0
        var kept = 0
        var after = Int64.min
        let (chosen, bound) = (condition, values)
        while true {
            let from = after
            let (removed, skipped, seen, last) = try await archiveDatabase.transaction { db -> (Int, Int, Int, Int64?) in
                let rows = try db.query(
                    "SELECT id, created_at, sender, recipients, room, stanza, copies FROM audit_records WHERE \(chosen) AND id > ? ORDER BY id LIMIT 2000",
                    bound + [.int(from)]
                ) { ($0.int(0), $0.double(1), $0.text(2) ?? "", $0.text(3) ?? "", $0.text(4), $0.blob(5), $0.blob(6)) }
                var removed = 0
                var skipped = 0
                let stillSharing = try db.prepare("SELECT 1 FROM archive WHERE id = ? AND content = ?")
                for (id, time, sender, recipients, room, stanza, copies) in rows {
                    // The copies the record lists that still name it (`ArchiveSharing`).
                    let sharing = try ArchiveSharing.decode(copies, record: id).filter { copy in
                        try stillSharing.bind(1, copy)
                        try stillSharing.bind(2, id)
                        var found = false
                        try stillSharing.execute { _ in found = true }
                        return found
                    }
                    if !sharing.isEmpty {
                        guard let text = self.openedIfReadable(stanza, context: "audit") else {
                            skipped += 1
                            continue
                        }
                        let own = try self.sealed(text, context: "archive")
                        for copy in sharing {
                            try db.run("UPDATE archive SET stanza = ?, content = NULL WHERE id = ?", [own, .int(copy)])
                        }
                    }
                    let recipients = recipients.split(separator: "\n").map(String.init)
                    for user in Self.participants(sender: sender, recipients: recipients, room: room) {
                        try db.run(
                            "DELETE FROM audit_participants WHERE user = \(SQLiteStores.jidKeyOf) AND created_at = ? AND message = ?",
                            [.text(user), .double(time), .int(id)])
                    }
                    try db.run("DELETE FROM audit_records WHERE id = ?", [.int(id)])
                    removed += 1
                }
                return (removed, skipped, rows.count, rows.last?.0)
            }
            total += removed
            kept += skipped
            guard seen == 2000, let last else { break }
            after = last
        }
        if kept > 0 {
            storageLogger.warning(
                "audit retention kept records whose text cannot be opened (shared with users' archives)",
                metadata: ["kept": "\(kept)"])
        }
        return total
    }

    /// The text of a sealed value, or nil when it cannot be read: sealed with a key the ring
    /// does not hold, or sealed while no cipher is configured (a sealed value starts with a NUL
    /// byte, which no stored XML text does).
    func openedIfReadable(_ bytes: [UInt8], context: String) -> String? {
        guard cipher != nil else { return bytes.first == 0 ? nil : String(decoding: bytes, as: UTF8.self) }
        return try? opened(bytes, context: context)
    }

    public func auditCount() async throws -> Int {
        try await archiveDatabase.run { db in Int(try db.query("SELECT count(*) FROM audit_records") { $0.int(0) }.first ?? 0) }
    }
}

extension SQLiteStores: AccessRequestStore {
    public func createAccessRequest(_ request: AccessRequest) async throws -> Int64 {
        let blob = try encode(request)
        return try await database.transaction { db in
            try db.run("INSERT INTO access_requests (status, record) VALUES (?, ?)", [.text(request.status.rawValue), .blob(blob)])
            return db.lastInsertRowID
        }
    }

    public func accessRequest(_ id: Int64) async throws -> AccessRequest? {
        try await database.run { db in
            try db.query("SELECT id, record FROM access_requests WHERE id = ?", [.int(id)]) { row in
                var request = try decode(AccessRequest.self, row.blob(1))
                request.id = row.int(0)
                return request
            }.first
        }
    }

    public func accessRequests(status: AccessRequest.Status?, limit: Int) async throws -> [AccessRequest] {
        try await database.run { db in
            let filter = status.map { _ in "WHERE status = ?" } ?? ""
            let values: [SQLValue] = (status.map { [SQLValue.text($0.rawValue)] } ?? []) + [.int(Int64(limit))]
            return try db.query("SELECT id, record FROM access_requests \(filter) ORDER BY id DESC LIMIT ?", values) { row in
                var request = try decode(AccessRequest.self, row.blob(1))
                request.id = row.int(0)
                return request
            }
        }
    }

    public func decideAccessRequest(_ request: AccessRequest) async throws -> Bool {
        let blob = try encode(request)
        return try await database.run { db in
            try db.run(
                "UPDATE access_requests SET status = ?, record = ? WHERE id = ? AND status = 'pending'",
                [.text(request.status.rawValue), .blob(blob), .int(request.id)]) > 0
        }
    }
}

extension SQLiteStores {
    /// The sealed columns: (table, key column, value column, context).
    static let sealedColumns: [(String, String, String, String)] = [
        ("archive", "id", "stanza", "archive"), ("offline_messages", "id", "stanza", "offline"),
        ("audit_records", "id", "stanza", "audit"), ("audit_records", "id", "attachments", "audit.attachments"),
    ]

    /// Rewrites every sealed column value that is plaintext or sealed with an older key, in
    /// batches of 500 rows per transaction (the server may keep running). Returns the count.
    public func resealAll(progress: (@Sendable (Int) -> Void)? = nil) async throws -> Int {
        guard let cipher else { return 0 }
        var total = 0
        for (table, key, column, context) in Self.sealedColumns {
            var after: Int64 = Int64.min
            while true {
                let from = after
                let (count, last) = try await archiveDatabase.transaction { db -> (Int, Int64?) in
                    let rows = try db.query(
                        "SELECT \(key), \(column) FROM \(table) WHERE \(key) > ? ORDER BY \(key) LIMIT 500", [.int(from)]
                    ) { ($0.int(0), $0.blob(1)) }
                    var changed = 0
                    // Empty values hide nothing (an archive copy sharing its audit record's text).
                    for (id, value) in rows where !value.isEmpty && cipher.needsResealing(value) {
                        let plain = cipher.isSealed(value) ? try cipher.open(value, context: context) : value
                        try db.run(
                            "UPDATE \(table) SET \(column) = ? WHERE \(key) = ?", [.blob(try cipher.seal(plain, context: context)), .int(id)])
                        changed += 1
                    }
                    return (changed, rows.last?.0)
                }
                total += count
                progress?(total)
                guard let last else { break }
                after = last
            }
        }
        return total
    }
}
