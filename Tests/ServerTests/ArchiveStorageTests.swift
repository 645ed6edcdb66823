import Foundation
@testable import SQLiteStorage
import Storage
import Testing
import Vault

/// How the archive and the audit record share a message's stored text (schema step 11).
@Suite struct ArchiveStorageTests {
    private func withStores(_ body: (SQLiteStores, String) async throws -> Void) async throws {
        try await withTemporaryStores("sb-archive", body)
    }

    private func count(_ stores: SQLiteStores, _ sql: String) async throws -> Int64 {
        try await stores.archiveDatabase.run { db in try db.query(sql) { $0.int(0) }.first ?? -1 }
    }

    @Test func rowsAreInsertedOwnerByOwnerInArrivalOrder() {
        let owners = ["a", "b", "a", "c", "b", "a"]
        #expect(SQLiteStores.groupedOrder(owners.count, by: { owners[$0] }) == [0, 2, 5, 1, 4, 3])
        #expect(SQLiteStores.groupedOrder(0, by: { owners[$0] }).isEmpty)
    }

    @Test func copiesShareTheAuditRecordsTextUntilRetractedOrPurged() async throws {
        try await withStores { plain, path in
            let master = try MasterKey.fromFile(path + "/keys/master.key", create: true)
            let stores = plain.encrypted(with: try await KeyRing.open(master: master, store: plain))
            let text = "<message from='a@x/r' to='b@x' type='chat'><body>shared secret</body><stanza-id xmlns='urn:xmpp:sid:0' by='b@x' id='B1'/></message>"
            let audit = AuditRecord(id: 1_000, time: 5, sender: "a@x", recipients: ["b@x"], type: "chat", stanza: text)
            let copies = [
                ArchiveRecord(id: 998, uid: "A1", owner: "a@x", peer: "b@x", outgoing: true, time: 5, stanza: text),
                ArchiveRecord(id: 999, uid: "B1", owner: "b@x", peer: "a@x", outgoing: false, time: 5, stanza: text),
                ArchiveRecord(id: 997, uid: "C1", owner: "c@x", peer: "a@x", outgoing: false, time: 5, stanza: "<message><body>other</body></message>"),
            ]
            try await stores.append(copies, audit: [audit])
            // Applied again after a crash: nothing doubles, the copies still share.
            try await stores.append(copies, audit: [audit])
            #expect(try await count(stores, "SELECT count(*) FROM archive") == 3)
            #expect(try await count(stores, "SELECT count(*) FROM archive WHERE content = 1000 AND length(stanza) = 0") == 2)
            // The record lists them (and only them), written once.
            let listed = try await stores.archiveDatabase.run { db in
                try db.query("SELECT copies FROM audit_records WHERE id = 1000") { ArchiveSharing.decode($0.blob(0), record: 1000) }.first
            }
            #expect(listed.map { Set($0) } == [998, 999])
            #expect(listed?.count == 2)
            #expect(try await unlistedSharingCopies(in: stores).isEmpty)
            #expect(try await count(stores, "SELECT count(*) FROM audit_participants") == 2)
            #expect(try await stores.record(owner: "a@x", uid: "A1")?.stanza == text)
            #expect(try await stores.record(owner: "b@x", uid: "B1")?.stanza == text)
            #expect(try await stores.record(owner: "c@x", uid: "C1")?.stanza == "<message><body>other</body></message>")
            #expect(try await stores.query(ArchiveQuery(owner: "b@x"))?.records.map(\.stanza) == [text])

            // An id already taken is never shared: the copy keeps its own text.
            let clash = AuditRecord(id: 1_000, time: 6, sender: "d@x", recipients: ["e@x"], type: "chat", stanza: "<message><body>late</body></message>")
            try await stores.append(
                [ArchiveRecord(id: 2_000, uid: "D1", owner: "d@x", peer: "e@x", outgoing: true, time: 6, stanza: clash.stanza)], audit: [clash])
            #expect(try await count(stores, "SELECT count(*) FROM archive WHERE id = 2000 AND content IS NULL") == 1)
            #expect(try await stores.record(owner: "d@x", uid: "D1")?.stanza == clash.stanza)
            #expect(try await unlistedSharingCopies(in: stores).isEmpty)

            // A retraction changes the user's copy only; the audit record keeps the message.
            #expect(try await stores.replaceStanza(owner: "a@x", uid: "A1", stanza: "<message><retracted/></message>"))
            #expect(try await stores.record(owner: "a@x", uid: "A1")?.stanza == "<message><retracted/></message>")
            let scope = AuditScope(users: ["a@x"], rooms: [], start: 0, end: 10)
            #expect(try await stores.auditRecords(in: scope, afterID: 0, limit: 10).map(\.stanza) == [text])
            #expect(try await unlistedSharingCopies(in: stores).isEmpty)

            // Re-encryption leaves the empty shared values alone.
            #expect(try await stores.resealAll() == 0)

            // Without the key (encryption switched off over sealed data) the shared text cannot
            // be given to the copies: the record stays rather than leave them empty.
            #expect(try await plain.purgeAudit(before: 100, users: nil) == 0)
            #expect(try await stores.auditCount() == 1)
            #expect(try await stores.record(owner: "b@x", uid: "B1")?.stanza == text)

            // The audit record's retention ends; the users' archives keep the message.
            #expect(try await stores.purgeAudit(before: 100, users: ["someone-else@x"]) == 0)
            #expect(try await stores.purgeAudit(before: 100, users: ["a@x"]) == 1)
            #expect(try await stores.auditCount() == 0)
            #expect(try await count(stores, "SELECT count(*) FROM audit_participants") == 0)
            #expect(try await count(stores, "SELECT count(*) FROM archive WHERE content IS NOT NULL") == 0)
            #expect(try await stores.record(owner: "b@x", uid: "B1")?.stanza == text)
            #expect(try await stores.record(owner: "a@x", uid: "A1")?.stanza == "<message><retracted/></message>")
            // Sealed again, under the archive's context: nothing readable on disk.
            let sealed = try await stores.archiveDatabase.run { db in
                try db.query("SELECT stanza FROM archive WHERE id = 999") { $0.blob(0) }.first ?? []
            }
            #expect(!sealed.isEmpty && !String(decoding: sealed, as: UTF8.self).contains("shared secret"))
        }
    }

    @Test(arguments: [
        ArchiveUID(position: 0, random: 0), ArchiveUID(position: 1_765_000_000_000_000, random: 42),
        ArchiveUID(position: .max, random: .max), ArchiveUID(position: 7, random: 1 << 63),
    ])
    func archiveIDsReadBackAsMade(uid: ArchiveUID) {
        #expect(uid.text.utf8.count == 22)
        #expect(ArchiveUID(uid.text) == uid)
    }

    /// Only a string that its two numbers give back exactly is taken for a made id.
    @Test(arguments: ["", "A1", "0000000000000000000000x", "000000000000000000000", "00000000000-0000000000",
        "zzzzzzzzzzz00000000000", "00000000000zzzzzzzzzzz", "B000000000000000000000"])
    func otherStringsAreNotMadeIDs(text: String) {
        #expect(ArchiveUID(text) == nil)
    }

    /// An id made from the copy's own position is kept as its random half (no text, so no entry
    /// in the ids' index) and found by the position; any other id is kept and found as text.
    @Test func madeIDsAreStoredAsTheirRandomHalf() async throws {
        try await withStores { stores, _ in
            let made = ArchiveUID(position: 5_000, random: 0xDEAD_BEEF_0123_4567).text
            let elsewhere = ArchiveUID(position: 4_000, random: 9).text  // made for another position
            try await stores.append([
                ArchiveRecord(id: 5_000, uid: made, owner: "a@x", peer: "b@x", outgoing: true, time: 5, stanza: "<m>one</m>"),
                ArchiveRecord(id: 5_001, uid: elsewhere, owner: "a@x", peer: "b@x", outgoing: true, time: 6, stanza: "<m>two</m>"),
                ArchiveRecord(id: 5_002, uid: "legacy-random-id", owner: "a@x", peer: "c@x", outgoing: false, time: 7, stanza: "<m>three</m>"),
            ])
            #expect(try await count(stores, "SELECT count(*) FROM archive WHERE uid IS NULL AND uid_random IS NOT NULL") == 1)
            #expect(try await count(stores, "SELECT count(*) FROM archive WHERE uid IS NOT NULL AND uid_random IS NULL") == 2)
            // Read back: results carry the ids they were stored with.
            let page = try #require(try await stores.query(ArchiveQuery(owner: "a@x")))
            #expect(page.records.map(\.uid) == [made, elsewhere, "legacy-random-id"])
            #expect(try await stores.record(owner: "a@x", uid: made)?.stanza == "<m>one</m>")
            #expect(try await stores.record(owner: "a@x", uid: elsewhere)?.stanza == "<m>two</m>")
            // Paging from each kind of id.
            #expect(try await stores.query(ArchiveQuery(owner: "a@x", after: made))?.records.map(\.id) == [5_001, 5_002])
            #expect(try await stores.query(ArchiveQuery(owner: "a@x", before: "legacy-random-id"))?.records.map(\.id) == [5_000, 5_001])
            // Another owner, or the right position with another random half, finds nothing.
            #expect(try await stores.record(owner: "b@x", uid: made) == nil)
            #expect(try await stores.record(owner: "a@x", uid: ArchiveUID(position: 5_000, random: 1).text) == nil)
            #expect(try await stores.query(ArchiveQuery(owner: "a@x", after: ArchiveUID(position: 5_000, random: 1).text)) == nil)
            #expect(try await stores.replaceStanza(owner: "a@x", uid: ArchiveUID(position: 5_000, random: 1).text, stanza: "<m>x</m>") == false)
            #expect(try await stores.replaceStanza(owner: "a@x", uid: made, stanza: "<m>retracted</m>"))
            #expect(try await stores.record(owner: "a@x", uid: made)?.stanza == "<m>retracted</m>")
        }
    }

    /// Owners, peers and audit participants are stored as integer keys of their JIDs (schema
    /// step 14), made once per JID; queries name JIDs, and a JID never stored finds nothing.
    @Test func jidsAreStoredAsKeys() async throws {
        try await withStores { stores, _ in
            let text = "<message><body>hi</body></message>"
            try await stores.append(
                [
                    ArchiveRecord(id: 10, uid: "a1", owner: "a@x", peer: "b@x", outgoing: true, time: 1, stanza: text),
                    ArchiveRecord(id: 11, uid: "b1", owner: "b@x", peer: "a@x", outgoing: false, time: 1, stanza: text),
                    ArchiveRecord(id: 12, uid: "a2", owner: "a@x", peer: "c@x", outgoing: true, time: 2, stanza: "<m>two</m>"),
                ],
                audit: [AuditRecord(id: 13, time: 1, sender: "a@x", recipients: ["b@x"], type: "chat", stanza: text)])
            #expect(try await count(stores, "SELECT count(*) FROM jid_keys") == 3)
            #expect(try await count(stores, "SELECT count(*) FROM archive WHERE typeof(owner) = 'integer' AND typeof(peer) = 'integer'") == 3)
            #expect(try await count(stores, "SELECT count(*) FROM audit_participants WHERE typeof(user) = 'integer'") == 2)
            #expect(try await count(stores, "SELECT count(*) FROM archive a JOIN jid_keys k ON k.id = a.owner WHERE k.jid = 'a@x'") == 2)
            let page = try #require(try await stores.query(ArchiveQuery(owner: "a@x")))
            #expect(page.records.map(\.peer) == ["b@x", "c@x"] && page.records.allSatisfy { $0.owner == "a@x" })
            #expect(try await stores.query(ArchiveQuery(owner: "a@x", with: "c@x"))?.records.map(\.uid) == ["a2"])
            #expect(try await stores.query(ArchiveQuery(owner: "a@x", with: "nobody@x"))?.records.isEmpty == true)
            #expect(try await stores.query(ArchiveQuery(owner: "nobody@x"))?.records.isEmpty == true)
            #expect(try await stores.query(ArchiveQuery(owner: "nobody@x", after: "a1")) == nil)
            #expect(try await stores.archiveCount(owner: "b@x") == 1)
            let scope = AuditScope(users: ["b@x", "nobody@x"], rooms: [], start: 0, end: 10)
            #expect(try await stores.auditRecords(in: scope, afterID: 0, limit: 10).map(\.id) == [13])
            // More of the same JIDs make no new keys.
            try await stores.append([ArchiveRecord(id: 20, uid: "c1", owner: "c@x", peer: "a@x", outgoing: false, time: 3, stanza: "<m/>")])
            #expect(try await count(stores, "SELECT count(*) FROM jid_keys") == 3)
        }
    }

    /// A key made in a transaction that rolled back is not used afterwards (its row is gone).
    @Test func aRolledBackKeyIsForgotten() async throws {
        try await withStores { stores, _ in
            struct Abandoned: Error {}
            let key = try await stores.archiveDatabase.run { db -> Int64 in
                #expect(throws: Abandoned.self) {
                    try db.transaction {
                        _ = try db.jidKey("ghost@x")
                        throw Abandoned()
                    }
                }
                return try db.transaction { try db.jidKey("ghost@x") }
            }
            #expect(try await count(stores, "SELECT count(*) FROM jid_keys WHERE jid = 'ghost@x'") == 1)
            #expect(try await count(stores, "SELECT id FROM jid_keys WHERE jid = 'ghost@x'") == key)
        }
    }

    /// Text ids stored before schema 13 are found after the upgrade, also one that looks made.
    @Test func upgradeKeepsTextIDsFindable() async throws {
        try await withStores { _, path in
            let looksMade = ArchiveUID(position: 1, random: 77).text
            let older = try olderDatabase(
                under: path, version: 12,
                """
                INSERT INTO archive (id, uid, owner, peer, outgoing, created_at, stanza) VALUES
                    (1, '\(looksMade)', 'a@x', 'b@x', 1, 3, '<m>first</m>'),
                    (2, 'u2', 'a@x', 'b@x', 1, 4, '<m>second</m>');
                """)
            let upgraded = try SQLiteStores(directory: older)
            #expect(try await upgraded.record(owner: "a@x", uid: looksMade)?.stanza == "<m>first</m>")
            #expect(try await upgraded.record(owner: "a@x", uid: "u2")?.stanza == "<m>second</m>")
            #expect(try await upgraded.query(ArchiveQuery(owner: "a@x", after: looksMade))?.records.map(\.uid) == ["u2"])
            // Schema 14 made the JIDs keys.
            #expect(try await count(upgraded, "SELECT count(*) FROM archive WHERE typeof(owner) = 'integer' AND typeof(peer) = 'integer'") == 2)
            #expect(try await upgraded.query(ArchiveQuery(owner: "a@x", with: "b@x"))?.records.map(\.peer) == ["b@x", "b@x"])
            // The ids' index still refuses a text id twice.
            await #expect(throws: (any Error).self) {
                try await upgraded.archiveDatabase.run { db in
                    try db.execute("INSERT INTO archive (id, uid, owner, peer, outgoing, created_at, stanza) VALUES (3, 'u2', 1, 2, 1, 5, '')")
                }
            }
        }
    }

    /// Schema 16: the records list the copies that share their text (from the index it drops),
    /// and retention still gives those copies their own text.
    @Test func upgradeListsTheCopiesSharingARecordsText() async throws {
        try await withStores { _, path in
            let older = try olderDatabase(
                under: path, version: 15,
                """
                INSERT INTO jid_keys (id, jid) VALUES (1, 'a@x'), (2, 'b@x');
                INSERT INTO audit_messages (id, created_at, sender, recipients, type, stanza, attachments)
                    VALUES (100, 3, 'a@x', 'b@x', 'chat', CAST('<m>shared</m>' AS BLOB), x''),
                           (200, 4, 'b@x', 'a@x', 'chat', CAST('<m>alone</m>' AS BLOB), x'');
                INSERT INTO audit_participants (user, created_at, message) VALUES (1, 3, 100), (2, 3, 100), (1, 4, 200), (2, 4, 200);
                INSERT INTO archive (id, owner, peer, outgoing, created_at, stanza, uid, content) VALUES
                    (98, 1, 2, 1, 3, x'', 'u98', 100), (99, 2, 1, 0, 3, x'', 'u99', 100),
                    (198, 2, 1, 1, 4, CAST('<m>alone</m>' AS BLOB), 'u198', NULL);
                INSERT INTO archive_runs (owner, first, last, count, entries, min_time, max_time) VALUES
                    (1, 98, 98, 1, x'00', 3, 3), (2, 99, 198, 2, x'0063', 3, 4);
                """)
            let upgraded = try SQLiteStores(directory: older)
            #expect(try await count(upgraded, "SELECT count(*) FROM sqlite_master WHERE name = 'archive_content'") == 0)
            let lists = try await upgraded.archiveDatabase.run { db in
                try db.query("SELECT id, copies FROM audit_records ORDER BY id") { ($0.int(0), ArchiveSharing.decode($0.blob(1), record: $0.int(0))) }
            }
            #expect(lists.map(\.0) == [100, 200])
            #expect(lists.map(\.1) == [[98, 99], []])
            #expect(try await upgraded.record(owner: "b@x", uid: "u99")?.stanza == "<m>shared</m>")
            #expect(try await upgraded.purgeAudit(before: 10, users: nil) == 2)
            #expect(try await count(upgraded, "SELECT count(*) FROM archive WHERE content IS NOT NULL") == 0)
            #expect(try await upgraded.record(owner: "a@x", uid: "u98")?.stanza == "<m>shared</m>")
            #expect(try await upgraded.record(owner: "b@x", uid: "u99")?.stanza == "<m>shared</m>")
            #expect(try await upgraded.record(owner: "b@x", uid: "u198")?.stanza == "<m>alone</m>")
        }
    }

    /// Lists round-trip, positions on either side of the record's, near and far.
    @Test func sharingListsRoundTrip() {
        let record: Int64 = 1_765_000_000_000_000
        for positions: [Int64] in [[], [record - 1, record - 2], [record + 5, record - 70_000, 0, Int64.max, Int64.min]] {
            #expect(ArchiveSharing.decode(ArchiveSharing.encode(positions, record: record), record: record) == positions)
        }
        #expect(ArchiveSharing.encode([record - 1, record - 2], record: record).count == 2)
        // A truncated list ends where its last complete position does.
        #expect(ArchiveSharing.decode(Array(ArchiveSharing.encode([record - 1, record + 300], record: record).dropLast()), record: record) == [record - 1])
    }

    @Test func upgradeKeepsAuditParticipants() async throws {
        try await withStores { _, path in
            // A database as version 10 left it, with an audit record and its participants.
            let older = try olderDatabase(
                under: path, version: 10,
                """
                INSERT INTO audit_messages (id, created_at, sender, recipients, type, stanza, attachments)
                    VALUES (7, 3, 'a@x', 'b@x', 'chat', CAST('<m>kept</m>' AS BLOB), x'');
                INSERT INTO audit_participants (user, created_at, message) VALUES ('a@x', 3, 7), ('b@x', 3, 7);
                INSERT INTO archive (id, uid, owner, peer, outgoing, created_at, stanza) VALUES (1, 'u', 'a@x', 'b@x', 1, 3, '<m>kept</m>');
                """)
            let upgraded = try SQLiteStores(directory: older)
            let scope = AuditScope(users: ["b@x"], rooms: [], start: 0, end: 10)
            #expect(try await upgraded.auditRecords(in: scope, afterID: 0, limit: 10).map(\.stanza) == ["<m>kept</m>"])
            #expect(try await upgraded.record(owner: "a@x", uid: "u")?.stanza == "<m>kept</m>")
            #expect(try await count(upgraded, "SELECT count(*) FROM audit_participants WHERE typeof(user) = 'integer'") == 2)
            #expect(try await upgraded.purgeAudit(before: 10, users: nil) == 1)
            #expect(try await count(upgraded, "SELECT count(*) FROM audit_participants") == 0)
        }
    }
}
