import Storage
import SwitchboardTestSupport
import Testing
import XMLStream
import XMPPCore

@Suite struct PEPTests {
    private let ps = "http://jabber.org/protocol/pubsub"


    private func publish(_ client: TestClient, id: String, node: String, item: String, payload: String, access: String? = nil, maxItems: String? = nil) async throws -> XMLElement {
        var options = ""
        if access != nil || maxItems != nil {
            options = "<publish-options><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/pubsub#publish-options</value></field>"
            if let access { options += "<field var='pubsub#access_model'><value>\(access)</value></field>" }
            if let maxItems { options += "<field var='pubsub#max_items'><value>\(maxItems)</value></field>" }
            options += "</x></publish-options>"
        }
        try await client.send("<iq type='set' id='\(id)'><pubsub xmlns='\(ps)'><publish node='\(node)'><item id='\(item)'>\(payload)</item></publish>\(options)</pubsub></iq>")
        return try await client.next { $0.id == id }
    }

    private func items(_ client: TestClient, id: String, owner: String, node: String) async throws -> XMLElement {
        try await client.send("<iq type='get' id='\(id)' to='\(owner)'><pubsub xmlns='\(ps)'><items node='\(node)'/></pubsub></iq>")
        return try await client.next { $0.id == id }
    }

    @Test func publishNotifyAccessModelsAndLastItemAtLogin() async throws {
        let server = try await TestServer.start { $0.c2s.requireTLS = false }
        for user in ["alice", "bob", "carol"] { try await server.addUser(user, password: "pw") }
        // alice and bob share presence; carol is a stranger.
        _ = try await server.stores.put(RosterItem(jid: "bob@example.test", subscription: .both), of: "alice@example.test")
        _ = try await server.stores.put(RosterItem(jid: "alice@example.test", subscription: .both), of: "bob@example.test")
        let alice = try await server.online("alice", "desk")
        let bob = try await server.online("bob", "pc")
        let carol = try await server.online("carol", "pc")

        let avatar = "<metadata xmlns='urn:xmpp:avatar:metadata'><info id='abc' bytes='10' type='image/png'/></metadata>"
        let published = try await publish(alice, id: "p1", node: "urn:xmpp:avatar:metadata", item: "abc", payload: avatar)
        #expect(published.stanzaType == "result")
        let event = try await bob.next { $0.name == "message" }
        #expect(event[attribute: "from"] == "alice@example.test")
        #expect(event.child("event")?.child("items")?.child("item")?.child("metadata")?.child("info")?[attribute: "id"] == "abc")
        let denied = try await items(carol, id: "c1", owner: "alice@example.test", node: "urn:xmpp:avatar:metadata")
        #expect(denied.stanzaType == "error")
        let allowed = try await items(bob, id: "b1", owner: "alice@example.test", node: "urn:xmpp:avatar:metadata")
        #expect(allowed.child("pubsub")?.child("items")?.child("item")?[attribute: "id"] == "abc")

        // An open node (OMEMO device list) is readable by anyone.
        _ = try await publish(alice, id: "p2", node: "eu.siacs.conversations.axolotl.devicelist", item: "current",
            payload: "<list xmlns='eu.siacs.conversations.axolotl'><device id='42'/></list>", access: "open")
        let open = try await items(carol, id: "c2", owner: "alice@example.test", node: "eu.siacs.conversations.axolotl.devicelist")
        #expect(open.child("pubsub")?.child("items")?.child("item")?.child("list")?.child("device")?[attribute: "id"] == "42")
        // Changing the access model through publish-options is refused.
        let conflict = try await publish(alice, id: "p3", node: "eu.siacs.conversations.axolotl.devicelist", item: "current",
            payload: "<list xmlns='eu.siacs.conversations.axolotl'/>", access: "whitelist")
        #expect(conflict.child("error")?.child("precondition-not-met", namespace: "http://jabber.org/protocol/pubsub#errors") != nil)

        // Bookmarks: owner only, many items kept.
        for (index, room) in ["a", "b"].enumerated() {
            _ = try await publish(alice, id: "bm\(index)", node: "urn:xmpp:bookmarks:1", item: "\(room)@conference.example.test",
                payload: "<conference xmlns='urn:xmpp:bookmarks:1' autojoin='true'/>", access: "whitelist", maxItems: "max")
        }
        #expect(try await items(bob, id: "b2", owner: "alice@example.test", node: "urn:xmpp:bookmarks:1").stanzaType == "error")
        let bookmarks = try await items(alice, id: "a2", owner: "alice@example.test", node: "urn:xmpp:bookmarks:1")
        #expect(bookmarks.child("pubsub")?.child("items").map { Array($0.elements).count } == 2)

        // bob's new device gets alice's last items when it comes online.
        let phone = try await server.connect()
        try await phone.login("bob", password: "pw", resource: "phone")
        try await phone.send("<presence/>")
        var nodes: Set<String> = []
        while nodes.count < 2 {
            let message = try await phone.next { $0.name == "message" }
            if let node = message.child("event")?.child("items")?[attribute: "node"] { nodes.insert(node) }
        }
        #expect(nodes == ["urn:xmpp:avatar:metadata", "eu.siacs.conversations.axolotl.devicelist"])

        // Retraction is notified.
        try await alice.send("<iq type='set' id='r'><pubsub xmlns='\(ps)'><retract node='urn:xmpp:avatar:metadata' notify='true'><item id='abc'/></retract></pubsub></iq>")
        _ = try await alice.next { $0.id == "r" && $0.stanzaType == "result" }
        let retracted = try await bob.next { $0.name == "message" && $0.child("event")?.child("items")?.child("retract") != nil }
        #expect(retracted.child("event")?.child("items")?.child("retract")?[attribute: "id"] == "abc")
        for client in [alice, bob, carol, phone] { await client.close() }
        await server.stop()
    }
}
