import SwitchboardTestSupport
import Testing
import XMLStream
import XMPPCore

@Suite struct ClientFeatureTests {

    @Test func carbonsCopySentAndReceivedChatsToOtherDevices() async throws {
        let server = try await TestServer.start { $0.c2s.requireTLS = false }
        try await server.addUser("alice", password: "pw")
        try await server.addUser("bob", password: "pw")
        let desk = try await server.online("alice", "desk")
        let phone = try await server.online("alice", "phone")
        for client in [desk, phone] {
            try await client.send("<iq type='set' id='c'><enable xmlns='urn:xmpp:carbons:2'/></iq>")
            _ = try await client.next { $0.id == "c" && $0.stanzaType == "result" }
        }
        let bob = try await server.online("bob", "pc")

        try await bob.send("<message to='alice@example.test/desk' type='chat' id='in1'><body>to your desk</body></message>")
        let atDesk = try await desk.next { $0.name == "message" }
        #expect(atDesk.child("body")?.text == "to your desk")
        let received = try await phone.next { $0.name == "message" }
        let forwarded = received.child("received", namespace: "urn:xmpp:carbons:2")?.child("forwarded", namespace: "urn:xmpp:forward:0")
        #expect(received[attribute: "from"] == "alice@example.test")
        #expect(forwarded?.child("message")?.child("body")?.text == "to your desk")
        #expect(forwarded?.child("message")?[attribute: "from"] == "bob@example.test/pc")

        try await desk.send("<message to='bob@example.test' type='chat' id='out1'><body>from my desk</body></message>")
        _ = try await bob.next { $0.name == "message" }
        let sent = try await phone.next { $0.name == "message" }
        let copy = sent.child("sent", namespace: "urn:xmpp:carbons:2")?.child("forwarded")?.child("message")
        #expect(copy?.child("body")?.text == "from my desk")
        #expect(copy?[attribute: "to"] == "bob@example.test")

        // Private messages are not copied.
        try await desk.send(
            "<message to='bob@example.test' type='chat' id='p1'><body>secret</body><private xmlns='urn:xmpp:carbons:2'/></message>")
        _ = try await bob.next { $0.id == "p1" }
        try await phone.send("<iq type='get' id='sync'><ping xmlns='urn:xmpp:ping'/></iq>")
        let next = try await phone.next { $0.name == "message" || $0.id == "sync" }
        #expect(next.id == "sync", "private message was carbon-copied")
        for client in [desk, phone, bob] { await client.close() }
        await server.stop()
    }

    @Test func inactiveClientGetsPresenceCollapsedAndFlushedBeforeImportantStanzas() async throws {
        let server = try await TestServer.start { $0.c2s.requireTLS = false }
        try await server.addUser("alice", password: "pw")
        try await server.addUser("bob", password: "pw")
        let phone = try await server.online("alice", "phone")
        let bob = try await server.online("bob", "pc")
        try await phone.send("<inactive xmlns='urn:xmpp:csi:0'/>")
        try await phone.send("<iq type='get' id='x'><ping xmlns='urn:xmpp:ping'/></iq>")
        _ = try await phone.next { $0.id == "x" }
        for status in ["busy", "away", "back"] {
            try await bob.send("<presence to='alice@example.test/phone'><status>\(status)</status></presence>")
        }
        try await bob.send("<message to='alice@example.test/phone' type='chat' id='m'><body>hi</body></message>")
        // Held presence is collapsed to the latest and flushed just before the message.
        let presence = try await phone.next()
        #expect(presence.name == "presence" && presence.child("status")?.text == "back", "\(XMLSerializer.string(presence))")
        let message = try await phone.next()
        #expect(message.id == "m", "\(XMLSerializer.string(message))")
        // Active again: presence flows at once.
        try await phone.send("<active xmlns='urn:xmpp:csi:0'/>")
        try await bob.send("<presence to='alice@example.test/phone'><status>now</status></presence>")
        let live = try await phone.next()
        #expect(live.child("status")?.text == "now")
        await phone.close()
        await bob.close()
        await server.stop()
    }

    @Test func blockedAddressesCannotReachTheUserAndViceVersa() async throws {
        let server = try await TestServer.start { $0.c2s.requireTLS = false }
        for user in ["alice", "bob", "carol"] { try await server.addUser(user, password: "pw") }
        let alice = try await server.online("alice", "desk")
        let bob = try await server.online("bob", "pc")
        let carol = try await server.online("carol", "pc")

        try await alice.send("<iq type='set' id='b1'><block xmlns='urn:xmpp:blocking'><item jid='bob@example.test'/></block></iq>")
        let push = try await alice.next { $0.id == "block-push" }
        #expect(push.child("block", namespace: "urn:xmpp:blocking")?.child("item")?[attribute: "jid"] == "bob@example.test")
        _ = try await alice.next { $0.id == "b1" && $0.stanzaType == "result" }

        // bob -> alice bounces; alice -> bob is refused with <blocked/>; carol still gets through.
        try await bob.send("<message to='alice@example.test' type='chat' id='m1'><body>hi</body></message>")
        let bounce = try await bob.next { $0.id == "m1" }
        #expect(bounce.child("error")?.child("service-unavailable", namespace: NS.stanzaErrors) != nil)
        try await alice.send("<message to='bob@example.test' type='chat' id='m2'><body>hi</body></message>")
        let refused = try await alice.next { $0.id == "m2" }
        #expect(refused.child("error")?.child("not-acceptable", namespace: NS.stanzaErrors) != nil)
        #expect(refused.child("error")?.child("blocked", namespace: "urn:xmpp:blocking:errors") != nil)
        try await carol.send("<message to='alice@example.test' type='chat' id='m3'><body>hello</body></message>")
        let fromCarol = try await alice.next { $0.name == "message" }
        #expect(fromCarol.id == "m3")

        // The list survives a new login, and unblocking all restores delivery.
        let again = try await server.online("alice", "phone")
        try await again.send("<iq type='get' id='l'><blocklist xmlns='urn:xmpp:blocking'/></iq>")
        let list = try await again.next { $0.id == "l" }
        #expect(list.child("blocklist", namespace: "urn:xmpp:blocking")?.elements.map { $0[attribute: "jid"] } == ["bob@example.test"])
        try await again.send("<iq type='set' id='u'><unblock xmlns='urn:xmpp:blocking'/></iq>")
        _ = try await again.next { $0.id == "u" }
        try await bob.send("<message to='alice@example.test/phone' type='chat' id='m4'><body>again</body></message>")
        let delivered = try await again.next { $0.name == "message" }
        #expect(delivered.id == "m4")
        for client in [alice, bob, carol, again] { await client.close() }
        await server.stop()
    }
}
