import Crypto
import Directory
import Foundation
@testable import Modules
import SQLiteStorage
import Server
import Storage
import SwitchboardTestSupport
import Testing
import Vault
import XMLStream
import XMPPCore

@Suite struct KeyRingTests {
    private func withStores(_ body: (SQLiteStores, String) async throws -> Void) async throws {
        try await withTemporaryStores("sb-keys", body)
    }

    @Test func sealOpenRotateRewrap() async throws {
        try await withStores { stores, path in
            let master = try MasterKey.fromFile(path + "/keys/master.key", create: true)
            let attributes = try FileManager.default.attributesOfItem(atPath: path + "/keys/master.key")
            #expect((attributes[.posixPermissions] as? NSNumber)?.intValue == 0o600)
            let ring = try await KeyRing.open(master: master, store: stores)
            let sealed = try ring.seal(Array("机密 secret".utf8), context: "archive")
            #expect(ring.isSealed(sealed))
            #expect(!String(decoding: sealed, as: UTF8.self).contains("secret"))
            #expect(try ring.open(sealed, context: "archive") == Array("机密 secret".utf8))
            // Another context (table) or one flipped bit: refused.
            #expect(throws: VaultError.self) { try ring.open(sealed, context: "offline") }
            var tampered = sealed
            tampered[tampered.count - 20] ^= 1
            #expect(throws: VaultError.self) { try ring.open(tampered, context: "archive") }

            // Rotation: new data under the new key, old data still opens.
            let newID = try await KeyRing.rotate(master: master, store: stores)
            let rotated = try await KeyRing.open(master: master, store: stores)
            #expect(rotated.activeKeyID == newID)
            #expect(try rotated.open(sealed, context: "archive") == Array("机密 secret".utf8))
            #expect(rotated.needsResealing(sealed))
            #expect(!rotated.needsResealing(try rotated.seal([1, 2, 3], context: "x")))

            // A new master key re-wraps the data keys; the old master no longer opens them.
            let newMaster = try MasterKey.fromFile(path + "/other.key", create: true)
            try await KeyRing.rewrap(from: master, to: newMaster, store: stores)
            let reopened = try await KeyRing.open(master: newMaster, store: stores)
            #expect(try reopened.open(sealed, context: "archive") == Array("机密 secret".utf8))
            await #expect(throws: VaultError.self) { _ = try await KeyRing.open(master: master, store: stores) }
        }
    }

    @Test func everySealHasAFreshNonce() async throws {
        try await withStores { stores, path in
            let master = try MasterKey.fromFile(path + "/keys/master.key", create: true)
            let ring = try await KeyRing.open(master: master, store: stores)
            // The same value sealed many times: no nonce (bytes 8..<20) twice, no zero nonce, and
            // each one opens to the value.
            var nonces = Set<[UInt8]>()
            for _ in 0..<2_000 {
                let sealed = try ring.seal(Array("same text".utf8), context: "audit")
                let nonce = Array(sealed[8..<20])
                #expect(nonce != [UInt8](repeating: 0, count: 12))
                nonces.insert(nonce)
                #expect(try ring.open(sealed, context: "audit") == Array("same text".utf8))
            }
            #expect(nonces.count == 2_000)
            // All twelve bytes random, not only the first eight.
            #expect(Set(nonces.map { Array($0[8..<12]) }).count > 1_900)
        }
    }

    @Test func reencryptionMovesEverythingToTheNewestKey() async throws {
        try await withStores { plain, path in
            let master = try MasterKey.fromFile(path + "/keys/master.key", create: true)
            // Rows from before encryption was on, and rows sealed with the first key.
            try await plain.store("<message><body>plain-before</body></message>", for: "a@x", at: 1)
            let first = plain.encrypted(with: try await KeyRing.open(master: master, store: plain))
            try await first.store("<message><body>under-key-1</body></message>", for: "a@x", at: 2)
            try await first.appendAudit([AuditRecord(time: 3, sender: "a@x", recipients: ["b@x"], type: "chat", stanza: "<m>audit-1</m>", attachments: ["https://f"])])
            _ = try await KeyRing.rotate(master: master, store: plain)
            let ring = try await KeyRing.open(master: master, store: plain)
            let second = plain.encrypted(with: ring)
            #expect(try await second.resealAll() == 4)  // two offline rows, the audit stanza and its attachments
            #expect(try await second.resealAll() == 0)
            let values = try await plain.database.run { db in
                try db.query("SELECT stanza FROM offline_messages") { $0.blob(0) } + (try db.query("SELECT stanza FROM audit_records") { $0.blob(0) })
            }
            #expect(values.allSatisfy { ring.keyID(of: $0) == ring.activeKeyID })
            #expect(try await second.messages(for: "a@x").map(\.stanza) == [
                "<message><body>plain-before</body></message>", "<message><body>under-key-1</body></message>",
            ])
        }
    }

    @Test func passphraseMasterKeyIsStableAndChecked() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("sb-salt-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        let first = try MasterKey.fromPassphrase("correct horse battery staple", saltPath: path + "/master.salt")
        let second = try MasterKey.fromPassphrase("correct horse battery staple", saltPath: path + "/master.salt")
        #expect(first.id == second.id)
        #expect(try MasterKey.fromPassphrase("another passphrase!!", saltPath: path + "/master.salt").id != first.id)
        #expect(throws: VaultError.self) { try MasterKey.fromPassphrase("short", saltPath: path + "/master.salt") }
    }

    @Test func trailDetectsAlteredRemovedAndTruncatedEntries() async throws {
        try await withStores { stores, path in
            let key = try Trail.signingKey(in: path + "/keys", create: true)
            let anchors = path + "/anchors.log"
            let trail = Trail(store: stores, signingKey: key, anchorsPath: anchors)
            for index in 1...130 { try await trail.record(actor: "cli:root", action: "test", details: ["n": String(index)]) }
            let publicKey = try Trail.publicKey(in: path + "/keys")
            var report = try await Trail.verify(store: stores, publicKey: publicKey, anchorsPath: anchors)
            #expect(report.intact, "\(report.problems)")
            #expect(report.entries == 130 && report.signedAnchors == 3 && report.shippedAnchors == 3)

            // Alter one entry's details.
            try await stores.database.run { db in try db.run("UPDATE trail SET details = '{\"n\":\"999\"}' WHERE seq = 50") }
            report = try await Trail.verify(store: stores, publicKey: publicKey, anchorsPath: anchors)
            #expect(report.problems.contains { $0.contains("entry 50 was altered") })

            // Remove one.
            try await stores.database.run { db in try db.run("DELETE FROM trail WHERE seq = 70") }
            report = try await Trail.verify(store: stores, publicKey: publicKey, anchorsPath: anchors)
            #expect(report.problems.contains { $0.contains("entry 70 is missing") })

            // Truncate the tail past a shipped anchor.
            try await stores.database.run { db in try db.run("DELETE FROM trail WHERE seq >= 128") }
            report = try await Trail.verify(store: stores, publicKey: publicKey, anchorsPath: anchors)
            #expect(report.problems.contains { $0.contains("anchor 128") && $0.contains("truncated") })
        }
    }
}

@Suite(.serialized) struct EncryptionAndAuditTests {
    /// Users: alice, bob, carol (employees), audrey (auditor), paul (approver), sam (admin).
    private func start() async throws -> TestServer {
        let server = try await TestServer.start {
            $0.c2s.requireTLS = false
            $0.directory.refreshIntervalMs = 50
        }
        var service = DirectoryService(store: server.stores, accounts: server.stores)
        // As the CLI does: administrative changes go to the trail.
        let trail = Trail(
            store: server.stores, signingKey: try Trail.signingKey(in: server.dataDirectory + "/keys", create: true),
            anchorsPath: server.dataDirectory + "/trail-anchors.log")
        service.recorder = trail.directoryRecorder(actor: "cli:test")
        let credentials = try StoredCredentials.derive(password: "pw")
        for user in ["alice", "bob", "carol", "audrey", "paul", "sam"] {
            try await service.createUser(DirectoryUser(username: user, displayName: user.capitalized), credentials: credentials)
        }
        try await service.grantRole("auditor", to: "audrey")
        try await service.grantRole("approver", to: "paul")
        try await service.grantRole("admin", to: "sam")
        // Separation of duties: one person cannot both audit and approve, or audit and administer.
        await #expect(throws: DirectoryError.self) { try await service.grantRole("approver", to: "audrey") }
        await #expect(throws: DirectoryError.self) { try await service.grantRole("auditor", to: "sam") }
        // Let the server pick up the roles.
        let probe = try await server.online("alice", "probe")
        try await server.waitForDirectory(probe)
        await probe.close()
        return server
    }

    private func chat(_ server: TestServer, marker: String) async throws {
        let alice = try await server.online("alice", "pc")
        let bob = try await server.online("bob", "pc")
        try await alice.send("<message to='bob@example.test' type='chat' id='m1'><body>\(marker) to bob</body></message>")
        _ = try await bob.next { $0.name == "message" && $0.child("body") != nil }
        try await bob.send("<message to='carol@example.test' type='chat' id='m2'><body>\(marker) to carol (offline)</body></message>")
        // A retraction in alice's own history does not touch the audit record.
        try await alice.send("<message to='bob@example.test' type='chat' id='m3'><retract id='m1' xmlns='urn:xmpp:message-retract:1'/><body>retracted</body></message>")
        _ = try await bob.next { $0.name == "message" && $0.id == "m3" }
        // Ack round trip: everything accepted so far is durable.
        try await alice.send("<iq type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>")
        _ = try await alice.next { $0.id == "p1" }
        await server.server.context.durabilityBarrier()
        await alice.close()
        await bob.close()
    }

    private func api(
        _ server: TestServer, _ method: String, _ path: String, user: String, password: String = "pw", body: String? = nil
    ) async throws -> (Int, Data) {
        var headers = ["Authorization": "Basic " + Data("\(user):\(password)".utf8).base64EncodedString()]
        if body != nil { headers["Content-Type"] = "application/json" }
        let response = try await HTTPTestClient.request(
            port: server.ports.http ?? 0, method: method, path: path, headers: headers, body: Array((body ?? "").utf8))
        return (response.status, Data(response.body))
    }

    private func json(_ data: Data) -> Any? { try? JSONSerialization.jsonObject(with: data) }

    @Test func noPlaintextOfAKnownMessageOnDisk() async throws {
        let server = try await start()
        let marker = "plaintext-canary-\(UUID().uuidString)"
        try await chat(server, marker: marker)
        // The archive still serves it to its owner.
        let alice = try await server.online("alice", "pc2")
        try await alice.send("<iq type='set' id='q1'><query xmlns='urn:xmpp:mam:2' queryid='x'/></iq>")
        let archived = try await alice.next { $0.name == "message" && $0.child("result") != nil }
        #expect(XMLSerializer.string(archived).contains(marker))
        _ = try await alice.next { $0.id == "q1" }
        // An attachment of several chunks: sealed on disk, served back intact.
        let ns = "urn:xmpp:http:upload:0"
        let file = Array(String(repeating: "\(marker) attachment line\n", count: 4000).utf8)
        try await alice.send("<iq type='get' id='u1' to='example.test'><request xmlns='\(ns)' filename='notes.txt' size='\(file.count)' content-type='text/plain'/></iq>")
        let slot = try await alice.next { $0.id == "u1" }.child("slot", namespace: ns)
        func path(_ url: String) -> String { url.range(of: "/upload/").map { String(url[$0.lowerBound...]) } ?? url }
        let put = path(try #require(slot?.child("put")?[attribute: "url"]))
        let get = path(try #require(slot?.child("get")?[attribute: "url"]))
        #expect(try await HTTPTestClient.request(port: server.ports.http ?? 0, method: "PUT", path: put, body: file).status == 201)
        let fetched = try await HTTPTestClient.request(port: server.ports.http ?? 0, method: "GET", path: get)
        #expect(fetched.status == 200)
        #expect(fetched.body == file)
        await alice.close()
        let directory = server.dataDirectory
        await server.stop(keepData: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        var scanned = 0
        let files = (try FileManager.default.subpathsOfDirectory(atPath: directory)).map { directory + "/" + $0 }
        for file in files {
            guard let data = FileManager.default.contents(atPath: file) else { continue }
            scanned += data.count
            #expect(data.range(of: Data(marker.utf8)) == nil, "plaintext found in \(file)")
        }
        #expect(scanned > 10_000)
    }

    @Test func retentionDeletesOldRecordsAndSaysSo() async throws {
        let server = try await TestServer.start { $0.c2s.requireTLS = false }
        defer { Task { await server.stop() } }
        let now = Date().timeIntervalSince1970
        try await server.stores.appendAudit([
            AuditRecord(time: now - 40 * 86400, sender: "a@example.test", recipients: ["b@example.test"], type: "chat", stanza: "<m>old</m>"),
            AuditRecord(time: now - 1000, sender: "a@example.test", recipients: ["b@example.test"], type: "chat", stanza: "<m>new</m>"),
        ])
        var security = ServerConfiguration.Security()
        security.auditRetentionDays = 30
        let trail = try #require(server.server.context.modules.service(TrailService.self))
        await AuditModule.enforceRetention(security, directory: DirectoryRuntime(), trail: trail, server: server.server.context)
        #expect(try await server.stores.auditCount() == 1)
        let entries = try await server.stores.trail(from: 1, limit: 100)
        #expect(entries.contains { $0.action == "audit.retention" && $0.details.contains("\"deleted\":\"1\"") })
    }

    @Test func auditorsReadOnlyWhatAnApproverGranted() async throws {
        let server = try await start()
        defer { Task { await server.stop() } }
        let marker = "audit-marker-\(UUID().uuidString.prefix(8))"
        try await chat(server, marker: marker)
        let now = ISO8601DateFormatter().string(from: Date().addingTimeInterval(3600))
        let earlier = ISO8601DateFormatter().string(from: Date().addingTimeInterval(-3600))
        let requestBody = #"{"users":["alice"],"from":"\#(earlier)","to":"\#(now)","reason":"case 42: leak investigation"}"#

        // Only auditors may ask; wrong passwords and admins are refused.
        #expect(try await api(server, "POST", "/api/audit/requests", user: "audrey", password: "wrong", body: requestBody).0 == 401)
        #expect(try await api(server, "POST", "/api/audit/requests", user: "sam", body: requestBody).0 == 403)
        let (created, createdBody) = try await api(server, "POST", "/api/audit/requests", user: "audrey", body: requestBody)
        #expect(created == 201)
        let id = (json(createdBody) as? [String: Any])?["id"] as? Int ?? -1
        #expect(id > 0)

        // Pending: nothing to read. The auditor cannot approve, nor can the admin.
        #expect(try await api(server, "GET", "/api/audit/requests/\(id)/messages", user: "audrey").0 == 403)
        #expect(try await api(server, "POST", "/api/audit/requests/\(id)/approve", user: "audrey", body: "{}").0 == 403)
        #expect(try await api(server, "POST", "/api/audit/requests/\(id)/approve", user: "sam", body: "{}").0 == 403)
        let (approved, _) = try await api(server, "POST", "/api/audit/requests/\(id)/approve", user: "paul", body: #"{"hours":2}"#)
        #expect(approved == 200)
        #expect(try await api(server, "POST", "/api/audit/requests/\(id)/approve", user: "paul", body: "{}").0 == 409)

        // The approver cannot read either; the auditor reads alice's messages only.
        #expect(try await api(server, "GET", "/api/audit/requests/\(id)/messages", user: "paul").0 == 403)
        let (status, found) = try await api(server, "GET", "/api/audit/requests/\(id)/messages?q=\(marker)", user: "audrey")
        #expect(status == 200)
        let messages = json(found) as? [[String: Any]] ?? []
        #expect(messages.count == 1)
        #expect((messages.first?["body"] as? String)?.contains("to bob") == true)
        #expect(messages.first?["from"] as? String == "alice@example.test")
        // bob → carol is outside the scope (neither is named).
        #expect(!String(decoding: found, as: UTF8.self).contains("to carol"))
        let (_, all) = try await api(server, "GET", "/api/audit/requests/\(id)/messages", user: "audrey")
        // The retracted message is still in the audit record.
        #expect((json(all) as? [[String: Any]] ?? []).contains { ($0["body"] as? String)?.contains("\(marker) to bob") == true })
        let (exported, text) = try await api(server, "GET", "/api/audit/requests/\(id)/export?format=text", user: "audrey")
        #expect(exported == 200)
        #expect(String(decoding: text, as: UTF8.self).contains("case 42"))

        // Another auditor's request cannot be used by someone else; unknown ids are 404.
        #expect(try await api(server, "GET", "/api/audit/requests/\(id + 100)/messages", user: "audrey").0 == 404)

        // Everything is in the trail, which verifies.
        let trail = try await server.stores.trail(from: 1, limit: 1000).map(\.action)
        for action in ["server.start", "directory.change", "audit.request", "audit.approve", "audit.search", "audit.view", "audit.export"] {
            #expect(trail.contains(action), "\(action) missing from \(trail)")
        }
        let publicKey = try Trail.publicKey(in: server.dataDirectory + "/keys")
        let report = try await Trail.verify(store: server.stores, publicKey: publicKey, anchorsPath: server.dataDirectory + "/trail-anchors.log")
        #expect(report.intact, "\(report.problems)")
    }
}
