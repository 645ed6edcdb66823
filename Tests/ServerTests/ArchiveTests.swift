import Foundation
import Directory
import Modules
@testable import SQLiteStorage
import Server
import Storage
import SwitchboardTestSupport
import Testing
import XMLStream
import XMPPCore

@Suite struct ArchiveTests {
    private let mam = "urn:xmpp:mam:2"


    /// Sends a MAM query; returns the forwarded messages' bodies, result ids, the stanza-ids
    /// each forwarded message carries (by: id) and the <fin/>.
    private func query(_ client: TestClient, id: String, _ inner: String = "") async throws -> (
        bodies: [String], ids: [String], stanzaIDs: [[String: String]], fin: XMLElement
    ) {
        try await client.send("<iq type='set' id='\(id)'><query xmlns='urn:xmpp:mam:2' queryid='\(id)'>\(inner)</query></iq>")
        var bodies: [String] = []
        var ids: [String] = []
        var stanzaIDs: [[String: String]] = []
        while true {
            let element = try await client.next()
            if element.name == "iq", element.id == id {
                let fin = try #require(element.child("fin", namespace: mam), "\(XMLSerializer.string(element))")
                return (bodies, ids, stanzaIDs, fin)
            }
            if let result = element.child("result", namespace: mam), result[attribute: "queryid"] == id {
                ids.append(result[attribute: "id"] ?? "")
                let message = result.child("forwarded")?.child("message")
                bodies.append(message?.child("body")?.text ?? "")
                let marks = (message.map { Array($0.elements) } ?? []).filter { $0.name == "stanza-id" && $0.namespace == "urn:xmpp:sid:0" }
                stanzaIDs.append(Dictionary(marks.map { ($0[attribute: "by"] ?? "", $0[attribute: "id"] ?? "") }) { first, _ in first })
            }
        }
    }

    @Test func preferencesChooseWhatGoesIntoOnesOwnHistory() async throws {
        let server = try await TestServer.start { $0.c2s.requireTLS = false }
        for user in ["alice", "bob", "carol"] { try await server.addUser(user, password: "pw") }
        let alice = try await server.online("alice", "desk")
        let bob = try await server.online("bob", "pc")
        let carol = try await server.online("carol", "pc")
        // Defaults: always, empty lists.
        try await alice.send("<iq type='get' id='p0'><prefs xmlns='urn:xmpp:mam:2'/></iq>")
        #expect(try await alice.next { $0.id == "p0" }.child("prefs")?[attribute: "default"] == "always")
        try await alice.send(
            "<iq type='set' id='p1'><prefs xmlns='urn:xmpp:mam:2' default='never'><always><jid>bob@example.test</jid></always><never/></prefs></iq>")
        let set = try await alice.next { $0.id == "p1" }
        #expect(set.stanzaType == "result")
        #expect(set.child("prefs")?.child("always")?.child("jid")?.text == "bob@example.test")
        try await bob.send("<message to='alice@example.test' type='chat' id='b1'><body>from bob</body></message>")
        _ = try await alice.next { $0.id == "b1" }
        try await carol.send("<message to='alice@example.test' type='chat' id='c1'><body>from carol</body></message>")
        _ = try await alice.next { $0.id == "c1" }
        try await alice.send("<message to='carol@example.test' type='chat' id='a1'><body>to carol</body></message>")
        _ = try await carol.next { $0.id == "a1" }
        await server.server.context.durabilityBarrier()
        #expect(try await query(alice, id: "q1").bodies == ["from bob"])
        // Carol's own history is not governed by alice's choice.
        #expect(try await query(carol, id: "q2").bodies == ["from carol", "to carol"])
        // Bad input: an unknown default, a malformed JID.
        try await alice.send("<iq type='set' id='p2'><prefs xmlns='urn:xmpp:mam:2' default='sometimes'/></iq>")
        #expect(try await alice.next { $0.id == "p2" }.child("error")?.child("bad-request") != nil)
        try await alice.send("<iq type='set' id='p3'><prefs xmlns='urn:xmpp:mam:2' default='always'><always><jid>@@</jid></always></prefs></iq>")
        #expect(try await alice.next { $0.id == "p3" }.child("error")?.child("jid-malformed") != nil)
        for client in [alice, bob, carol] { await client.close() }
        // Stored: a restart keeps them.
        let directory = server.dataDirectory
        await server.stop(keepData: true)
        let again = try await TestServer.start(dataDirectory: directory) { $0.c2s.requireTLS = false }
        defer { Task { await again.stop() } }
        let back = try await again.online("alice", "desk")
        try await back.send("<iq type='get' id='p4'><prefs xmlns='urn:xmpp:mam:2'/></iq>")
        #expect(try await back.next { $0.id == "p4" }.child("prefs")?[attribute: "default"] == "never")
        await back.close()
    }

    @Test func bothSidesArchiveAndPageThroughHistory() async throws {
        let server = try await TestServer.start { $0.c2s.requireTLS = false }
        try await server.addUser("alice", password: "pw")
        try await server.addUser("bob", password: "pw")
        try await server.addUser("carol", password: "pw")
        let alice = try await server.online("alice", "desk")
        let bob = try await server.online("bob", "pc")
        for index in 1...5 {
            try await alice.send("<message to='bob@example.test' type='chat' id='a\(index)'><body>msg \(index)</body></message>")
            let delivered = try await bob.next { $0.name == "message" }
            let stanzaID = delivered.child("stanza-id", namespace: "urn:xmpp:sid:0")
            #expect(stanzaID?[attribute: "by"] == "bob@example.test" && stanzaID?[attribute: "id"] != nil)
        }
        try await alice.send("<message to='carol@example.test' type='chat' id='c1'><body>to carol (offline)</body></message>")
        // A chat state alone is not archived.
        try await alice.send("<message to='bob@example.test' type='chat'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>")

        let page1 = try await query(alice, id: "q1", "<set xmlns='http://jabber.org/protocol/rsm'><max>2</max></set>")
        #expect(page1.bodies == ["msg 1", "msg 2"])
        #expect(page1.fin[attribute: "complete"] == nil)
        let last = try #require(page1.fin.child("set")?.child("last")?.text)
        let page2 = try await query(alice, id: "q2", "<set xmlns='http://jabber.org/protocol/rsm'><max>10</max><after>\(last)</after></set>")
        #expect(page2.bodies == ["msg 3", "msg 4", "msg 5", "to carol (offline)"])
        #expect(page2.fin[attribute: "complete"] == "true")

        let withBob = """
            <x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>urn:xmpp:mam:2</value></field>\
            <field var='with'><value>carol@example.test</value></field></x>
            """
        #expect(try await query(alice, id: "q3", withBob).bodies == ["to carol (offline)"])
        let lastPage = try await query(alice, id: "q4", "<set xmlns='http://jabber.org/protocol/rsm'><max>2</max><before/></set>")
        #expect(lastPage.bodies == ["msg 5", "to carol (offline)"])

        // Bob's archive holds the incoming side, under the ids he saw as stanza-id.
        let bobs = try await query(bob, id: "b1")
        #expect(bobs.bodies == (1...5).map { "msg \($0)" })
        // Both copies and the audit record store one text; the sender's copy is read without
        // the recipient's archive id (XEP-0313 §5.1), the recipient's with his own.
        #expect(bobs.stanzaIDs == bobs.ids.map { ["bob@example.test": $0] })
        #expect(page1.stanzaIDs == [[:], [:]] && page2.stanzaIDs.allSatisfy(\.isEmpty))
        #expect(try await server.stores.archiveCount(owner: "carol@example.test") == 1)
        // The router's one text is stored once: every copy names its message's audit record.
        let ownText = try await server.stores.archiveDatabase.run { db in
            try db.query("SELECT count(*), count(content) FROM archive") { [$0.int(0), $0.int(1)] }.first
        }
        #expect(ownText == [12, 12])
        #expect(try await unlistedSharingCopies(in: server.stores).isEmpty)
        // Every copy's archive id was made from its position: no text ids, no id index entries.
        let textIDs = try await server.stores.archiveDatabase.run { db in
            try db.query("SELECT count(uid), count(uid_random) FROM archive") { [$0.int(0), $0.int(1)] }.first
        }
        #expect(textIDs == [0, 12])
        await alice.close()
        await bob.close()
        await server.stop()
    }

    /// `/metrics` shows the journal: entries waiting for the database, and applies that failed
    /// (the database refused them; retried until it accepts, nothing lost).
    @Test func metricsShowTheJournalsBacklogAndFailedApplies() async throws {
        let server = try await TestServer.start { $0.c2s.requireTLS = false }
        try await server.addUser("alice", password: "pw")
        try await server.addUser("bob", password: "pw")
        let alice = try await server.online("alice", "desk")
        let bob = try await server.online("bob", "pc")
        func metric(_ name: String) async throws -> Double? {
            let response = try await HTTPTestClient.request(port: server.ports.http ?? 0, method: "GET", path: "/metrics")
            let line = response.text.split(separator: "\n").first { $0.hasPrefix(name + " ") }
            return line.flatMap { Double($0.split(separator: " ").last ?? "") }
        }
        try await refuseAuditRecords(in: server.stores)
        try await alice.send("<message to='bob@example.test' type='chat' id='m1'><body>kept</body></message>")
        _ = try await bob.next { $0.name == "message" }
        await server.server.settle()
        let applied = Task { await server.applied() }
        #expect(await eventually { (try? await metric("switchboard_journal_apply_failures_total")).map { $0 >= 1 } ?? false })
        #expect(try await metric("switchboard_journal_backlog_entries") == 3)
        try await refuseAuditRecords(in: server.stores, false)
        await applied.value
        #expect(try await metric("switchboard_journal_backlog_entries") == 0)
        #expect(try await server.stores.archiveCount(owner: "bob@example.test") == 1)
        await alice.close()
        await bob.close()
        await server.stop()
    }

    /// Positions continue after every stored one: with the clock behind the last stored position
    /// after a restart, a new message must not take a stored position (the journal's idempotent
    /// insert would skip its copies and audit record as already stored).
    @Test func positionsContinueAfterTheStoredOnesAcrossARestart() async throws {
        let server = try await TestServer.start { $0.c2s.requireTLS = false }
        try await server.addUser("alice", password: "pw")
        try await server.addUser("bob", password: "pw")
        // Stored a minute ahead of the clock, as a clock stepped back since leaves it.
        let ahead = Int64(Date().timeIntervalSince1970 * 1_000_000) + 60_000_000
        try await server.stores.append([
            ArchiveRecord(
                id: ahead, uid: "ahead", owner: "bob@example.test", peer: "carol@example.test", outgoing: false,
                time: Date().timeIntervalSince1970, stanza: "<message xmlns='jabber:client'><body>earlier</body></message>")
        ])
        let directory = server.dataDirectory
        await server.stop(keepData: true)
        let again = try await TestServer.start(dataDirectory: directory) { $0.c2s.requireTLS = false }
        let alice = try await again.online("alice", "desk")
        let bob = try await again.online("bob", "pc")
        try await alice.send("<message to='bob@example.test' type='chat' id='m1'><body>after the restart</body></message>")
        _ = try await bob.next { $0.name == "message" }
        await again.applied()
        let later = try await again.stores.archiveDatabase.run { db in
            try db.query(
                "SELECT (SELECT count(*) FROM archive WHERE id > ?1), (SELECT count(*) FROM audit_records WHERE id > ?1)", [.int(ahead)]
            ) { [$0.int(0), $0.int(1)] }.first
        }
        #expect(later == [2, 1])
        #expect(try await again.stores.archiveCount(owner: "bob@example.test") == 2)
        await alice.close()
        await bob.close()
        await again.stop()
    }

    @Test func aDeletedUsersMessagesStillInTheJournalAreDeletedToo() async throws {
        let server = try await TestServer.start { $0.c2s.requireTLS = false }
        let directory = try #require(server.server.context.modules.service(DirectoryRuntime.self)?.service)
        try await directory.createUser(DirectoryUser(username: "alice", displayName: "Alice"), credentials: try StoredCredentials.derive(password: "pw"))
        try await server.addUser("bob", password: "pw")
        let alice = try await server.online("alice", "desk")
        let bob = try await server.online("bob", "pc")
        for index in 1...5 {
            try await alice.send("<message to='bob@example.test' type='chat'><body>\(index)</body></message>")
            _ = try await bob.next { $0.name == "message" }
        }
        // The five are in the journal, not yet in the store (applies run every few seconds).
        await alice.close()
        try await directory.deleteUser("alice")
        await server.applied()
        #expect(try await server.stores.archiveCount(owner: "alice@example.test") == 0)
        #expect(try await server.stores.archiveCount(owner: "bob@example.test") == 5)
        await bob.close()
        await server.stop()
    }

    @Test func streamManagementAcksOnlyAfterTheArchiveIsDurable() async throws {
        let server = try await TestServer.start { $0.c2s.requireTLS = false }
        try await server.addUser("alice", password: "pw")
        try await server.addUser("bob", password: "pw")
        let alice = try await server.online("alice", "desk")
        try await alice.send("<enable xmlns='urn:xmpp:sm:3'/>")
        _ = try await alice.next { $0.name == "enabled" }
        var burst = ""
        for index in 1...50 { burst += "<message to='bob@example.test' type='chat' id='x\(index)'><body>\(index)</body></message>" }
        try await alice.send(burst + "<r xmlns='urn:xmpp:sm:3'/>")
        let ack = try await alice.next { $0.name == "a" }
        #expect(ack[attribute: "h"] == "50")
        // By the time the ack arrived, all 50 were durable for both archives: on disk in the
        // message journal, or already applied to the store (a segment goes only once applied).
        let onDisk = try server.journalEntries()
        for owner in ["alice@example.test", "bob@example.test"] {
            let journaled = Set(onDisk.compactMap { entry -> Int64? in
                if case .archive(let record) = entry, record.owner == owner { return record.id }
                return nil
            })
            let stored = try await server.stores.archiveCount(owner: owner)
            #expect(journaled.count + stored >= 50, "\(owner): \(journaled.count) journaled, \(stored) stored")
        }
        await server.applied()
        #expect(try await server.stores.archiveCount(owner: "alice@example.test") == 50)
        #expect(try await server.stores.archiveCount(owner: "bob@example.test") == 50)
        await alice.close()
        await server.stop()
    }

    @Test func forgedStanzaIDsAreReplaced() async throws {
        let server = try await TestServer.start { $0.c2s.requireTLS = false }
        try await server.addUser("alice", password: "pw")
        try await server.addUser("bob", password: "pw")
        let alice = try await server.online("alice", "desk")
        let bob = try await server.online("bob", "pc")
        try await alice.send(
            "<message to='bob@example.test' type='chat'><body>x</body><stanza-id xmlns='urn:xmpp:sid:0' by='bob@example.test' id='forged'/></message>")
        let delivered = try await bob.next { $0.name == "message" }
        let ids = delivered.elements.filter { $0.name == "stanza-id" }.map { $0[attribute: "id"] }
        #expect(ids.count == 1 && ids.first != "forged")
        await alice.close()
        await bob.close()
        await server.stop()
    }

    @Test func receiptsMarkersAndRetractionsAreArchivedChatStatesAreNot() async throws {
        let server = try await TestServer.start { $0.c2s.requireTLS = false }
        try await server.addUser("alice", password: "pw")
        try await server.addUser("bob", password: "pw")
        let alice = try await server.online("alice", "desk")
        let bob = try await server.online("bob", "pc")
        let stanzas = [
            "<message to='bob@example.test' type='chat' id='m1'><body>hello</body><request xmlns='urn:xmpp:receipts'/></message>",
            "<message to='bob@example.test' type='chat'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>",
            "<message to='bob@example.test' type='chat' id='m2'><retract xmlns='urn:xmpp:message-retract:1' id='m1'/><fallback xmlns='urn:xmpp:fallback:0' for='urn:xmpp:message-retract:1'/></message>",
        ]
        for stanza in stanzas { try await alice.send(stanza) }
        try await bob.send("<message to='alice@example.test' type='chat'><received xmlns='urn:xmpp:receipts' id='m1'/></message>")
        try await bob.send("<message to='alice@example.test' type='chat'><displayed xmlns='urn:xmpp:chat-markers:0' id='m1'/></message>")
        try await bob.send("<iq type='get' id='sync'><ping xmlns='urn:xmpp:ping'/></iq>")
        _ = try await bob.next { $0.id == "sync" }
        let page = try await query(alice, id: "q")
        // message, retraction, receipt, marker: 4 entries; the chat state is not kept.
        #expect(page.ids.count == 4)
        await alice.close()
        await bob.close()
        await server.stop()
    }
}
