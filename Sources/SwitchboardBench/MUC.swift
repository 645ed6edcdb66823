import Foundation
import NIOCore
import XMLStream
import XMPPCore

enum MUCNamespace {
    static let muc = "http://jabber.org/protocol/muc"
    static let user = "http://jabber.org/protocol/muc#user"
    static let owner = "http://jabber.org/protocol/muc#owner"
}

/// Per-loop state of the group chat scenario (XEP-0045).
struct MUCState {
    var room: String
    var joining: [Int: XMPPClient] = [:]
    var joinPromise: EventLoopPromise<Void>?
    var joined = 0
    var joinFailures: [String: Int] = [:]
    /// Room configuration pending (the first joiner created a locked room, status 201).
    var configuring: XMPPClient?
    var sender: XMPPClient?
    var toSend = 0
}

extension LoopWorker {
    /// Sends join presence for the held sessions in `users` (all held ones if nil) and completes
    /// when each got its own occupant presence back (or an error). A newly created room
    /// (status 201) is unlocked with an instant-room configuration (XEP-0045 §10.1.2).
    func mucJoin(room: String, users: [Int]?, exclude: Set<Int>) -> EventLoopFuture<Void> {
        if muc == nil { muc = MUCState(room: room) }
        let promise = loop.makePromise(of: Void.self)
        let targets = (users.map { $0.compactMap { held[$0] } } ?? Array(held.values)).filter { !exclude.contains($0.index) }
        guard !targets.isEmpty else {
            promise.succeed(())
            return promise.futureResult
        }
        muc?.joinPromise = promise
        loop.assumeIsolated().scheduleTask(in: settings.loginTimeout) { [weak self] in
            guard let self, let pending = self.muc?.joining.values else { return }
            for client in Array(pending) { self.finishJoin(client, failure: "join timed out") }
            if self.muc?.configuring != nil {
                self.muc?.configuring = nil
                self.muc?.joinFailures["room configuration timed out", default: 0] += 1
                if let promise = self.muc?.joinPromise {
                    self.muc?.joinPromise = nil
                    promise.succeed(())
                }
            }
        }
        for client in targets {
            muc?.joining[client.index] = client
            client.markNanos = MonotonicClock.nanos()
            client.fastMessages = true
            var presence = XMLElement(name: "presence", namespace: NS.client)
            presence[attribute: "to"] = "\(room)/\(client.username)"
            var x = XMLElement("x", xmlns: MUCNamespace.muc)
            x.append(XMLElement("history", xmlns: MUCNamespace.muc, ["maxstanzas": "0"]))
            presence.append(x)
            client.send(presence)
        }
        return promise.futureResult
    }

    var mucJoined: Int { muc?.joined ?? 0 }
    var mucJoinFailures: [String: Int] { muc?.joinFailures ?? [:] }

    private func finishJoin(_ client: XMPPClient, failure: String?) {
        guard var state = muc, state.joining.removeValue(forKey: client.index) != nil else { return }
        if let failure {
            state.joinFailures[failure, default: 0] += 1
        } else {
            state.joined += 1
            stats.stepLatency.recordMicros(sinceNanos: client.markNanos, now: MonotonicClock.nanos())
        }
        let done = state.joining.isEmpty && state.configuring == nil
        let promise = done ? state.joinPromise : nil
        if done { state.joinPromise = nil }
        muc = state
        promise?.succeed(())
    }

    func mucReceived(_ client: XMPPClient, _ stanza: XMLElement) {
        guard let state = muc else { return }
        let from = stanza[attribute: "from"] ?? ""
        switch stanza.name {
        case "presence":
            guard from == "\(state.room)/\(client.username)", state.joining[client.index] != nil else { return }
            if stanza.stanzaType == "error" {
                finishJoin(client, failure: "join refused: \(XMPPClient.describeStanzaError(stanza))")
                return
            }
            let codes = stanza.child("x", namespace: MUCNamespace.user)?.elements
                .filter { $0.name == "status" }.compactMap { $0[attribute: "code"] } ?? []
            if codes.contains("201") {
                // We created the room; it stays locked until configured. Ask for an instant room.
                muc?.configuring = client
                var query = XMLElement("query", xmlns: MUCNamespace.owner)
                query.append(XMLElement("x", xmlns: NS.dataForms, ["type": "submit"]))
                var iq = XMLElement(name: "iq", namespace: NS.client)
                iq[attribute: "type"] = "set"
                iq[attribute: "id"] = "mucconfig"
                iq[attribute: "to"] = state.room
                iq.append(query)
                client.send(iq)
            }
            finishJoin(client, failure: nil)
        case "iq":
            guard stanza.id == "mucconfig", state.configuring === client else { return }
            muc?.configuring = nil
            if stanza.stanzaType != "result" {
                muc?.joinFailures["room configuration refused: \(XMPPClient.describeStanzaError(stanza))", default: 0] += 1
            }
            if let promise = muc?.joinPromise, muc?.joining.isEmpty == true {
                muc?.joinPromise = nil
                promise.succeed(())
            }
        case "message":
            if stanza.stanzaType == "error" { stats.messageErrors += 1 }
        default:
            break
        }
    }

    /// Starts the sender (a held session on this loop): `window` group messages in flight,
    /// each echo of its own message releases the next, `count` in total.
    func mucStartSending(user: Int, count: Int, window: Int, bodySize: Int) -> Int {
        guard let room = muc?.room, let client = held[user] else { return 0 }
        var prefix = ByteBuffer()
        prefix.writeString("<message")
        if settings.transport.isWebSocket { prefix.writeString(" xmlns=\"jabber:client\"") }
        prefix.writeString(" to=\"")
        XMLSerializer.writeEscaped(room, into: &prefix, attribute: true)
        prefix.writeString("\" type=\"groupchat\" id=\"\(Self.idPrefix)")
        client.messagePrefix = prefix
        var suffix = ByteBuffer()
        suffix.writeString("\"><body>\(String(repeating: "x", count: max(0, bodySize)))</body></message>")
        client.messageSuffix = suffix
        muc?.sender = client
        let first = min(window, count)
        muc?.toSend = count - first
        let now = MonotonicClock.nanos()
        for _ in 0..<first { sendGroupMessage(client, stamp: now) }
        client.flushIfNeeded()
        return first
    }

    private func sendGroupMessage(_ client: XMPPClient, stamp: UInt64) {
        guard let prefix = client.messagePrefix, let suffix = client.messageSuffix else { return }
        var buffer = client.allocator.buffer(capacity: prefix.readableBytes + suffix.readableBytes + 20)
        buffer.writeImmutableBuffer(prefix)
        buffer.writeString(String(stamp))
        buffer.writeImmutableBuffer(suffix)
        client.write(buffer)
        stats.sent += 1
    }

    func mucStop() {
        muc?.toSend = 0
    }

    func mucReceivedBytes(_ client: XMPPClient, _ bytes: ByteBuffer) -> Bool {
        let (stamp, isError) = FastScan.idNumberAndType(bytes, idPrefix: Self.idPrefix)
        if isError {
            stats.messageErrors += 1
            return true
        }
        guard let stamp else { return false }
        stats.received += 1
        stats.messageLatency.recordMicros(sinceNanos: stamp, now: MonotonicClock.nanos())
        if let sender = muc?.sender, sender === client, let remaining = muc?.toSend, remaining > 0 {
            muc?.toSend = remaining - 1
            sendGroupMessage(client, stamp: MonotonicClock.nanos())
        }
        return true
    }
}

extension Scenarios {
    static func muc(
        _ options: CommonOptions, service: String, room roomName: String, messages: Int, window: Int,
        duration: Double, bodySize: Int
    ) throws {
        let harness = try Harness(options: options)
        defer { harness.shutdown() }
        let users = harness.users(count: options.users, from: options.firstUser)
        let room = "\(roomName)@\(service)"
        progress("muc: \(users.count) occupants in \(room), 1 sender, \(messages) messages, window \(window)")
        let overall = Meter(serverPID: options.serverPID, threads: harness.threads)
        try harness.launch(users: users, concurrency: options.concurrency, goal: .session(presence: true), action: .hold)
        let loginStats = try harness.stats()
        let senderUser = options.firstUser
        let logged = try harness.heldJIDs()
        guard logged[senderUser] != nil else {
            try harness.closeAll()
            throw BenchError("the sender \(options.userPrefix)\(senderUser) did not log in: \(loginStats.failures)")
        }
        progress("logged in \(logged.count) of \(users.count); joining")
        try harness.resetStats()
        let joinStart = MonotonicClock.nanos()
        // The sender joins first (it creates the room if needed), then everybody else.
        try harness.onLoop(0) { $0.mucJoin(room: room, users: [senderUser], exclude: []) }
        try harness.onEachWait { $0.mucJoin(room: room, users: nil, exclude: [senderUser]) }
        let joined = try harness.onEach { $0.mucJoined }.reduce(0, +)
        var joinFailures: [String: Int] = [:]
        for part in try harness.onEach({ $0.mucJoinFailures }) { joinFailures.merge(part, uniquingKeysWith: +) }
        let joinStats = try harness.stats()
        progress("joined \(joined) occupants in \(format(Double(MonotonicClock.nanos() - joinStart) / 1e9)) s (\(joinFailures.values.reduce(0, +)) failed)")
        guard joined > 0 else {
            try harness.closeAll()
            throw BenchError("nobody could join \(room): \(joinFailures)")
        }
        sleepSeconds(0.5)
        try harness.resetStats()
        let meter = Meter(serverPID: options.serverPID, threads: harness.threads)
        _ = try harness.onEach { worker in
            worker.held[senderUser] == nil ? 0 : worker.mucStartSending(user: senderUser, count: messages, window: window, bodySize: bodySize)
        }
        let expected = messages * joined
        let deadline = MonotonicClock.nanos() + UInt64(duration * 1e9)
        var lastReport = MonotonicClock.nanos()
        var received = 0
        while MonotonicClock.nanos() < deadline {
            sleepSeconds(0.05)
            received = try harness.onEach { $0.stats.received }.reduce(0, +)
            if received >= expected { break }
            if MonotonicClock.nanos() - lastReport > 5_000_000_000 {
                lastReport = MonotonicClock.nanos()
                progress("  \(received) of \(expected) deliveries")
            }
        }
        let reading = meter.read()
        let stats = try harness.stats()
        _ = try harness.onEach { $0.mucStop() }
        sleepSeconds(0.5)
        try harness.closeAll()
        let deliveriesPerSecond = Double(stats.received) / max(reading.wallSeconds, 1e-9)
        let cpuPer10k = reading.serverCPUSeconds.map { $0 / Double(max(stats.received, 1)) * 10_000 }
        progress("\(stats.received) of \(expected) deliveries in \(format(reading.wallSeconds)) s = \(format(deliveriesPerSecond)) deliveries/s")
        var out = harness.header(scenario: "muc")
        out += [
            ("room", .string(room)),
            ("occupants", .int(joined)),
            ("messages", .int(messages)),
            ("window", .int(window)),
            ("body_size", .int(bodySize)),
            ("logins", .int(loginStats.succeeded)),
            ("login_failures", .int(loginStats.failureCount)),
            ("join_failures", .int(joinFailures.values.reduce(0, +))),
            ("failure_reasons", failuresJSON(loginStats.failures.merging(joinFailures, uniquingKeysWith: +))),
            ("join_latency", latencyJSON(joinStats.stepLatency)),
            ("sent", .int(stats.sent)),
            ("deliveries_expected", .int(expected)),
            ("deliveries", .int(stats.received)),
            ("complete", .bool(stats.received >= expected)),
            ("deliveries_per_s", .number(deliveriesPerSecond, 1)),
            ("messages_per_s", .number(Double(stats.received) / Double(max(joined, 1)) / max(reading.wallSeconds, 1e-9), 1)),
            ("server_cpu_s_per_10k_deliveries", cpuPer10k.map { .number($0, 3) } ?? .null),
            ("message_errors", .int(stats.messageErrors)),
            ("latency", latencyJSON(stats.messageLatency)),
        ]
        out += reading.fields()
        out += [("total_wall_s", .number(overall.read().wallSeconds, 1))]
        emit(out)
    }
}
