import NIOConcurrencyHelpers
import NIOCore
import XMLStream
import XMPPCore

/// A bound client session as the rest of the server sees it.
///
/// Safe to use from any thread: delivery hops onto the session's event loop, and the
/// presence state other sessions read is behind a lock (uncontended in practice).
public final class SessionHandle: Sendable, Hashable, CustomStringConvertible {
    /// Full JID of the session.
    public let jid: JID
    /// Bare JID string, the router's key.
    public let bareKey: String
    /// Full JID string (the `to` of everything delivered to this session).
    public let fullKey: String
    public let id: UInt64
    /// Serial of the client certificate the session logged in with (SASL EXTERNAL), if any:
    /// revoking it ends the session.
    public let certificateSerial: String?
    let eventLoop: any EventLoop
    private let sink: NIOLoopBound<any StanzaSink>
    private let state: NIOLockedValueBox<PresenceState>

    /// Presence of a session, as RFC 6121 needs it for routing.
    public struct PresenceState: Sendable {
        /// Initial presence sent and not withdrawn.
        public var available = false
        public var priority = 0
        /// Last broadcast presence, `from` stamped.
        public var presence: XMLElement?
        /// The client fetched its roster, so it gets roster pushes (RFC 6121 §2.1.6).
        public var interestedInRoster = false
        /// Full or bare JIDs that received directed presence and must get `unavailable`.
        public var directedTo: Set<String> = []
        /// XEP-0280 message carbons enabled.
        public var carbons = false
        /// XEP-0198: the connection is gone and the session waits to be resumed.
        public var detached = false
    }

    init(jid: JID, id: UInt64, eventLoop: any EventLoop, sink: any StanzaSink, certificateSerial: String? = nil) {
        self.jid = jid
        self.bareKey = jid.bare.description
        self.fullKey = jid.description
        self.id = id
        self.certificateSerial = certificateSerial
        self.eventLoop = eventLoop
        self.sink = NIOLoopBound(sink, eventLoop: eventLoop)
        self.state = NIOLockedValueBox(PresenceState())
    }

    public var description: String { "\(jid)#\(id)" }

    /// Sends a stanza to the client (from any thread).
    /// - Parameter text: the stanza already serialised standalone (`XMLSerializer.string`, with
    ///   `xmlns='jabber:client'`), written as it is instead of serialising it again.
    public func deliver(_ stanza: XMLElement, text: String? = nil) {
        if eventLoop.inEventLoop {
            sink.value.send(stanza, text: text)
        } else {
            let sink = self.sink
            eventLoop.execute { sink.value.send(stanza, text: text) }
        }
    }

    /// Sends a stanza serialised once for many recipients, addressed to this session (from any thread).
    public func deliver(_ shared: SharedStanza) {
        let to = fullKey
        if eventLoop.inEventLoop {
            sink.value.sendShared(shared, to: to)
        } else {
            let sink = self.sink
            eventLoop.execute { sink.value.sendShared(shared, to: to) }
        }
    }

    /// XEP-0352: the client says it is (in)active; inactive sessions get presence batched.
    public func setClientActive(_ active: Bool) {
        if eventLoop.inEventLoop {
            sink.value.setClientActive(active)
        } else {
            let sink = self.sink
            eventLoop.execute { sink.value.setClientActive(active) }
        }
    }

    /// Asks the session's handler (on its event loop) to hand over to a resuming connection.
    func handOver(to successor: SessionHandle) -> EventLoopFuture<StreamHandOver?> {
        let sink = self.sink
        return eventLoop.submit { sink.value.handOver(to: successor) }
    }

    /// Copies presence state from the session this one resumes.
    func adoptPresence(of previous: SessionHandle) {
        let state = previous.presence
        updatePresence { $0 = state }
    }

    /// Ends the session with a stream error (from any thread).
    public func close(_ error: StreamError) {
        let sink = self.sink
        eventLoop.execute { sink.value.terminate(error) }
    }

    public var presence: PresenceState { state.withLockedValue { $0 } }

    /// One part of the presence state, read without copying the rest (its stanza, its sets).
    public func readPresence<T>(_ body: (borrowing PresenceState) -> T) -> T { state.withLockedValue { body($0) } }

    /// Mutates the presence state atomically and returns what `body` returns.
    @discardableResult
    public func updatePresence<T>(_ body: (inout PresenceState) -> T) -> T {
        state.withLockedValue { body(&$0) }
    }

    /// Available with a non-negative priority: eligible for messages to the bare JID.
    public var receivesBareMessages: Bool {
        state.withLockedValue { $0.available && $0.priority >= 0 }
    }

    public static func == (lhs: SessionHandle, rhs: SessionHandle) -> Bool { lhs === rhs }
    public func hash(into hasher: inout Hasher) { hasher.combine(ObjectIdentifier(self)) }
}

/// What a session handler offers the router: write a stanza, or end the stream. Called on its event loop.
protocol StanzaSink: AnyObject {
    /// `text`: the stanza serialised standalone, when the caller has it.
    func send(_ stanza: XMLElement, text: String?)
    /// Sends a pre-serialised stanza with `to` set to `to`.
    func sendShared(_ stanza: SharedStanza, to: String)
    func terminate(_ error: StreamError)
    func setClientActive(_ active: Bool)
    /// XEP-0198: give up the session to a resuming connection; nil if it cannot be resumed.
    func handOver(to successor: SessionHandle) -> StreamHandOver?
}
