import NIOConcurrencyHelpers
import NIOCore
import XMLStream
import XMPPCore

/// XEP-0198 stream management state of one session: counters and the stanzas the client has
/// not acknowledged yet. Pure bookkeeping; the handler does the I/O.
struct StreamManagementState {
    static let ns = "urn:xmpp:sm:3"

    var enabled = false
    var resumable = false
    var token: String?
    /// Stanzas received from the client since enabling (the `h` we report).
    var handledInbound: UInt32 = 0
    /// The client's last acknowledged count of our stanzas.
    var acknowledged: UInt32 = 0
    /// Stanzas sent and not yet acknowledged, oldest first.
    var unacked = CircularBuffer<XMLElement>()
    /// Stanzas sent since we last asked for an acknowledgement.
    var sinceRequest = 0

    /// Records an outbound stanza; returns true when it is time to ask the client for an ack.
    mutating func sent(_ stanza: XMLElement) -> Bool {
        unacked.append(stanza)
        sinceRequest += 1
        if sinceRequest >= 5 {
            sinceRequest = 0
            return true
        }
        return false
    }

    /// Applies the client's `h`; false if it acknowledges more than was sent.
    mutating func acknowledge(_ h: UInt32) -> Bool {
        let count = h &- acknowledged
        guard count <= UInt32(unacked.count) else { return false }
        unacked.removeFirst(Int(count))
        acknowledged = h
        return true
    }
}

/// What a detached session hands to the connection that resumes it.
struct StreamHandOver: Sendable {
    let unacked: [XMLElement]
    let acknowledged: UInt32
    let handledInbound: UInt32
    let token: String
    /// Presence held for an inactive client, not yet sent.
    let held: [XMLElement]
}

/// Sessions that may be resumed, by token. Lives as long as the server.
final class ResumableSessions: Sendable {
    struct Entry: Sendable {
        let user: String
        let handle: SessionHandle
    }

    private let entries = NIOLockedValueBox<[String: Entry]>([:])

    func register(_ token: String, user: String, handle: SessionHandle) {
        entries.withLockedValue { $0[token] = Entry(user: user, handle: handle) }
    }

    /// Removes and returns the entry, only if it belongs to `user` (a guessed token of
    /// another user leaves the session alone).
    func take(_ token: String, user: String) -> Entry? {
        entries.withLockedValue { entries in
            guard entries[token]?.user == user else { return nil }
            return entries.removeValue(forKey: token)
        }
    }

    func remove(_ token: String, ifHandle handle: SessionHandle) {
        entries.withLockedValue { entries in
            if entries[token]?.handle === handle { entries.removeValue(forKey: token) }
        }
    }

    var count: Int { entries.withLockedValue { $0.count } }
}
