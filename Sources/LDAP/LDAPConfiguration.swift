/// Where and how to connect to a directory server.
///
/// ```swift
/// var configuration = try LDAPConfiguration(url: "ldap://ldap.corp.example:389")
/// configuration.startTLS = true
/// configuration.caCertificatePath = "/etc/switchboard/corp-ca.pem"
/// ```
public struct LDAPConfiguration: Sendable, Hashable {
    public enum TransportSecurity: Sendable, Hashable {
        /// `ldap://` without StartTLS: only for tests or a loopback directory.
        case none
        /// `ldap://` upgraded with the StartTLS extended operation before anything else is sent.
        case startTLS
        /// `ldaps://`: TLS from the first byte.
        case ldaps
    }

    public var host: String
    public var port: Int
    /// True for `ldaps://` URLs.
    public let isLDAPS: Bool
    /// Upgrade an `ldap://` connection with StartTLS (ignored for `ldaps://`).
    public var startTLS: Bool
    /// PEM bundle of the CAs to trust; nil trusts the system roots.
    public var caCertificatePath: String?
    /// Check that the server certificate names `host` (a DNS name, or an IP address SAN when
    /// `host` is an IP literal). Turn off only for servers reached by an address their
    /// certificate does not list; the chain is still verified against the trusted CAs.
    public var verifyHostname: Bool
    /// TCP connect plus TLS handshake (LDAPS or StartTLS).
    public var connectTimeout: Duration
    /// Longest silence tolerated while an operation waits for the server: a search fails with
    /// `.timeout` when no message for it arrives for this long (a long search that keeps
    /// streaming entries does not time out).
    public var operationTimeout: Duration
    /// Largest PDU accepted from the server; a larger one closes the connection with `.protocolError`.
    public var maximumMessageSize: Int

    public var transportSecurity: TransportSecurity {
        isLDAPS ? .ldaps : (startTLS ? .startTLS : .none)
    }

    /// - Parameter url: `ldap://host[:port][/]` (port 389) or `ldaps://host[:port][/]` (port 636);
    ///   IPv6 literals in brackets (`ldap://[::1]:389`).
    /// - Throws: `LDAPError.invalidArgument` for anything else.
    public init(
        url: String,
        startTLS: Bool = false,
        caCertificatePath: String? = nil,
        verifyHostname: Bool = true,
        connectTimeout: Duration = .seconds(10),
        operationTimeout: Duration = .seconds(30),
        maximumMessageSize: Int = 16 * 1024 * 1024
    ) throws {
        let lowered = url.lowercased()
        var rest: Substring
        if lowered.hasPrefix("ldap://") {
            isLDAPS = false
            rest = url.dropFirst("ldap://".count)
        } else if lowered.hasPrefix("ldaps://") {
            isLDAPS = true
            rest = url.dropFirst("ldaps://".count)
        } else {
            throw LDAPError.invalidArgument("LDAP URL must start with ldap:// or ldaps://: \(url)")
        }
        if let slash = rest.firstIndex(of: "/") {
            guard rest[slash...].allSatisfy({ $0 == "/" }) else {
                throw LDAPError.invalidArgument("LDAP URL must not carry a DN, attributes or filter here: \(url)")
            }
            rest = rest[..<slash]
        }
        var portText: Substring?
        if rest.hasPrefix("[") {
            guard let close = rest.firstIndex(of: "]") else { throw LDAPError.invalidArgument("unclosed '[' in \(url)") }
            host = String(rest[rest.index(after: rest.startIndex)..<close])
            let after = rest[rest.index(after: close)...]
            if !after.isEmpty {
                guard after.hasPrefix(":") else { throw LDAPError.invalidArgument("unexpected text after ']' in \(url)") }
                portText = after.dropFirst()
            }
        } else if let colon = rest.firstIndex(of: ":") {
            host = String(rest[..<colon])
            portText = rest[rest.index(after: colon)...]
        } else {
            host = String(rest)
        }
        guard !host.isEmpty else { throw LDAPError.invalidArgument("LDAP URL has no host: \(url)") }
        if let portText {
            guard let value = Int(portText), (1...65535).contains(value) else {
                throw LDAPError.invalidArgument("bad port in LDAP URL: \(url)")
            }
            port = value
        } else {
            port = isLDAPS ? 636 : 389
        }
        if isLDAPS && startTLS {
            throw LDAPError.invalidArgument("startTLS cannot be combined with an ldaps:// URL")
        }
        guard maximumMessageSize >= 1024 else {
            throw LDAPError.invalidArgument("maximumMessageSize must be at least 1024 bytes")
        }
        self.startTLS = startTLS
        self.caCertificatePath = caCertificatePath
        self.verifyHostname = verifyHostname
        self.connectTimeout = connectTimeout
        self.operationTimeout = operationTimeout
        self.maximumMessageSize = maximumMessageSize
    }

    /// `ldap://host:port` or `ldaps://host:port`, for logs.
    public var url: String {
        let shownHost = host.contains(":") ? "[\(host)]" : host
        return (isLDAPS ? "ldaps://" : "ldap://") + "\(shownHost):\(port)"
    }
}
