import SwitchboardTestSupport
import Testing
import XMLStream
import XMPPCore

/// RFC 6121 §8 routing rules and RFC 6120 stamping, against the real server.
@Suite struct RoutingTests {
    @Test func bareMessagesSkipNegativePriorityAndFullJIDFallsBackToBare() async throws {
        let server = try await TestServer.start { $0.c2s.requireTLS = false }
        for user in ["alice", "bob"] { try await server.addUser(user, password: "pw") }
        let desk = try await server.online("alice", "desk")
        let bot = try await server.connect()
        try await bot.login("alice", password: "pw", resource: "bot")
        try await bot.send("<presence><priority>-1</priority></presence>")
        _ = try await bot.next { $0.name == "presence" && $0[attribute: "from"] == "alice@example.test/bot" }
        let bob = try await server.online("bob", "pc")

        // To the bare JID: only non-negative priority resources get it.
        try await bob.send("<message to='alice@example.test' type='chat' id='b1'><body>bare</body></message>")
        #expect(try await desk.next { $0.name == "message" }.id == "b1")
        // To a full JID that is not online: treated as the bare JID.
        try await bob.send("<message to='alice@example.test/gone' type='chat' id='b2'><body>full</body></message>")
        #expect(try await desk.next { $0.name == "message" }.id == "b2")
        // To the negative-priority resource by full JID: delivered there.
        try await bob.send("<message to='alice@example.test/bot' type='chat' id='b3'><body>direct</body></message>")
        #expect(try await bot.next { $0.name == "message" }.id == "b3")  // b1 and b2 never reached it
        for client in [desk, bot, bob] { await client.close() }
        await server.stop()
    }

    @Test func theServerStampsFromAndKeepAlivesAreHarmless() async throws {
        let server = try await TestServer.start { $0.c2s.requireTLS = false }
        for user in ["alice", "bob"] { try await server.addUser(user, password: "pw") }
        let alice = try await server.online("alice", "desk")
        let bob = try await server.online("bob", "pc")
        // A forged from is replaced by the sender's real full JID; whitespace between stanzas is ignored.
        try await bob.send("  \n <message to='alice@example.test' from='boss@example.test/x' type='chat' id='f'><body>pay me</body></message> \n ")
        let message = try await alice.next { $0.name == "message" }
        #expect(message[attribute: "from"] == "bob@example.test/pc")
        try await bob.send(" ")
        try await bob.send("<iq type='get' id='p'><ping xmlns='urn:xmpp:ping'/></iq>")
        #expect(try await bob.next { $0.id == "p" }.stanzaType == "result")
        await alice.close()
        await bob.close()
        await server.stop()
    }
}
