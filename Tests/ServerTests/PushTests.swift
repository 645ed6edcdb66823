import SwitchboardTestSupport
import Testing
import XMLStream
import XMPPCore

@Suite struct PushTests {

    @Test func sleepingAndOfflineUsersArePushedWithoutTheBody() async throws {
        let server = try await TestServer.start { $0.c2s.requireTLS = false }
        for user in ["alice", "bob", "pushbot"] { try await server.addUser(user, password: "pw") }
        let appServer = try await server.online("pushbot", "app")
        let bob = try await server.online("bob", "pc")
        let phone = try await server.online("alice", "phone")
        try await phone.send("<iq type='set' id='e'><enable xmlns='urn:xmpp:push:0' jid='pushbot@example.test/app' node='device-1'><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>http://jabber.org/protocol/pubsub#publish-options</value></field><field var='secret'><value>s3cr3t</value></field></x></enable></iq>")
        _ = try await phone.next { $0.id == "e" && $0.stanzaType == "result" }
        try await phone.send("<enable xmlns='urn:xmpp:sm:3' resume='true'/>")
        _ = try await phone.next { $0.name == "enabled" }

        // Awake: no push.
        try await bob.send("<message to='alice@example.test' type='chat' id='m1'><body>awake?</body></message>")
        _ = try await phone.next { $0.id == "m1" }
        // Asleep (connection lost, session waiting for resumption): pushed.
        await phone.disconnect()
        let phoneJID = try JID("alice@example.test/phone")
        let detached = await eventually { server.server.context.router.session(phoneJID)?.presence.detached == true }
        #expect(detached)
        try await bob.send("<message to='alice@example.test' type='chat' id='m2'><body>confidential</body></message>")
        let push = try await appServer.next { $0.name == "iq" }
        #expect(push[attribute: "from"] == "alice@example.test")
        let pubsub = push.child("pubsub", namespace: "http://jabber.org/protocol/pubsub")
        #expect(pubsub?.child("publish")?[attribute: "node"] == "device-1")
        let form = pubsub?.child("publish")?.child("item")?.child("notification", namespace: "urn:xmpp:push:0")?.child("x")
        let fields: [XMLElement] = form.map { Array($0.elements) } ?? []
        let values = Dictionary(uniqueKeysWithValues: fields.map { ($0[attribute: "var"] ?? "", $0.child("value")?.text ?? "") })
        #expect(values["last-message-sender"] == "bob@example.test")
        #expect(!XMLSerializer.string(push).contains("confidential"))
        #expect(pubsub?.child("publish-options")?.child("x")?.elements.contains { $0.child("value")?.text == "s3cr3t" } == true)
        await appServer.close()
        await bob.close()
        await server.stop()
    }
}
