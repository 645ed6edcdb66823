import NIOConcurrencyHelpers
import Server

/// Write-behind in order: records accumulate while the previous batch is written, so one
/// transaction carries all that arrived meanwhile; `flushed()` waits for what was enqueued
/// before it. Used for the rooms' persistent state (messages go through `MessageJournal`).
final class GroupCommitWriter<Record: Sendable>: Sendable {
    private struct State {
        var pending: [Record] = []
        var enqueued: UInt64 = 0
        var durable: UInt64 = 0
        var flushing = false
        var waiters: [(UInt64, CheckedContinuation<Void, Never>)] = []
    }

    private let state = NIOLockedValueBox(State())
    private let name: String
    private let write: @Sendable ([Record], ServerContext) async throws -> Void

    init(name: String, write: @escaping @Sendable ([Record], ServerContext) async throws -> Void) {
        self.name = name
        self.write = write
    }

    func enqueue(_ records: [Record], server: ServerContext) {
        guard !records.isEmpty else { return }
        let start = state.withLockedValue { state -> Bool in
            state.pending.append(contentsOf: records)
            state.enqueued += 1
            guard !state.flushing else { return false }
            state.flushing = true
            return true
        }
        if start { server.track { await self.drain(server) } }
    }

    private func drain(_ server: ServerContext) async {
        var failures = 0
        while true {
            let (batch, upTo) = state.withLockedValue { state -> ([Record], UInt64) in
                let batch = state.pending
                state.pending = []
                if batch.isEmpty { state.flushing = false }
                return (batch, state.enqueued)
            }
            guard !batch.isEmpty else { return }
            do {
                try await write(batch, server)
                failures = 0
            } catch {
                // Never drop: put the batch back and retry with back-off.
                failures += 1
                server.logger.error("\(name) write failed; retrying", metadata: ["error": "\(error)", "batch": "\(batch.count)"])
                state.withLockedValue { $0.pending.insert(contentsOf: batch, at: 0) }
                try? await Task.sleep(for: .milliseconds(min(5000, 50 * failures)))
                continue
            }
            let ready = state.withLockedValue { state -> [CheckedContinuation<Void, Never>] in
                state.durable = upTo
                let ready = state.waiters.filter { $0.0 <= upTo }.map(\.1)
                state.waiters.removeAll { $0.0 <= upTo }
                return ready
            }
            for waiter in ready { waiter.resume() }
        }
    }

    /// Returns once everything enqueued before the call is durable.
    func flushed() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let done = state.withLockedValue { state -> Bool in
                if state.durable >= state.enqueued { return true }
                state.waiters.append((state.enqueued, continuation))
                return false
            }
            if done { continuation.resume() }
        }
    }
}
