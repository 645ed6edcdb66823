import NIOCore
import XMLStream
import XMPPCore

/// What a worker does with a connection once it is ready.
enum ReadyAction: Sendable, Equatable {
    /// Login benchmark: record, then close cleanly.
    case close
    /// Request benchmark (roster, directory search …): send this IQ, record the time to its
    /// result, then close.
    case request(XMLElement)
    /// Keep the session (idle, messages, muc).
    case hold
}

/// Everything one event loop does: launching connections with a bounded number in flight,
/// counting, and (for the message scenarios) generating traffic on the sessions it holds.
/// Confined to its event loop; the main thread talks to it through `NIOLoopBoundBox`.
final class LoopWorker: XMPPClientDelegate {
    let loop: any EventLoop
    let settings: ClientSettings
    var stats = LoopStats()

    // Launching
    private var goal: ClientGoal = .session(presence: false)
    private var action: ReadyAction = .close
    private var queue: [Int] = []
    private var queueIndex = 0
    private var slots = 1
    private var inFlight = 0
    private var batchPromise: EventLoopPromise<Void>?
    /// Connections not yet closed.
    private(set) var open = 0
    /// Ready sessions kept for the scenario, by user index.
    private(set) var held: [Int: XMPPClient] = [:]
    private var closePromise: EventLoopPromise<Void>?

    // Traffic
    private var recording = false
    private var trafficRunning = false
    private var closedLoop = true
    private var senders: [XMPPClient] = []
    private var nextSender = 0
    private var openLoopStart: UInt64 = 0
    private var openLoopIssued: UInt64 = 0
    private var openLoopInterval: Double = 0
    private var openLoopTickNanos: Double = 1_000_000
    private var openLoopTicks: UInt64 = 0
    private var openLoopTask: Scheduled<Void>?
    private var dirty: [XMPPClient] = []

    // MUC
    var muc: MUCState?

    init(loop: any EventLoop, settings: ClientSettings) {
        self.loop = loop
        self.settings = settings
    }

    func resetStats() {
        stats = LoopStats()
    }

    // MARK: - Launching

    /// Connects `users` with at most `concurrency` in flight; the future completes when every one
    /// is ready-and-handled or failed (and, unless held, closed).
    func launch(users: [Int], concurrency: Int, goal: ClientGoal, action: ReadyAction) -> EventLoopFuture<Void> {
        let promise = loop.makePromise(of: Void.self)
        guard !users.isEmpty else {
            promise.succeed(())
            return promise.futureResult
        }
        self.goal = goal
        self.action = action
        queue = users
        queueIndex = 0
        slots = max(1, concurrency)
        batchPromise = promise
        fill()
        return promise.futureResult
    }

    private func fill() {
        while inFlight < slots, queueIndex < queue.count {
            let user = queue[queueIndex]
            queueIndex += 1
            inFlight += 1
            open += 1
            let client = XMPPClient(index: user, settings: settings, goal: goal, delegate: self)
            client.holdsSlot = true
            client.connect(on: loop, source: settings.sourceAddress(for: user))
        }
        checkBatchDone()
    }

    private func releaseSlot(_ client: XMPPClient) {
        guard client.holdsSlot else { return }
        client.holdsSlot = false
        inFlight -= 1
        stats.lastDoneNanos = MonotonicClock.nanos()
        fill()
    }

    private func checkBatchDone() {
        guard let promise = batchPromise, queueIndex >= queue.count, inFlight == 0 else { return }
        if action != .hold && open > held.count { return }
        batchPromise = nil
        queue = []
        promise.succeed(())
    }

    /// Closes every held session cleanly; completes when all connections are closed.
    func closeAll() -> EventLoopFuture<Void> {
        trafficRunning = false
        openLoopTask?.cancel()
        let promise = loop.makePromise(of: Void.self)
        closePromise = promise
        for client in held.values { client.close() }
        checkAllClosed()
        return promise.futureResult
    }

    private func checkAllClosed() {
        guard open == 0, let promise = closePromise else { return }
        closePromise = nil
        promise.succeed(())
    }

    var heldJIDs: [Int: String] {
        held.compactMapValues { $0.boundJID }
    }

    // MARK: - XMPPClientDelegate

    func clientReady(_ client: XMPPClient) {
        stats.succeeded += 1
        stats.loginLatency.recordMicros(sinceNanos: client.startNanos, now: client.readyNanos)
        switch action {
        case .close:
            releaseSlot(client)
            client.close()
        case .request(let iq):
            client.markNanos = MonotonicClock.nanos()
            var request = iq
            request[attribute: "id"] = "request1"
            client.send(request)
            loop.assumeIsolated().scheduleTask(in: settings.loginTimeout) { [weak self, weak client] in
                guard let self, let client, client.holdsSlot else { return }
                self.stats.fail("request timed out")
                self.releaseSlot(client)
                client.close()
            }
        case .hold:
            held[client.index] = client
            releaseSlot(client)
        }
    }

    func clientRegistered(_ client: XMPPClient, _ outcome: RegisterOutcome) {
        stats.succeeded += 1
        switch outcome {
        case .created: stats.created += 1
        case .existed: stats.existed += 1
        }
        stats.loginLatency.recordMicros(sinceNanos: client.startNanos, now: client.readyNanos)
        releaseSlot(client)
    }

    func clientFailed(_ client: XMPPClient, _ reason: String, afterReady: Bool) {
        if afterReady && !client.holdsSlot {
            if held.removeValue(forKey: client.index) != nil || action == .hold {
                stats.dropped += 1
            }
            stats.fail("after ready: " + reason)
        } else {
            stats.fail(reason)
        }
        releaseSlot(client)
    }

    func client(_ client: XMPPClient, receivedStanza stanza: XMLElement) {
        if stanza.name == "iq", stanza.id == "request1", client.holdsSlot {
            if stanza.stanzaType == "result" {
                stats.stepLatency.recordMicros(sinceNanos: client.markNanos, now: MonotonicClock.nanos())
            } else {
                stats.fail("request refused: \(XMPPClient.describeStanzaError(stanza))")
            }
            releaseSlot(client)
            client.close()
            return
        }
        if muc != nil {
            mucReceived(client, stanza)
            return
        }
        if stanza.name == "message", stanza.stanzaType == "error" {
            stats.messageErrors += 1
        }
    }

    func clientClosed(_ client: XMPPClient) {
        open -= 1
        if held[client.index] === client {
            held[client.index] = nil
            if closePromise == nil { stats.dropped += 1 }
        }
        releaseSlot(client)
        checkBatchDone()
        checkAllClosed()
    }

    // MARK: - 1:1 message traffic

    static let idPrefix: StaticString = "sbm"

    /// Builds each held session's message template addressed to its partner's full JID.
    func prepareMessages(partners: [Int: String], bodySize: Int) -> Int {
        senders = []
        let body = String(repeating: "x", count: max(0, bodySize))
        for (index, client) in held.sorted(by: { $0.key < $1.key }) {
            guard let partner = partners[index] else { continue }
            var prefix = ByteBuffer()
            prefix.writeString("<message")
            if settings.transport.isWebSocket { prefix.writeString(" xmlns=\"jabber:client\"") }
            prefix.writeString(" to=\"")
            XMLSerializer.writeEscaped(partner, into: &prefix, attribute: true)
            prefix.writeString("\" type=\"chat\" id=\"\(Self.idPrefix)")
            var suffix = ByteBuffer()
            suffix.writeString("\"><body>\(body)</body></message>")
            client.messagePrefix = prefix
            client.messageSuffix = suffix
            client.fastMessages = true
            senders.append(client)
        }
        return senders.count
    }

    @inline(__always)
    private func sendMessage(_ client: XMPPClient, stamp: UInt64) {
        guard let prefix = client.messagePrefix, let suffix = client.messageSuffix else { return }
        var buffer = client.allocator.buffer(capacity: prefix.readableBytes + suffix.readableBytes + 20)
        buffer.writeImmutableBuffer(prefix)
        Self.writeDecimal(stamp, into: &buffer)
        buffer.writeImmutableBuffer(suffix)
        client.write(buffer)
        if recording { stats.sent += 1 }
    }

    private static func writeDecimal(_ value: UInt64, into buffer: inout ByteBuffer) {
        var digits: (UInt64, UInt64, UInt64) = (0, 0, 0)  // 24 bytes of scratch
        withUnsafeMutableBytes(of: &digits) { scratch in
            var index = scratch.count
            var remaining = value
            repeat {
                index -= 1
                scratch[index] = UInt8(ascii: "0") + UInt8(remaining % 10)
                remaining /= 10
            } while remaining > 0
            buffer.writeBytes(UnsafeRawBufferPointer(rebasing: scratch[index...]))
        }
    }

    /// Closed loop: every sender puts `window` messages in flight; each receipt triggers a reply.
    func startClosedLoop(window: Int) {
        closedLoop = true
        trafficRunning = true
        let now = MonotonicClock.nanos()
        for client in senders {
            for _ in 0..<window { sendMessage(client, stamp: now) }
            client.flushIfNeeded()
        }
    }

    /// Open loop: `rate` messages/s from this loop, evenly spaced, regardless of replies. Each
    /// message carries its intended send time, so generator stalls show up as latency
    /// (no coordinated omission).
    func startOpenLoop(rate: Double, start: UInt64) {
        guard !senders.isEmpty, rate > 0 else { return }
        closedLoop = false
        trafficRunning = true
        openLoopStart = start
        openLoopIssued = 0
        openLoopInterval = 1e9 / rate
        // One message per tick down to 50 µs spacing; above that rate, several per tick.
        openLoopTickNanos = max(openLoopInterval, 50_000)
        openLoopTicks = 0
        scheduleOpenLoopTick()
    }

    private func scheduleOpenLoopTick() {
        // Absolute deadlines, so timer overhead does not accumulate into drift.
        openLoopTicks += 1
        let deadline = openLoopStart + UInt64(Double(openLoopTicks) * openLoopTickNanos)
        openLoopTask = loop.assumeIsolated().scheduleTask(deadline: .uptimeNanoseconds(deadline)) { [weak self] in
            self?.openLoopFire()
        }
    }

    private func openLoopFire() {
        guard trafficRunning else { return }
        let now = MonotonicClock.nanos()
        let due = UInt64(Double(now &- openLoopStart) / openLoopInterval) + 1
        while openLoopIssued < due {
            let intended = openLoopStart + UInt64(Double(openLoopIssued) * openLoopInterval)
            if intended > now { break }
            let client = senders[nextSender]
            nextSender = (nextSender + 1) % senders.count
            sendMessage(client, stamp: intended)
            if recording { stats.sendLag.recordMicros(sinceNanos: intended, now: now) }
            dirty.append(client)
            openLoopIssued += 1
        }
        for client in dirty { client.flushIfNeeded() }
        dirty.removeAll(keepingCapacity: true)
        // If the loop fell behind by more than a tick, skip the missed ticks (the messages are
        // still issued above, with their intended send times).
        let next = openLoopStart + UInt64(Double(openLoopTicks) * openLoopTickNanos)
        if next < now { openLoopTicks = UInt64(Double(now - openLoopStart) / openLoopTickNanos) }
        scheduleOpenLoopTick()
    }

    func setRecording(_ on: Bool) {
        if on { resetStats() }
        recording = on
    }

    func stopTraffic() {
        trafficRunning = false
        openLoopTask?.cancel()
        openLoopTask = nil
    }

    func client(_ client: XMPPClient, receivedMessageBytes bytes: ByteBuffer) -> Bool {
        if muc != nil { return mucReceivedBytes(client, bytes) }
        let (stamp, isError) = FastScan.idNumberAndType(bytes, idPrefix: Self.idPrefix)
        if isError {
            stats.messageErrors += 1
            return true
        }
        guard let stamp else { return false }
        let now = MonotonicClock.nanos()
        if recording {
            stats.received += 1
            stats.messageLatency.recordMicros(sinceNanos: stamp, now: now)
        }
        if closedLoop && trafficRunning {
            sendMessage(client, stamp: now)
        }
        return true
    }
}
