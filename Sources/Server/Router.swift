import NIOConcurrencyHelpers
import XMLStream
import XMPPCore

/// The table of bound sessions, by bare JID, and local delivery.
public final class Router: Sendable {
    private let table = NIOLockedValueBox<[String: [SessionHandle]]>([:])
    private let counter = NIOLockedValueBox<UInt64>(0)

    public init() {}

    func nextID() -> UInt64 {
        counter.withLockedValue {
            $0 += 1
            return $0
        }
    }

    /// Adds a session; returns the session it replaces (same full JID), which the caller must close.
    func bind(_ session: SessionHandle) -> SessionHandle? {
        switch bind(session, maxSessions: 0) {
        case .bound(let replaced): return replaced
        case .refused: return nil
        }
    }

    enum BindResult {
        /// Bound; the session it replaced (same full JID), which the caller must close.
        case bound(replacing: SessionHandle?)
        /// The account already has `maxSessions` other resources bound.
        case refused
    }

    /// Adds a session unless its account already has `maxSessions` (0: no limit) sessions with
    /// other resources. Replacing a session of the same full JID is always allowed. Checked and
    /// bound under one lock, so concurrent binds cannot overshoot.
    func bind(_ session: SessionHandle, maxSessions: Int) -> BindResult {
        table.withLockedValue { table in
            var sessions = table[session.bareKey, default: []]
            var replaced: SessionHandle?
            if let index = sessions.firstIndex(where: { $0.jid == session.jid }) {
                replaced = sessions.remove(at: index)
            } else if maxSessions > 0, sessions.count >= maxSessions {
                return .refused
            }
            sessions.append(session)
            table[session.bareKey] = sessions
            return .bound(replacing: replaced)
        }
    }

    /// Removes a session; returns false if it was not bound (already replaced).
    @discardableResult
    func unbind(_ session: SessionHandle) -> Bool {
        table.withLockedValue { table in
            guard var sessions = table[session.bareKey], let index = sessions.firstIndex(of: session) else { return false }
            sessions.remove(at: index)
            table[session.bareKey] = sessions.isEmpty ? nil : sessions
            return true
        }
    }

    /// Whether a full JID is currently bound.
    public func isBound(_ jid: JID) -> Bool { session(jid) != nil }

    /// All sessions of a bare JID.
    public func sessions(of bare: String) -> [SessionHandle] {
        table.withLockedValue { $0[bare] ?? [] }
    }

    /// The session of a full JID.
    public func session(_ jid: JID) -> SessionHandle? {
        session(jid, bare: jid.bare.description)
    }

    /// The session of a full JID whose bare JID the caller has as text already.
    public func session(_ jid: JID, bare: String) -> SessionHandle? {
        table.withLockedValue { table in table[bare]?.first { $0.jid == jid } }
    }

    /// Sessions that receive messages addressed to the bare JID (available, priority ≥ 0).
    public func bareMessageTargets(_ bare: String) -> [SessionHandle] {
        sessions(of: bare).filter(\.receivesBareMessages)
    }

    /// Sessions with available presence.
    public func availableSessions(of bare: String) -> [SessionHandle] {
        sessions(of: bare).filter { $0.readPresence { $0.available } }
    }

    /// Number of bound sessions (metrics).
    public var sessionCount: Int {
        table.withLockedValue { $0.values.reduce(0) { $0 + $1.count } }
    }

    /// Every bound session (shutdown).
    public func allSessions() -> [SessionHandle] {
        table.withLockedValue { Array($0.values.joined()) }
    }
}
