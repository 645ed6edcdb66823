import Foundation
import SQLiteStorage
import Storage
import Testing

@Suite struct StoreTests {
    private func withStores(_ body: (SQLiteStores, String) async throws -> Void) async throws {
        try await withTemporaryStores("sb-store", body)
    }

    private func account(_ name: String) throws -> Account {
        Account(username: name, credentials: try StoredCredentials.derive(password: "pw", iterations: 64), createdAt: 0)
    }

    @Test func accountsRoundTripAndConflict() async throws {
        try await withStores { stores, _ in
            try await stores.createAccount(try account("alice"))
            await #expect(throws: StorageError.self) { try await stores.createAccount(try account("alice")) }
            let loaded = try #require(try await stores.account("alice"))
            #expect(loaded.credentials?.sha256.verify(password: "pw") == true)
            #expect(loaded.credentials?.sha256.verify(password: "wrong") == false)
            #expect(try await stores.accountCount() == 1)
        }
    }

    @Test func mucRoomsRoundTripAndArchiveTombstones() async throws {
        try await withStores { stores, directory in
            var room = MUCRoomRecord(
                jid: "team@conference.example.test", config: "{\"name\":\"Team\"}", subject: "Hi", subjectBy: "Alice",
                affiliations: ["alice@example.test": "owner", "bob@example.test": "member"], createdAt: 1)
            try await stores.saveRoom(room)
            room.affiliations = ["alice@example.test": "owner", "carol@example.test": "outcast"]
            room.subject = nil
            try await stores.saveRoom(room)
            try await stores.saveRoom(MUCRoomRecord(jid: "other@conference.example.test", config: "{}", createdAt: 2))
            let reopened = try SQLiteStores(directory: directory)
            let loaded = try await reopened.rooms()
            #expect(loaded == [MUCRoomRecord(jid: "other@conference.example.test", config: "{}", createdAt: 2), room], "\(loaded)")
            try await reopened.deleteRoom("team@conference.example.test")
            #expect(try await reopened.rooms().map(\.jid) == ["other@conference.example.test"])

            let record = ArchiveRecord(id: 1, uid: "u1", owner: "team@conference.example.test", peer: "bob@example.test", outgoing: false, time: 1, stanza: "<message/>")
            try await stores.append([record])
            #expect(try await stores.record(owner: "team@conference.example.test", uid: "u1") == record)
            #expect(try await stores.record(owner: "someone@example.test", uid: "u1") == nil)
            #expect(try await stores.replaceStanza(owner: "team@conference.example.test", uid: "u1", stanza: "<message><retracted/></message>"))
            #expect(try await !stores.replaceStanza(owner: "team@conference.example.test", uid: "nope", stanza: "x"))
            #expect(try await stores.record(owner: "team@conference.example.test", uid: "u1")?.stanza == "<message><retracted/></message>")
        }
    }

    @Test func noPlaintextPasswordOnDisk() async throws {
        try await withStores { stores, directory in
            try await stores.createAccount(
                Account(username: "bob", credentials: try StoredCredentials.derive(password: "correct-horse-battery", iterations: 64), createdAt: 0))
            _ = try await stores.accountCount()
            for file in try FileManager.default.contentsOfDirectory(atPath: directory) {
                let data = try Data(contentsOf: URL(fileURLWithPath: directory + "/" + file))
                #expect(data.range(of: Data("correct-horse-battery".utf8)) == nil, "plaintext password in \(file)")
            }
        }
    }

    @Test func rosterVersionsIncrease() async throws {
        try await withStores { stores, _ in
            let v1 = try await stores.put(RosterItem(jid: "b@x", subscription: .to), of: "a@x")
            let v2 = try await stores.put(RosterItem(jid: "c@x"), of: "a@x")
            #expect(v2 > v1)
            let roster = try await stores.roster(of: "a@x")
            #expect(roster.version == v2)
            #expect(roster.items.map(\.jid) == ["b@x", "c@x"])
            let v3 = try await stores.remove("b@x", of: "a@x")
            #expect(v3 > v2)
            #expect(try await stores.remove("nobody@x", of: "a@x") == v3)
        }
    }

    @Test func offlineMessagesKeepOrder() async throws {
        try await withStores { stores, _ in
            for index in 0..<5 { try await stores.store("<m\(index)/>", for: "a@x", at: Double(index)) }
            let messages = try await stores.messages(for: "a@x")
            #expect(messages.map(\.stanza) == (0..<5).map { "<m\($0)/>" })
            try await stores.remove(ids: Array(messages.prefix(2).map(\.id)), for: "a@x")
            #expect(try await stores.count(for: "a@x") == 3)
        }
    }

    /// Deleting john_doe must not touch johnXdoe's data (`_` is a LIKE wildcard).
    @Test func deletingAnAccountLeavesLookalikesAlone() async throws {
        try await withStores { stores, _ in
            try await stores.createAccount(try account("john_doe"))
            try await stores.createAccount(try account("johnxdoe"))
            try await stores.store("<m/>", for: "johnxdoe@x", at: 0)
            try await stores.store("<m/>", for: "john_doe@x", at: 0)
            _ = try await stores.put(RosterItem(jid: "a@x"), of: "johnxdoe@x")
            // A room named like the user keeps its archive.
            try await stores.saveRoom(MUCRoomRecord(jid: "john_doe@conference.x", config: "{}", createdAt: 1))
            try await stores.append([
                ArchiveRecord(id: 1, uid: "r", owner: "john_doe@conference.x", peer: "a@x", outgoing: false, time: 1, stanza: "<m/>"),
                ArchiveRecord(id: 2, uid: "u", owner: "john_doe@x", peer: "a@x", outgoing: false, time: 1, stanza: "<m/>"),
            ])
            #expect(try await stores.deleteAccount("john_doe"))
            #expect(try await stores.archiveCount(owner: "john_doe@conference.x") == 1)
            #expect(try await stores.archiveCount(owner: "john_doe@x") == 0)
            #expect(try await stores.count(for: "johnxdoe@x") == 1)
            #expect(try await stores.count(for: "john_doe@x") == 0)
            #expect(try await stores.roster(of: "johnxdoe@x").items.count == 1)
            #expect(try await stores.listAccounts() == ["johnxdoe"])
        }
    }

    @Test func copiesForADeletedAccountArrivingLateAreNotStored() async throws {
        try await withStores { stores, _ in
            try await stores.createAccount(try account("carol"))
            try await stores.saveRoom(MUCRoomRecord(jid: "carol@conference.x", config: "{}", createdAt: 1))
            #expect(try await stores.deleteAccount("carol"))
            let now = Date().timeIntervalSince1970
            func copy(_ id: Int64, _ owner: String, at time: Double) -> ArchiveRecord {
                ArchiveRecord(id: id, uid: "u\(id)", owner: owner, peer: "dave@x", outgoing: false, time: time, stanza: "<m>\(id)</m>")
            }
            // As the running server's journal would apply them after a CLI deleted the account.
            try await stores.append(
                [copy(1, "carol@x", at: now - 1), copy(2, "carol@conference.x", at: now - 1), copy(3, "dave@x", at: now - 1)],
                audit: [AuditRecord(id: 10, time: now - 1, sender: "dave@x", recipients: ["carol@x"], type: "chat", stanza: "<m>1</m>")])
            #expect(try await stores.archiveCount(owner: "carol@x") == 0)
            #expect(try await stores.archiveCount(owner: "carol@conference.x") == 1)
            #expect(try await stores.archiveCount(owner: "dave@x") == 1)
            #expect(try await stores.auditCount() == 1)
            // A new account of the same name keeps what it receives.
            try await stores.append([copy(4, "carol@x", at: now + 60)])
            #expect(try await stores.archiveCount(owner: "carol@x") == 1)
        }
    }

    @Test func reopeningKeepsDataAndSchema() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("sb-store-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: directory) }
        do {
            let stores = try SQLiteStores(directory: directory)
            try await stores.createAccount(try account("carol"))
        }
        let reopened = try SQLiteStores(directory: directory)
        #expect(try await reopened.account("carol") != nil)
        let mode = try FileManager.default.attributesOfItem(atPath: directory + "/switchboard.sqlite")[.posixPermissions] as? Int
        #expect(mode == 0o600)
    }
}
