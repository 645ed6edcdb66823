import Foundation
import NIOConcurrencyHelpers
import NIOCore
import SwitchboardTestSupport
import Testing
import XMLStream
import XMPPCore

@testable import Server

/// The protective limits of docs/security.md, each against the real server in-process: what the
/// client sees when it hits one, that others are not affected, and the counter at /metrics.
@Suite struct LimitsTests {
    private func metric(_ server: TestServer, _ limit: String) -> Int {
        let text = String(decoding: server.server.context.metrics.exposition(), as: UTF8.self)
        let prefix = "switchboard_limit_hits_total{limit=\"\(limit)\"} "
        guard let line = text.split(separator: "\n").first(where: { $0.hasPrefix(prefix) }) else { return -1 }
        return Int(line.dropFirst(prefix.count)) ?? -1
    }

    @Test func stanzaRateHoldsBackInOrderThenEndsAPersistentFlood() async throws {
        let server = try await TestServer.start {
            $0.c2s.requireTLS = false
            $0.limits.stanzaRatePerSecond = 20
            $0.limits.stanzaBurst = 10
            $0.limits.stanzaRateDisconnectAfterSeconds = 5  // well above the ~1 s hold of the 30 pings, however late the loop runs
        }
        try await server.addUser("alice", password: "a")
        try await server.addUser("bob", password: "b")
        let alice = try await server.connect()
        try await alice.login("alice", password: "a")
        let bob = try await server.online("bob", "desk", password: "b")

        // 30 pings at once: 10 from the burst, the rest at 20/s: all answered, in order, slowed down.
        try await Task.sleep(for: .milliseconds(600))  // earn the bucket back after the login
        let started = ContinuousClock.now
        try await alice.send((0..<30).map { "<iq type='get' id='p\($0)'><ping xmlns='urn:xmpp:ping'/></iq>" }.joined())
        for index in 0..<30 {
            #expect(try await alice.next { $0.name == "iq" }.id == "p\(index)")
        }
        let elapsed = ContinuousClock.now - started
        #expect(elapsed >= .milliseconds(700), "30 stanzas at 20/s with a burst of 10 took only \(elapsed)")
        #expect(metric(server, "stanza_rate") >= 1)

        // A client that keeps sending far over its rate is held back, then disconnected.
        let flood = Task {
            for batch in 0..<60 {
                try? await alice.send((0..<20).map { "<message to='bob@example.test' id='f\(batch)-\($0)'/>" }.joined())
                try? await Task.sleep(for: .milliseconds(100))
            }
        }
        let error = try await alice.next(where: { $0.name == "error" }, timeout: .seconds(30))
        #expect(error.child("policy-violation", namespace: NS.streamErrors) != nil, "\(XMLSerializer.string(error))")
        flood.cancel()
        #expect(metric(server, "stanza_rate_disconnect") == 1)
        // Bob, on the same server, still gets messages at once.
        let carol = try await server.connect()
        try await server.addUser("carol", password: "c")
        try await carol.login("carol", password: "c")
        try await carol.send("<message to='bob@example.test/desk' id='hello'><body>hi</body></message>")
        _ = try await bob.next { $0.id == "hello" }
        await carol.close()
        await bob.close()
        await alice.disconnect()
        await server.stop()
    }

    @Test func sessionsPerUserAreCappedWithResourceConstraint() async throws {
        let server = try await TestServer.start {
            $0.c2s.requireTLS = false
            $0.limits.maxSessionsPerUser = 2
        }
        try await server.addUser("alice", password: "a")
        let one = try await server.connect()
        try await one.login("alice", password: "a", resource: "one")
        let two = try await server.connect()
        try await two.login("alice", password: "a", resource: "two")
        let three = try await server.connect()
        try await three.authenticate("alice", password: "a")
        try await three.send("<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>three</resource></bind></iq>")
        let refused = try await three.next { $0.id == "bind" }
        #expect(refused.stanzaType == "error")
        #expect(refused.child("error")?[attribute: "type"] == "wait")
        #expect(refused.child("error")?.child("resource-constraint", namespace: NS.stanzaErrors) != nil, "\(XMLSerializer.string(refused))")
        #expect(metric(server, "sessions_per_user") == 1)
        // Replacing an existing resource is not a new session.
        let twoAgain = try await server.connect()
        #expect(try await twoAgain.login("alice", password: "a", resource: "two") == "alice@example.test/two")
        // A freed slot can be used.
        await one.close()
        let bound = try await eventually {
            try await three.send("<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>three</resource></bind></iq>")
            return try await three.next { $0.id == "bind" }.stanzaType == "result"
        }
        #expect(bound)
        await three.close()
        await twoAgain.close()
        await two.close()
        await server.stop()
    }

    /// Opens a connection and reports whether the server answers a stream header (refused
    /// connections are closed at accept without a byte).
    private func answered(_ server: TestServer) async throws -> (TestClient, Bool) {
        let client = try await server.connect()
        do {
            _ = try await client.openStream()
            return (client, true)
        } catch {
            return (client, false)
        }
    }

    @Test func connectionsPerAddressAreRefusedAtAccept() async throws {
        let server = try await TestServer.start {
            $0.limits.maxConnectionsPerAddress = 3
            $0.limits.connectionRatePerAddress = 0
        }
        var open: [TestClient] = []
        for _ in 0..<3 {
            let (client, ok) = try await answered(server)
            #expect(ok)
            open.append(client)
        }
        let (refused, ok) = try await answered(server)
        #expect(!ok, "a fourth connection from the same address was served")
        #expect(metric(server, "connections_per_address") == 1)
        await refused.close()
        await open.removeFirst().close()
        let served = try await eventually {
            let (client, ok) = try await answered(server)
            if ok { open.append(client) } else { await client.close() }
            return ok
        }
        #expect(served, "a freed slot was not reusable")
        for client in open { await client.close() }
        await server.stop()
    }

    @Test func exemptAddressesSkipThePerAddressLimits() async throws {
        let server = try await TestServer.start {
            $0.limits.maxConnectionsPerAddress = 1
            $0.limits.exemptAddresses = ["127.0.0.0/8"]
        }
        var open: [TestClient] = []
        for _ in 0..<4 {
            let (client, ok) = try await answered(server)
            #expect(ok)
            open.append(client)
        }
        #expect(metric(server, "connections_per_address") == 0)
        for client in open { await client.close() }
        await server.stop()
    }

    @Test func connectionRatePerAddressIsATokenBucket() async throws {
        let server = try await TestServer.start {
            $0.limits.maxConnectionsPerAddress = 0
            $0.limits.connectionRatePerAddress = 1
            $0.limits.connectionBurstPerAddress = 3
        }
        // All TCP connections first (the kernel completes them whether or not the server has
        // accepted yet), then see which get a stream: the burst is spent in one go however slow
        // this machine is, so the outcome does not depend on the test's own pace (at 1 token
        // per second the connections would have to span 17 s for all 20 to be served).
        var clients: [TestClient] = []
        for _ in 0..<20 { clients.append(try await server.connect()) }
        var served = 0
        for client in clients {
            if (try? await client.openStream()) != nil { served += 1 }
            await client.close()
        }
        #expect(served >= 3, "the burst of 3 was not served: \(served) of 20")
        #expect(served < 20, "no connection was refused")
        #expect(metric(server, "connection_rate") == 20 - served)
        try await Task.sleep(for: .milliseconds(1100))  // a token earned back
        let (client, ok) = try await answered(server)
        #expect(ok)
        await client.close()
        await server.stop()
    }

    @Test func stanzasBeforeAuthenticationHaveTheSmallerLimit() async throws {
        let server = try await TestServer.start {
            $0.c2s.requireTLS = false
            $0.limits.maxStanzaBytesBeforeAuth = 4096
        }
        try await server.addUser("alice", password: "a")
        let stranger = try await server.connect()
        _ = try await stranger.openStream()
        try await stranger.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>\(String(repeating: "QUFB", count: 2000))</auth>")
        let error = try await stranger.next { $0.name == "error" }
        #expect(error.child("policy-violation", namespace: NS.streamErrors) != nil)
        #expect(metric(server, "stanza_size") == 1)
        await stranger.close()
        // After authentication the full max_stanza_bytes applies.
        let alice = try await server.connect()
        try await alice.login("alice", password: "a")
        try await alice.send("<iq type='get' id='big'><ping xmlns='urn:xmpp:ping'><x>\(String(repeating: "y", count: 20_000))</x></ping></iq>")
        #expect(try await alice.next { $0.id == "big" }.stanzaType == "result")
        await alice.close()
        await server.stop()
    }

    @Test func depthLimitIsCounted() async throws {
        let server = try await TestServer.start { $0.limits.maxDepth = 8 }
        let client = try await server.connect()
        _ = try await client.openStream()
        try await client.send(String(repeating: "<a>", count: 20))
        let error = try await client.next { $0.name == "error" }
        #expect(error.child("policy-violation", namespace: NS.streamErrors) != nil)
        #expect(metric(server, "stanza_depth") == 1)
        await client.close()
        await server.stop()
    }

    @Test func lockoutAnswersWithARetryHintAndIsCounted() async throws {
        let server = try await TestServer.start {
            $0.c2s.requireTLS = false
            $0.limits.maxLoginFailures = 2
            $0.limits.loginLockoutSeconds = 30
        }
        try await server.addUser("alice", password: "right")
        let lockedAt = ContinuousClock.now
        #expect(try await server.failLogins("alice", times: 2) == 2)
        let client = try await server.connect()
        do {
            try await client.login("alice", password: "right")
            Issue.record("login allowed while locked out")
        } catch let error as TestClientError {
            #expect(error.description.contains("temporary-auth-failure"), "\(error)")
            // The hint counts down from 30 s (rounded up) while this test gets to its login.
            let waited = Int((ContinuousClock.now - lockedAt).components.seconds) + 1
            let hint = error.description.firstMatch(of: /try again in (\d+) s/).flatMap { Int($0.1) }
            #expect(hint.map { (30 - waited)...30 ~= $0 } == true, "\(error)")
        }
        await client.close()
        #expect(metric(server, "login_lockout") == 1)
        await server.stop()
    }
}

/// LoginThrottle on its own clock: lockouts double, are capped, and are forgotten.
@Suite struct LoginThrottleTests {
    final class Clock: Sendable {
        let now = NIOLockedValueBox<Double>(1000)
        func advance(_ seconds: Double) { now.withLockedValue { $0 += seconds } }
    }

    @Test func lockoutsDoubleUpToTheMaximumAndSuccessResets() {
        let clock = Clock()
        let throttle = LoginThrottle(maxFailures: 3, window: 300, lockout: 60, maxLockout: 200, clock: { clock.now.withLockedValue { $0 } })
        func fail(_ times: Int) -> Int { (0..<times).reduce(0) { total, _ in total + throttle.recordFailure(account: "alice", address: nil) } }
        #expect(fail(2) == 0)
        #expect(throttle.retryAfter(account: "alice", address: nil) == nil)
        #expect(fail(1) == 1)
        #expect(throttle.retryAfter(account: "alice", address: nil) == 60)
        #expect(throttle.retryAfter(account: "bob", address: nil) == nil)
        clock.advance(60)
        #expect(throttle.retryAfter(account: "alice", address: nil) == nil)
        #expect(fail(3) == 1)
        #expect(throttle.retryAfter(account: "alice", address: nil) == 120)
        clock.advance(120)
        #expect(fail(3) == 1)
        #expect(throttle.retryAfter(account: "alice", address: nil) == 200)  // 240, capped
        clock.advance(200)
        throttle.recordSuccess(account: "alice")
        #expect(fail(3) == 1)
        #expect(throttle.retryAfter(account: "alice", address: nil) == 60)  // back to the first step
    }

    @Test func addressesAllowTenTimesMoreAndQuietKeysAreForgotten() {
        let clock = Clock()
        let throttle = LoginThrottle(maxFailures: 2, window: 10, lockout: 5, maxLockout: 40, clock: { clock.now.withLockedValue { $0 } })
        for index in 0..<19 {
            #expect(throttle.recordFailure(account: "user\(index)", address: "192.0.2.1") == 0)
        }
        #expect(throttle.retryAfter(account: nil, address: "192.0.2.1") == nil)
        #expect(throttle.recordFailure(account: "user19", address: "192.0.2.1") == 1)
        #expect(throttle.retryAfter(account: "someone", address: "192.0.2.1") == 5)
        #expect(throttle.retryAfter(account: "someone", address: "192.0.2.2") == nil)
        // Failures spread wider than the window never lock.
        for _ in 0..<5 {
            #expect(throttle.recordFailure(account: "slow", address: nil) == 0)
            clock.advance(11)
        }
        // After a lockout and a quiet period of max(window, max lockout) the level starts again.
        _ = throttle.recordFailure(account: "x", address: nil)
        _ = throttle.recordFailure(account: "x", address: nil)
        clock.advance(5)
        _ = throttle.recordFailure(account: "x", address: nil)
        _ = throttle.recordFailure(account: "x", address: nil)
        #expect(throttle.retryAfter(account: "x", address: nil) == 10)
        clock.advance(51)
        _ = throttle.recordFailure(account: "x", address: nil)
        _ = throttle.recordFailure(account: "x", address: nil)
        #expect(throttle.retryAfter(account: "x", address: nil) == 5)
    }
}

@Suite struct TokenBucketAndAddressTests {
    @Test func bucketAllowsTheBurstThenTheRate() {
        var now: UInt64 = 0
        var bucket = TokenBucket(rate: 10, burst: 5, now: now)
        for _ in 0..<5 { #expect(bucket.take(now: { now }) == nil) }
        let wait = bucket.take(now: { now })
        #expect(wait == 100_000_000)  // one token at 10/s
        now += 100_000_000
        #expect(bucket.take(now: { now }) == nil)
        #expect(bucket.take(wanted: 3, now: { now }) == 300_000_000)
        now += 10_000_000_000  // a long pause refills to the burst, no more
        for _ in 0..<5 { #expect(bucket.take(now: { now }) == nil) }
        #expect(bucket.take(now: { now }) != nil)
    }

    @Test func addressKeys() throws {
        let v4 = try SocketAddress(ipAddress: "192.0.2.7", port: 1)
        let mapped = try SocketAddress(ipAddress: "::ffff:192.0.2.7", port: 2)
        let a = try SocketAddress(ipAddress: "2001:db8:1:2:aaaa::1", port: 3)
        let b = try SocketAddress(ipAddress: "2001:db8:1:2:bbbb::9", port: 4)
        let c = try SocketAddress(ipAddress: "2001:db8:1:3::1", port: 5)
        #expect(ConnectionLimiter.key(v4) == .v4(0xC000_0207))
        #expect(ConnectionLimiter.key(mapped) == ConnectionLimiter.key(v4))
        #expect(ConnectionLimiter.key(a) == ConnectionLimiter.key(b))  // same /64
        #expect(ConnectionLimiter.key(a) != ConnectionLimiter.key(c))
    }

    @Test func addressRanges() throws {
        let office = try #require(AddressRange("10.1.0.0/16"))
        #expect(office.contains(try SocketAddress(ipAddress: "10.1.200.3", port: 1)))
        #expect(!office.contains(try SocketAddress(ipAddress: "10.2.0.1", port: 1)))
        #expect(office.contains(try SocketAddress(ipAddress: "::ffff:10.1.0.9", port: 1)))
        let v6 = try #require(AddressRange("2001:db8:aa::/47"))
        #expect(v6.contains(try SocketAddress(ipAddress: "2001:db8:ab:1::5", port: 1)))
        #expect(!v6.contains(try SocketAddress(ipAddress: "2001:db8:ac::5", port: 1)))
        #expect(!v6.contains(try SocketAddress(ipAddress: "10.1.0.1", port: 1)))
        let one = try #require(AddressRange("192.0.2.7"))
        #expect(one.contains(try SocketAddress(ipAddress: "192.0.2.7", port: 9)))
        #expect(!one.contains(try SocketAddress(ipAddress: "192.0.2.8", port: 9)))
        #expect(AddressRange("0.0.0.0/0")?.contains(try SocketAddress(ipAddress: "203.0.113.1", port: 1)) == true)
        for bad in ["10.0.0.0/33", "office", "10.0.0.0/x", "::/129", ""] { #expect(AddressRange(bad) == nil, "\(bad)") }
    }

    @Test func limiterForgetsClosedAddresses() {
        let limiter = ConnectionLimiter(maxOpen: 2, ratePerSecond: 0, burst: 0)
        let key = ConnectionLimiter.AddressKey.v4(1)
        #expect(limiter.admit(key) == nil)
        #expect(limiter.admit(key) == nil)
        #expect(limiter.admit(key) == .tooManyOpen)
        #expect(limiter.admit(.v4(2)) == nil)
        limiter.release(key)
        #expect(limiter.admit(key) == nil)
        limiter.release(key)
        limiter.release(key)
        limiter.release(.v4(2))
        #expect(limiter.trackedAddresses == 0)
    }
}
