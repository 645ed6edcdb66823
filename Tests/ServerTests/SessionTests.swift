import Foundation
import SwitchboardTestSupport
import Testing
import XMLStream
import XMPPCore

/// The real server in-process on free ports, driven by the scripted test client.
@Suite struct SessionTests {
    private func withServer(_ body: (TestServer) async throws -> Void) async throws {
        let server = try await TestServer.start { $0.c2s.requireTLS = false }
        do {
            try await body(server)
        } catch {
            await server.stop()
            throw error
        }
        await server.stop()
    }

    @Test func loginAndChat() async throws {
        try await withServer { server in
            try await server.addUser("alice", password: "a-pass")
            try await server.addUser("张伟", password: "z-pass")
            let alice = try await server.connect()
            let zhang = try await server.connect()
            #expect(try await alice.login("alice", password: "a-pass", resource: "desk") == "alice@example.test/desk")
            #expect(try await zhang.login("张伟", password: "z-pass", resource: "手机", hash: .sha1) == "张伟@example.test/手机")
            try await zhang.send("<presence/>")
            _ = try await zhang.next { $0.name == "presence" }  // own presence echoed
            try await alice.send("<message to='张伟@example.test' type='chat' id='m1'><body>你好</body></message>")
            let received = try await zhang.next { $0.name == "message" }
            #expect(received.child("body")?.text == "你好")
            #expect(received[attribute: "from"] == "alice@example.test/desk")
            await alice.close()
            await zhang.close()
        }
    }

    @Test func offlineMessageIsStoredAndDeliveredWithDelay() async throws {
        try await withServer { server in
            try await server.addUser("alice", password: "a")
            try await server.addUser("bob", password: "b")
            let alice = try await server.connect()
            try await alice.login("alice", password: "a")
            try await alice.send("<message to='bob@example.test' type='chat' id='o1'><body>while you were out</body></message>")
            // Ping round-trip: the message was processed (stored) before the ping answer.
            try await alice.send("<iq type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>")
            _ = try await alice.next { $0.id == "p1" }
            #expect(try await server.stores.count(for: "bob@example.test") == 1)
            let bob = try await server.connect()
            try await bob.login("bob", password: "b")
            try await bob.send("<presence/>")
            let message = try await bob.next { $0.name == "message" }
            #expect(message.child("body")?.text == "while you were out")
            #expect(message.child("delay", namespace: NS.delay)?[attribute: "stamp"] != nil)
            try await bob.send("<iq type='get' id='p2'><ping xmlns='urn:xmpp:ping'/></iq>")
            _ = try await bob.next { $0.id == "p2" }
            #expect(try await server.stores.count(for: "bob@example.test") == 0)
            await alice.close()
            await bob.close()
        }
    }

    /// Many async requests in one burst: answered in order, none dropped (the handler pauses
    /// reading while its queue is full instead of buffering without bound).
    @Test func burstOfAsyncRequestsIsAnsweredInOrder() async throws {
        try await withServer { server in
            try await server.addUser("alice", password: "a")
            let alice = try await server.connect()
            try await alice.login("alice", password: "a")
            var burst = ""
            for index in 0..<300 {
                burst += "<iq type='get' id='q\(index)'><vCard xmlns='vcard-temp'/></iq>"
            }
            try await alice.send(burst)
            for index in 0..<300 {
                let reply = try await alice.next { $0.name == "iq" }
                #expect(reply.id == "q\(index)")
                #expect(reply.stanzaType == "result")
            }
            await alice.close()
        }
    }

    @Test func unknownRecipientGetsServiceUnavailable() async throws {
        try await withServer { server in
            try await server.addUser("alice", password: "a")
            let alice = try await server.connect()
            try await alice.login("alice", password: "a")
            try await alice.send("<message to='nobody@example.test' id='x1'><body>hi</body></message>")
            let error = try await alice.next { $0.id == "x1" }
            #expect(error.stanzaType == "error")
            #expect(error.child("error")?.child("service-unavailable", namespace: NS.stanzaErrors) != nil)
            await alice.close()
        }
    }

    @Test func wrongPasswordIsNotAuthorized() async throws {
        try await withServer { server in
            try await server.addUser("alice", password: "a")
            let client = try await server.connect()
            await #expect(throws: TestClientError.self) { try await client.login("alice", password: "wrong") }
            await client.close()
            #expect(String(decoding: server.server.context.metrics.exposition(), as: UTF8.self)
                .contains("switchboard_logins_total{result=\"failed\"} 1"))
        }
    }

    @Test func stanzasBeforeAuthenticationEndTheStream() async throws {
        try await withServer { server in
            let client = try await server.connect()
            _ = try await client.openStream()
            try await client.send("<message to='a@example.test'><body>x</body></message>")
            let error = try await client.next { $0.name == "error" }
            #expect(error.child("not-authorized", namespace: NS.streamErrors) != nil)
            await client.close()
        }
    }

    @Test func wrongDomainIsHostUnknown() async throws {
        try await withServer { server in
            let client = try await TestClient.connect(port: server.ports.c2s ?? 0, domain: "elsewhere.test")
            try await client.send(
                "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='elsewhere.test' version='1.0'>")
            let error = try await client.next { $0.name == "error" }
            #expect(error.child("host-unknown", namespace: NS.streamErrors) != nil)
            await client.close()
        }
    }
}

@Suite struct TimeoutAndRegistrationTests {
    @Test func idleSessionIsPingedThenDisconnected() async throws {
        let server = try await TestServer.start {
            $0.c2s.requireTLS = false
            $0.limits.idleTimeoutSeconds = 1
        }
        try await server.addUser("alice", password: "a")
        let client = try await server.connect()
        try await client.login("alice", password: "a")
        let ping = try await client.next(timeout: .seconds(30))
        #expect(ping.name == "iq" && ping.child("ping", namespace: NS.ping) != nil)
        // No answer: the next idle period ends the stream.
        let error = try await client.next(timeout: .seconds(30))
        #expect(error.child("connection-timeout", namespace: NS.streamErrors) != nil)
        await client.close()
        await server.stop()
    }

    @Test func answeredPingsKeepTheSession() async throws {
        let server = try await TestServer.start {
            $0.c2s.requireTLS = false
            // Each answer must reach the server within one idle period: 3 s leaves a loaded
            // machine room, and an answered ping that did not count still ends the stream.
            $0.limits.idleTimeoutSeconds = 3
        }
        try await server.addUser("alice", password: "a")
        let client = try await server.connect()
        try await client.login("alice", password: "a")
        for _ in 0..<2 {
            let ping = try await client.next(timeout: .seconds(30))
            #expect(ping.child("ping", namespace: NS.ping) != nil)
            try await client.send("<iq type='result' id='\(ping.id ?? "")' to='example.test'/>")
        }
        try await client.send("<iq type='get' id='still-here'><ping xmlns='urn:xmpp:ping'/></iq>")
        _ = try await client.next { $0.id == "still-here" }
        await client.close()
        await server.stop()
    }

    @Test func loginTimeoutClosesUnauthenticatedConnections() async throws {
        let server = try await TestServer.start { $0.limits.loginTimeoutSeconds = 1 }
        let client = try await server.connect()
        // The header raw: on a slow machine the timeout may come before the features do.
        try await client.send(
            "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='example.test' version='1.0'>")
        let error = try await client.next(where: { $0.name == "error" }, timeout: .seconds(30))
        #expect(error.child("connection-timeout", namespace: NS.streamErrors) != nil)
        await client.close()
        await server.stop()
    }

    @Test func inBandRegistrationWhenEnabled() async throws {
        let server = try await TestServer.start {
            $0.c2s.requireTLS = false
            $0.registration.enabled = true
        }
        let client = try await server.connect()
        let features = try await client.openStream()
        #expect(features.child("register", namespace: NS.registerFeature) != nil)
        try await client.send(
            "<iq type='set' id='r1'><query xmlns='jabber:iq:register'><username>newbie</username><password>pw-123</password></query></iq>")
        let result = try await client.next { $0.id == "r1" }
        #expect(result.stanzaType == "result")
        try await client.send(
            "<iq type='set' id='r2'><query xmlns='jabber:iq:register'><username>newbie</username><password>x</password></query></iq>")
        let conflict = try await client.next { $0.id == "r2" }
        #expect(conflict.child("error")?.child("conflict", namespace: NS.stanzaErrors) != nil)
        await client.close()
        let login = try await server.connect()
        #expect(try await login.login("newbie", password: "pw-123").hasPrefix("newbie@example.test/"))
        await login.close()
        await server.stop()
    }

    @Test func registrationIsOffByDefault() async throws {
        let server = try await TestServer.start { $0.c2s.requireTLS = false }
        let client = try await server.connect()
        let features = try await client.openStream()
        #expect(features.child("register", namespace: NS.registerFeature) == nil)
        try await client.send(
            "<iq type='set' id='r1'><query xmlns='jabber:iq:register'><username>x</username><password>y</password></query></iq>")
        let error = try await client.next { $0.name == "error" }
        #expect(error.child("not-authorized", namespace: NS.streamErrors) != nil)
        await client.close()
        await server.stop()
    }
}

@Suite struct ThrottleTests {
    @Test func repeatedFailuresThrottleTheAccountEvenWithTheRightPassword() async throws {
        let server = try await TestServer.start {
            $0.c2s.requireTLS = false
            $0.limits.maxLoginFailures = 2
        }
        try await server.addUser("alice", password: "right")
        #expect(try await server.failLogins("alice", times: 2) == 2)
        let client = try await server.connect()
        do {
            try await client.login("alice", password: "right")
            Issue.record("login allowed while throttled")
        } catch let error as TestClientError {
            #expect(error.description.contains("temporary-auth-failure"), "\(error)")
        }
        await client.close()
        // Other accounts are not affected (the per-address limit is ten times higher).
        try await server.addUser("bob", password: "b")
        let bob = try await server.connect()
        try await bob.login("bob", password: "b")
        await bob.close()
        let metrics = String(decoding: server.server.context.metrics.exposition(), as: UTF8.self)
        #expect(metrics.contains("switchboard_logins_total{result=\"throttled\"} 1"))
        await server.stop()
    }
}
