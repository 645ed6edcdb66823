import ArgumentParser
import NIOCore
import NIOSSL
import XMPPCore

/// How the generator reaches the server.
enum Transport: String, CaseIterable, ExpressibleByArgument, Sendable {
    /// Plain TCP, no TLS at all.
    case tcp
    /// TCP, then STARTTLS (RFC 6120 §5).
    case starttls
    /// TLS from the first byte (XEP-0368 direct TLS).
    case tls
    /// RFC 7395 XMPP over WebSocket, ws://host:port/xmpp-websocket.
    case ws
    /// RFC 7395 over TLS (wss://).
    case wss

    var hasTLS: Bool { self != .tcp && self != .ws }
    var isWebSocket: Bool { self == .ws || self == .wss }

    var defaultPort: Int {
        switch self {
        case .tcp, .starttls: return 5222
        case .tls: return 5223
        case .ws: return 5280
        case .wss: return 5443
        }
    }
}

/// SASL mechanism the generator uses.
enum Mechanism: String, CaseIterable, ExpressibleByArgument, Sendable {
    case scramSHA1 = "SCRAM-SHA-1"
    case scramSHA256 = "SCRAM-SHA-256"
    case plain = "PLAIN"

    var scramHash: SCRAMHash? {
        switch self {
        case .scramSHA1: return .sha1
        case .scramSHA256: return .sha256
        case .plain: return nil
        }
    }
}

/// Everything a connection needs to know, shared by all connections of a run.
struct ClientSettings: Sendable {
    var host: String
    var port: Int
    var domain: String
    var transport: Transport
    var mechanism: Mechanism
    var password: String
    var userPrefix: String
    var resource: String
    var webSocketPath: String
    /// Per-connection bound from connect to ready (or registered).
    var loginTimeout: TimeAmount
    /// How long to wait for the server to close the stream after we closed ours.
    var closeTimeout: TimeAmount
    var tlsContext: NIOSSLContext?
    /// SNI name sent in the TLS handshake.
    var tlsServerName: String?
    let scramCache: SCRAMSaltedPasswordCache
    var serverAddress: SocketAddress
    /// Source addresses to spread connections over (empty: let the kernel choose).
    var sourceAddresses: [SocketAddress]

    func username(_ index: Int) -> String { "\(userPrefix)\(index)" }

    func sourceAddress(for index: Int) -> SocketAddress? {
        guard !sourceAddresses.isEmpty else { return nil }
        return sourceAddresses[index % sourceAddresses.count]
    }
}
