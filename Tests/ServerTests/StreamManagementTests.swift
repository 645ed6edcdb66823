import SwitchboardTestSupport
import Testing
import XMLStream
import XMPPCore

@Suite struct StreamManagementTests {
    private let sm = "urn:xmpp:sm:3"

    private func start(resumption: Int = 300) async throws -> TestServer {
        let server = try await TestServer.start {
            $0.c2s.requireTLS = false
            $0.limits.resumptionTimeoutSeconds = resumption
        }
        try await server.addUser("alice", password: "pw")
        try await server.addUser("bob", password: "pw")
        return server
    }


    @Test func acksCountHandledStanzas() async throws {
        let server = try await start()
        let alice = try await server.connect()
        let features = try await alice.authenticate("alice", password: "pw")
        #expect(features.child("sm", namespace: sm) != nil)
        _ = try await alice.bind("desk")
        try await alice.send("<enable xmlns='urn:xmpp:sm:3'/>")
        let enabled = try await alice.next()
        #expect(enabled.name == "enabled" && enabled[attribute: "id"] == nil)
        for index in 0..<3 { try await alice.send("<iq type='get' id='p\(index)'><ping xmlns='urn:xmpp:ping'/></iq>") }
        try await alice.send("<r xmlns='urn:xmpp:sm:3'/>")
        let ack = try await alice.next { $0.name == "a" }
        #expect(ack[attribute: "h"] == "3")
        // Acknowledging more than was sent ends the stream, saying how many were sent.
        try await alice.send("<a xmlns='urn:xmpp:sm:3' h='99'/>")
        let error = try await alice.next { $0.name == "error" }
        let tooHigh = error.child("handled-count-too-high", namespace: sm)
        #expect(tooHigh?[attribute: "h"] == "99" && tooHigh?[attribute: "send-count"] == "3")
        await alice.close()
        await server.stop()
    }

    @Test func resumptionRedeliversExactlyWhatWasNotAcknowledged() async throws {
        let server = try await start()
        let bob = try await server.online("bob", "pc")
        var alice = try await server.online("alice", "phone")
        try await alice.send("<enable xmlns='urn:xmpp:sm:3' resume='true'/>")
        let enabled = try await alice.next { $0.name == "enabled" }
        let token = try #require(enabled[attribute: "id"])
        #expect(enabled[attribute: "resume"] == "true")

        for index in 1...3 { try await bob.send("<message to='alice@example.test/phone' type='chat' id='m\(index)'><body>\(index)</body></message>") }
        for index in 1...3 { #expect(try await alice.next { $0.name == "message" }.id == "m\(index)") }
        // The network drops; alice had really handled only m1. Meanwhile bob writes more.
        await alice.disconnect()
        try await Task.sleep(for: .milliseconds(200))
        for index in 4...5 { try await bob.send("<message to='alice@example.test/phone' type='chat' id='m\(index)'><body>\(index)</body></message>") }
        try await bob.send("<iq type='get' id='sync'><ping xmlns='urn:xmpp:ping'/></iq>")
        _ = try await bob.next { $0.id == "sync" }

        alice = try await server.connect()
        try await alice.authenticate("alice", password: "pw")
        // h counts stanzas the server sent since enable: presence echo excluded (before enable);
        // the 'enabled' nonza is not a stanza, so m1 is number 1.
        try await alice.send("<resume xmlns='urn:xmpp:sm:3' previd='\(token)' h='1'/>")
        let resumed = try await alice.next()
        #expect(resumed.name == "resumed", "\(XMLSerializer.string(resumed))")
        var ids: [String] = []
        while ids.count < 4 {
            let element = try await alice.next()
            if element.name == "message", let id = element.id { ids.append(id) }
        }
        #expect(ids == ["m2", "m3", "m4", "m5"])
        // Still the same session: the full JID gets new messages, presence survived.
        try await bob.send("<message to='alice@example.test/phone' type='chat' id='m6'><body>6</body></message>")
        #expect(try await alice.next { $0.name == "message" }.id == "m6")
        await alice.close()
        await bob.close()
        await server.stop()
    }

    @Test func unresumedSessionsMessagesGoOfflineNotLost() async throws {
        let server = try await start(resumption: 1)
        let bob = try await server.online("bob", "pc")
        let alice = try await server.online("alice", "phone")
        try await alice.send("<enable xmlns='urn:xmpp:sm:3' resume='true'/>")
        _ = try await alice.next { $0.name == "enabled" }
        try await bob.send("<message to='alice@example.test/phone' type='chat' id='lost?'><body>keep me</body></message>")
        _ = try await alice.next { $0.name == "message" }
        await alice.disconnect()  // never acknowledged
        // Held while resumable (a slow machine can only make this hold longer), then stored.
        #expect(try await server.stores.count(for: "alice@example.test") == 0)
        #expect(try await eventually { try await server.stores.count(for: "alice@example.test") == 1 })
        let again = try await server.connect()
        try await again.login("alice", password: "pw", resource: "desk")
        try await again.send("<presence/>")
        let message = try await again.next { $0.name == "message" }
        #expect(message.child("body")?.text == "keep me")
        await again.close()
        await bob.close()
        await server.stop()
    }

    @Test func resumingSomeoneElsesSessionFails() async throws {
        let server = try await start()
        let alice = try await server.online("alice", "phone")
        try await alice.send("<enable xmlns='urn:xmpp:sm:3' resume='true'/>")
        let token = try #require(try await alice.next { $0.name == "enabled" }[attribute: "id"])
        let bob = try await server.connect()
        try await bob.authenticate("bob", password: "pw")
        try await bob.send("<resume xmlns='urn:xmpp:sm:3' previd='\(token)' h='0'/>")
        let failed = try await bob.next()
        #expect(failed.name == "failed")
        // ... and alice can still resume her own session.
        await alice.disconnect()
        try await Task.sleep(for: .milliseconds(200))
        let back = try await server.connect()
        try await back.authenticate("alice", password: "pw")
        try await back.send("<resume xmlns='urn:xmpp:sm:3' previd='\(token)' h='0'/>")
        #expect(try await back.next().name == "resumed")
        await back.close()
        await bob.close()
        await server.stop()
    }
}
