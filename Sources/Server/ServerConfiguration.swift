import Foundation
import Yams

/// Everything an administrator can set, with the embedded defaults.
///
/// Loaded from YAML (`switchboard serve --config FILE`); every key is optional. Unknown keys
/// and bad values stop start-up with a message naming the key (see `ConfigurationError`).
public struct ServerConfiguration: Sendable, Codable, Hashable {
    /// The XMPP domain this server serves: the part after `@` in every address.
    public var domain: String = "localhost"
    /// Where the database, certificate and files live.
    public var dataDir: String = "./data"
    /// trace, debug, info, notice, warning, error, critical.
    public var logLevel: String = "info"
    /// `text` (one human-readable line per event) or `json` (one JSON object per line).
    public var logFormat: String = "text"
    /// Event-loop threads; default one per CPU the process may use (taskset/cpuset aware).
    public var threads: Int?
    /// On first start with no accounts, create `admin@domain` and print its one-time password.
    public var bootstrapAdmin: Bool = true
    public var c2s: Listener = Listener(bind: "0.0.0.0", port: 5222)
    public var c2sDirectTLS: Listener = Listener(bind: "0.0.0.0", port: 5223)
    public var http: Listener = Listener(bind: "127.0.0.1", port: 5280)
    public var tls: TLS = TLS()
    public var limits: Limits = Limits()
    public var registration: Registration = Registration()
    public var upload: Upload = Upload()
    public var directory: Directory = Directory()
    public var ldap: LDAP = LDAP()
    public var security: Security = Security()
    public var muc: MUC = MUC()
    public var certificateLogin: CertificateLogin = CertificateLogin()

    public init() {}

    public struct MUC: Sendable, Codable, Hashable {
        /// Multi-user chat (XEP-0045) on `domain`.
        public var enabled: Bool = true
        /// The service's domain; default `conference.<domain>`. Clients must be able to resolve
        /// nothing for it: it is served by this server, no DNS needed.
        public var domain: String?
        /// Messages a room keeps in memory for history on join (rooms may ask for fewer).
        public var maxHistory: Int = 50
        /// Most occupants a room may hold (rooms may set a lower limit).
        public var maxOccupants: Int = 1000
        /// Rooms one user may own.
        public var maxRoomsPerUser: Int = 100
        /// Bare JIDs allowed to create rooms; empty: any local user.
        public var roomCreators: [String] = []
        public init() {}

        enum CodingKeys: String, CodingKey, CaseIterable {
            case enabled, domain, maxHistory = "max_history", maxOccupants = "max_occupants"
            case maxRoomsPerUser = "max_rooms_per_user", roomCreators = "room_creators"
        }

        public init(from decoder: any Decoder) throws {
            let container = try decoder.container(keyedBy: CodingKeys.self)
            let defaults = Self()
            enabled = try container.decodeIfPresent(Bool.self, forKey: .enabled) ?? defaults.enabled
            domain = try container.decodeIfPresent(String.self, forKey: .domain)
            maxHistory = try container.decodeIfPresent(Int.self, forKey: .maxHistory) ?? defaults.maxHistory
            maxOccupants = try container.decodeIfPresent(Int.self, forKey: .maxOccupants) ?? defaults.maxOccupants
            maxRoomsPerUser = try container.decodeIfPresent(Int.self, forKey: .maxRoomsPerUser) ?? defaults.maxRoomsPerUser
            roomCreators = try container.decodeIfPresent([String].self, forKey: .roomCreators) ?? defaults.roomCreators
        }
    }

    /// The multi-user chat service's domain.
    public var mucDomain: String { muc.domain ?? "conference.\(domain)" }

    public struct Listener: Sendable, Codable, Hashable {
        public var enabled: Bool = true
        /// Address to listen on.
        public var bind: String
        /// TCP port; 0 picks a free one (tests).
        public var port: Int
        /// Only for `c2s`: refuse authentication before STARTTLS.
        public var requireTLS: Bool = true

        public init(enabled: Bool = true, bind: String, port: Int, requireTLS: Bool = true) {
            self.enabled = enabled
            self.bind = bind
            self.port = port
            self.requireTLS = requireTLS
        }
    }

    public struct TLS: Sendable, Codable, Hashable {
        /// PEM certificate chain; when unset, a self-signed one is generated in `data_dir` on first start.
        public var certificate: String?
        /// PEM private key for `certificate`.
        public var privateKey: String?
        /// PEM file of CA certificates whose client certificates may log in (SASL EXTERNAL), in
        /// addition to the server's own CA in `data_dir/ca` (`switchboard ca init`).
        public var clientCA: String?
        public init() {}
    }

    /// Who must log in with a client certificate (SASL EXTERNAL) rather than a password.
    public struct CertificateLogin: Sendable, Codable, Hashable {
        /// Users holding any of these directory roles (e.g. admin, auditor).
        public var requiredRoles: [String] = []
        /// Users in any of these directory units or units below them (unit ids or paths).
        public var requiredUnits: [String] = []
        public init() {}

        public var isEmpty: Bool { requiredRoles.isEmpty && requiredUnits.isEmpty }

        enum CodingKeys: String, CodingKey, CaseIterable {
            case requiredRoles = "required_roles", requiredUnits = "required_units"
        }

        public init(from decoder: any Decoder) throws {
            let container = try decoder.container(keyedBy: CodingKeys.self)
            requiredRoles = try container.decodeIfPresent([String].self, forKey: .requiredRoles) ?? []
            requiredUnits = try container.decodeIfPresent([String].self, forKey: .requiredUnits) ?? []
        }
    }

    public struct Limits: Sendable, Codable, Hashable {
        /// Largest stanza a client may send, in bytes.
        public var maxStanzaBytes: Int = 262_144
        /// Deepest XML nesting inside the stream.
        public var maxDepth: Int = 64
        /// Seconds a connection may take to authenticate and bind.
        public var loginTimeoutSeconds: Int = 60
        /// Seconds of silence after which the server pings the client; twice that and it disconnects.
        public var idleTimeoutSeconds: Int = 300
        /// How long a session with XEP-0198 resumption survives a lost connection.
        public var resumptionTimeoutSeconds: Int = 300
        /// Failed logins allowed per account (ten times that per source address) within
        /// `login_failure_window_seconds` before the account (address) is locked out.
        public var maxLoginFailures: Int = 5
        public var loginFailureWindowSeconds: Int = 300
        /// First lockout; each further lockout of the same key doubles it, up to `login_lockout_max_seconds`.
        public var loginLockoutSeconds: Int = 60
        public var loginLockoutMaxSeconds: Int = 3600
        /// Largest stanza before authentication (SASL, registration), so unauthenticated
        /// connections cannot make the server hold much. The smaller of this and `max_stanza_bytes` applies.
        public var maxStanzaBytesBeforeAuth: Int = 16_384
        /// Per connection: top-level elements per second, token bucket (0 = no limit). Over it the
        /// server stops reading from the connection until tokens are earned back (backpressure).
        public var stanzaRatePerSecond: Int = 50
        /// Bucket size: how many elements a client may send at once (login, reconnection bursts).
        public var stanzaBurst: Int = 200
        /// A connection held back continuously for this long is closed with `policy-violation` (0 = never).
        public var stanzaRateDisconnectAfterSeconds: Int = 30
        /// Concurrent client connections per source address (IPv6: per /64), refused at accept (0 = no limit).
        public var maxConnectionsPerAddress: Int = 1000
        /// New client connections per second per source address, token bucket (0 = no limit).
        public var connectionRatePerAddress: Int = 50
        public var connectionBurstPerAddress: Int = 200
        /// Bound resources per account; one more gets `<resource-constraint/>` on bind (0 = no limit).
        public var maxSessionsPerUser: Int = 10
        /// Addresses or CIDR ranges (`10.1.0.0/16`, `2001:db8::/48`) the per-address connection
        /// limits do not apply to: trusted NAT gateways, load balancers.
        public var exemptAddresses: [String] = []
        public init() {}
    }

    public struct Upload: Sendable, Codable, Hashable {
        /// HTTP file upload (XEP-0363), files served by this server's HTTP listener.
        public var enabled: Bool = true
        /// Largest file a user may upload, in bytes.
        public var maxFileBytes: Int = 104_857_600
        /// Total bytes of files one user may keep.
        public var quotaBytesPerUser: Int = 1_073_741_824
        /// Files older than this are deleted; 0 keeps them forever.
        public var expireAfterDays: Int = 0
        /// Base URL clients use to reach the HTTP listener (behind your TLS proxy), e.g.
        /// https://chat.example.com. Default: http://DOMAIN:HTTP_PORT.
        public var publicURL: String?
        public init() {}

        enum CodingKeys: String, CodingKey, CaseIterable {
            case enabled, maxFileBytes = "max_file_bytes", quotaBytesPerUser = "quota_bytes_per_user"
            case expireAfterDays = "expire_after_days", publicURL = "public_url"
        }

        public init(from decoder: any Decoder) throws {
            let container = try decoder.container(keyedBy: CodingKeys.self)
            let defaults = Self()
            enabled = try container.decodeIfPresent(Bool.self, forKey: .enabled) ?? defaults.enabled
            maxFileBytes = try container.decodeIfPresent(Int.self, forKey: .maxFileBytes) ?? defaults.maxFileBytes
            quotaBytesPerUser = try container.decodeIfPresent(Int.self, forKey: .quotaBytesPerUser) ?? defaults.quotaBytesPerUser
            expireAfterDays = try container.decodeIfPresent(Int.self, forKey: .expireAfterDays) ?? defaults.expireAfterDays
            publicURL = try container.decodeIfPresent(String.self, forKey: .publicURL)
        }
    }

    public struct Directory: Sendable, Codable, Hashable {
        /// Put the user's own units and the always-visible units in their roster, as groups named
        /// by unit path, with presence shared without subscription requests.
        public var roster: Bool = true
        /// How often the server looks for directory changes made by other processes (the
        /// `switchboard org` and `ldap` commands), in milliseconds.
        public var refreshIntervalMs: Int = 1000
        /// Most results one directory search (XEP-0055) returns.
        public var searchMaxResults: Int = 50
        /// Separator between unit names in roster groups and paths.
        public var groupSeparator: String = "/"
        /// One members-only group chat per unit (when `muc` is on), its members kept equal to the
        /// unit's: people join and leave rooms with their department.
        public var departmentRooms: Bool = true
        public init() {}

        enum CodingKeys: String, CodingKey, CaseIterable {
            case roster, refreshIntervalMs = "refresh_interval_ms", searchMaxResults = "search_max_results"
            case groupSeparator = "group_separator", departmentRooms = "department_rooms"
        }

        public init(from decoder: any Decoder) throws {
            let container = try decoder.container(keyedBy: CodingKeys.self)
            let defaults = Self()
            roster = try container.decodeIfPresent(Bool.self, forKey: .roster) ?? defaults.roster
            refreshIntervalMs = try container.decodeIfPresent(Int.self, forKey: .refreshIntervalMs) ?? defaults.refreshIntervalMs
            searchMaxResults = try container.decodeIfPresent(Int.self, forKey: .searchMaxResults) ?? defaults.searchMaxResults
            groupSeparator = try container.decodeIfPresent(String.self, forKey: .groupSeparator) ?? defaults.groupSeparator
            departmentRooms = try container.decodeIfPresent(Bool.self, forKey: .departmentRooms) ?? defaults.departmentRooms
        }
    }

    public struct Registration: Sendable, Codable, Hashable {
        /// In-band registration (XEP-0077). Off: enterprise accounts come from the back office.
        public var enabled: Bool = false
        public init() {}
    }

    enum CodingKeys: String, CodingKey, CaseIterable {
        case domain, dataDir = "data_dir", logLevel = "log_level", logFormat = "log_format", bootstrapAdmin = "bootstrap_admin", threads
        case c2s, c2sDirectTLS = "c2s_direct_tls", http, tls, limits, registration, upload, directory, ldap, muc, security, certificateLogin = "certificate_login"
    }
}

extension ServerConfiguration.Listener {
    enum CodingKeys: String, CodingKey, CaseIterable {
        case enabled, bind, port, requireTLS = "require_tls"
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        enabled = try container.decodeIfPresent(Bool.self, forKey: .enabled) ?? true
        bind = try container.decodeIfPresent(String.self, forKey: .bind) ?? "0.0.0.0"
        port = try container.decodeIfPresent(Int.self, forKey: .port) ?? 0
        requireTLS = try container.decodeIfPresent(Bool.self, forKey: .requireTLS) ?? true
    }
}

extension ServerConfiguration.TLS {
    enum CodingKeys: String, CodingKey, CaseIterable {
        case certificate, privateKey = "private_key", clientCA = "client_ca"
    }
}

extension ServerConfiguration.Limits {
    enum CodingKeys: String, CodingKey, CaseIterable {
        case maxStanzaBytes = "max_stanza_bytes", maxDepth = "max_depth", loginTimeoutSeconds = "login_timeout_seconds"
        case idleTimeoutSeconds = "idle_timeout_seconds", maxLoginFailures = "max_login_failures"
        case resumptionTimeoutSeconds = "resumption_timeout_seconds"
        case loginFailureWindowSeconds = "login_failure_window_seconds"
        case loginLockoutSeconds = "login_lockout_seconds", loginLockoutMaxSeconds = "login_lockout_max_seconds"
        case maxStanzaBytesBeforeAuth = "max_stanza_bytes_before_auth"
        case stanzaRatePerSecond = "stanza_rate_per_second", stanzaBurst = "stanza_burst"
        case stanzaRateDisconnectAfterSeconds = "stanza_rate_disconnect_after_seconds"
        case maxConnectionsPerAddress = "max_connections_per_address"
        case connectionRatePerAddress = "connection_rate_per_address", connectionBurstPerAddress = "connection_burst_per_address"
        case maxSessionsPerUser = "max_sessions_per_user", exemptAddresses = "exempt_addresses"
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        let defaults = Self()
        maxStanzaBytes = try container.decodeIfPresent(Int.self, forKey: .maxStanzaBytes) ?? defaults.maxStanzaBytes
        maxDepth = try container.decodeIfPresent(Int.self, forKey: .maxDepth) ?? defaults.maxDepth
        loginTimeoutSeconds = try container.decodeIfPresent(Int.self, forKey: .loginTimeoutSeconds) ?? defaults.loginTimeoutSeconds
        idleTimeoutSeconds = try container.decodeIfPresent(Int.self, forKey: .idleTimeoutSeconds) ?? defaults.idleTimeoutSeconds
        resumptionTimeoutSeconds =
            try container.decodeIfPresent(Int.self, forKey: .resumptionTimeoutSeconds) ?? defaults.resumptionTimeoutSeconds
        maxLoginFailures = try container.decodeIfPresent(Int.self, forKey: .maxLoginFailures) ?? defaults.maxLoginFailures
        loginFailureWindowSeconds =
            try container.decodeIfPresent(Int.self, forKey: .loginFailureWindowSeconds) ?? defaults.loginFailureWindowSeconds
        func int(_ key: CodingKeys, _ fallback: Int) throws -> Int {
            try container.decodeIfPresent(Int.self, forKey: key) ?? fallback
        }
        loginLockoutSeconds = try int(.loginLockoutSeconds, defaults.loginLockoutSeconds)
        loginLockoutMaxSeconds = try int(.loginLockoutMaxSeconds, defaults.loginLockoutMaxSeconds)
        maxStanzaBytesBeforeAuth = try int(.maxStanzaBytesBeforeAuth, defaults.maxStanzaBytesBeforeAuth)
        stanzaRatePerSecond = try int(.stanzaRatePerSecond, defaults.stanzaRatePerSecond)
        stanzaBurst = try int(.stanzaBurst, defaults.stanzaBurst)
        stanzaRateDisconnectAfterSeconds = try int(.stanzaRateDisconnectAfterSeconds, defaults.stanzaRateDisconnectAfterSeconds)
        maxConnectionsPerAddress = try int(.maxConnectionsPerAddress, defaults.maxConnectionsPerAddress)
        connectionRatePerAddress = try int(.connectionRatePerAddress, defaults.connectionRatePerAddress)
        connectionBurstPerAddress = try int(.connectionBurstPerAddress, defaults.connectionBurstPerAddress)
        maxSessionsPerUser = try int(.maxSessionsPerUser, defaults.maxSessionsPerUser)
        exemptAddresses = try container.decodeIfPresent([String].self, forKey: .exemptAddresses) ?? defaults.exemptAddresses
    }
}

extension ServerConfiguration.Registration {
    enum CodingKeys: String, CodingKey, CaseIterable { case enabled }
}

extension ServerConfiguration {
    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        let defaults = Self()
        domain = try container.decodeIfPresent(String.self, forKey: .domain) ?? defaults.domain
        dataDir = try container.decodeIfPresent(String.self, forKey: .dataDir) ?? defaults.dataDir
        logLevel = try container.decodeIfPresent(String.self, forKey: .logLevel) ?? defaults.logLevel
        logFormat = try container.decodeIfPresent(String.self, forKey: .logFormat) ?? defaults.logFormat
        bootstrapAdmin = try container.decodeIfPresent(Bool.self, forKey: .bootstrapAdmin) ?? defaults.bootstrapAdmin
        threads = try container.decodeIfPresent(Int.self, forKey: .threads)
        c2s = try Self.listener(container, .c2s, defaults.c2s)
        c2sDirectTLS = try Self.listener(container, .c2sDirectTLS, defaults.c2sDirectTLS)
        http = try Self.listener(container, .http, defaults.http)
        tls = try container.decodeIfPresent(TLS.self, forKey: .tls) ?? defaults.tls
        limits = try container.decodeIfPresent(Limits.self, forKey: .limits) ?? defaults.limits
        registration = try container.decodeIfPresent(Registration.self, forKey: .registration) ?? defaults.registration
        upload = try container.decodeIfPresent(Upload.self, forKey: .upload) ?? defaults.upload
        directory = try container.decodeIfPresent(Directory.self, forKey: .directory) ?? defaults.directory
        ldap = try container.decodeIfPresent(LDAP.self, forKey: .ldap) ?? defaults.ldap
        muc = try container.decodeIfPresent(MUC.self, forKey: .muc) ?? defaults.muc
        security = try container.decodeIfPresent(Security.self, forKey: .security) ?? defaults.security
        certificateLogin = try container.decodeIfPresent(CertificateLogin.self, forKey: .certificateLogin) ?? defaults.certificateLogin
    }

    /// A listener section falls back to the defaults key by key, so `c2s: {port: 0}` keeps `bind`.
    private static func listener(
        _ container: KeyedDecodingContainer<CodingKeys>, _ key: CodingKeys, _ fallback: Listener
    ) throws -> Listener {
        guard container.contains(key) else { return fallback }
        let nested = try container.nestedContainer(keyedBy: Listener.CodingKeys.self, forKey: key)
        return Listener(
            enabled: try nested.decodeIfPresent(Bool.self, forKey: .enabled) ?? fallback.enabled,
            bind: try nested.decodeIfPresent(String.self, forKey: .bind) ?? fallback.bind,
            port: try nested.decodeIfPresent(Int.self, forKey: .port) ?? fallback.port,
            requireTLS: try nested.decodeIfPresent(Bool.self, forKey: .requireTLS) ?? fallback.requireTLS
        )
    }
}

/// A configuration problem, worded for the administrator: which key, what is wrong.
public struct ConfigurationError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

extension ServerConfiguration {
    /// Known keys per section, for the unknown-key check.
    private static let knownKeys: [String: Set<String>] = [
        "": Set(CodingKeys.allCases.map(\.rawValue)),
        "c2s": Set(Listener.CodingKeys.allCases.map(\.rawValue)),
        "c2s_direct_tls": Set(Listener.CodingKeys.allCases.map(\.rawValue)),
        "http": Set(Listener.CodingKeys.allCases.map(\.rawValue)),
        "tls": Set(TLS.CodingKeys.allCases.map(\.rawValue)),
        "limits": Set(Limits.CodingKeys.allCases.map(\.rawValue)),
        "registration": Set(Registration.CodingKeys.allCases.map(\.rawValue)),
        "upload": Set(Upload.CodingKeys.allCases.map(\.rawValue)),
        "directory": Set(Directory.CodingKeys.allCases.map(\.rawValue)),
        "ldap": Set(LDAP.CodingKeys.allCases.map(\.rawValue)),
        "ldap.attributes": Set(LDAP.Attributes.CodingKeys.allCases.map(\.rawValue)),
        "muc": Set(MUC.CodingKeys.allCases.map(\.rawValue)),
        "security": Set(Security.CodingKeys.allCases.map(\.rawValue)),
        "certificate_login": Set(CertificateLogin.CodingKeys.allCases.map(\.rawValue)),
    ]

    /// Parses and validates YAML text. `source` names the file in messages.
    public static func parse(yaml text: String, source: String) throws -> ServerConfiguration {
        let node: Node?
        do {
            node = try Yams.compose(yaml: text)
        } catch {
            throw ConfigurationError("\(source): not valid YAML: \(error)")
        }
        guard let node else { return ServerConfiguration() }
        guard let mapping = node.mapping else {
            throw ConfigurationError("\(source): the top level must be a mapping of keys to values")
        }
        try checkKeys(mapping, section: "", source: source)
        let configuration: ServerConfiguration
        do {
            configuration = try YAMLDecoder().decode(ServerConfiguration.self, from: node)
        } catch let DecodingError.typeMismatch(type, context) {
            throw ConfigurationError("\(source): key '\(path(context.codingPath))' must be \(describe(type))")
        } catch let DecodingError.dataCorrupted(context) {
            throw ConfigurationError("\(source): key '\(path(context.codingPath))': \(context.debugDescription)")
        } catch {
            throw ConfigurationError("\(source): \(error)")
        }
        try configuration.validate(source: source)
        return configuration
    }

    /// Reads and validates a configuration file.
    public static func load(path: String) throws -> ServerConfiguration {
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw ConfigurationError("cannot read configuration file \(path): \(error.localizedDescription)")
        }
        return try parse(yaml: text, source: path)
    }

    private static func checkKeys(_ mapping: Node.Mapping, section: String, source: String) throws {
        let known = knownKeys[section] ?? []
        for (keyNode, value) in mapping {
            guard let key = keyNode.string else { continue }
            let qualified = section.isEmpty ? key : "\(section).\(key)"
            guard known.contains(key) else {
                let hint = known.sorted().joined(separator: ", ")
                throw ConfigurationError("\(source): unknown key '\(qualified)' (known keys here: \(hint))")
            }
            if knownKeys[qualified] != nil {
                if value.null != nil { continue }  // `tls:` with only comments under it
                guard let nested = value.mapping else {
                    throw ConfigurationError("\(source): key '\(qualified)' must be a mapping")
                }
                try checkKeys(nested, section: qualified, source: source)
            }
        }
    }

    private static func path(_ codingPath: [any CodingKey]) -> String {
        codingPath.map(\.stringValue).joined(separator: ".")
    }

    private static func describe(_ type: Any.Type) -> String {
        switch type {
        case is Int.Type: return "an integer"
        case is Bool.Type: return "true or false"
        case is String.Type: return "a string"
        case is [String].Type, is [Any].Type: return "a list of strings, e.g. [admin, auditor]"
        default: return "of type \(type)"
        }
    }

    /// Checks values that decode but make no sense.
    public func validate(source: String = "configuration") throws {
        func fail(_ key: String, _ problem: String) -> ConfigurationError {
            ConfigurationError("\(source): key '\(key)' \(problem)")
        }
        if domain.isEmpty || domain.contains(where: { $0 == "@" || $0 == "/" || $0 == " " }) {
            throw fail("domain", "must be a host name such as example.com (got '\(domain)')")
        }
        if dataDir.isEmpty { throw fail("data_dir", "must not be empty") }
        let levels = ["trace", "debug", "info", "notice", "warning", "error", "critical"]
        if !levels.contains(logLevel) {
            throw fail("log_level", "must be one of \(levels.joined(separator: ", ")) (got '\(logLevel)')")
        }
        if let threads, !(1...256).contains(threads) { throw fail("threads", "must be between 1 and 256 (got \(threads))") }
        if logFormat != "text" && logFormat != "json" {
            throw fail("log_format", "must be text or json (got '\(logFormat)')")
        }
        for (name, listener) in [("c2s", c2s), ("c2s_direct_tls", c2sDirectTLS), ("http", http)] {
            if !(0...65535).contains(listener.port) {
                throw fail("\(name).port", "must be between 0 and 65535 (got \(listener.port))")
            }
            if listener.bind.isEmpty { throw fail("\(name).bind", "must be an address such as 0.0.0.0 or 127.0.0.1") }
        }
        if (tls.certificate == nil) != (tls.privateKey == nil) {
            throw fail(tls.certificate == nil ? "tls.certificate" : "tls.private_key", "must be set together with the other")
        }
        if let clientCA = tls.clientCA, clientCA.isEmpty { throw fail("tls.client_ca", "must be a file path when set") }
        for (key, values) in [("certificate_login.required_roles", certificateLogin.requiredRoles), ("certificate_login.required_units", certificateLogin.requiredUnits)] {
            if let bad = values.first(where: { $0.trimmingCharacters(in: .whitespaces).isEmpty }) {
                throw fail(key, "must list non-empty names (got '\(bad)')")
            }
        }
        if !certificateLogin.isEmpty, !c2s.enabled, !c2sDirectTLS.enabled {
            throw fail("certificate_login", "requires a client listener (c2s or c2s_direct_tls): certificates are presented over TLS")
        }
        if limits.maxStanzaBytes < 1024 || limits.maxStanzaBytes > 16 * 1024 * 1024 {
            throw fail("limits.max_stanza_bytes", "must be between 1024 and 16777216 (got \(limits.maxStanzaBytes))")
        }
        if limits.maxDepth < 4 || limits.maxDepth > 1000 {
            throw fail("limits.max_depth", "must be between 4 and 1000 (got \(limits.maxDepth))")
        }
        if upload.maxFileBytes < 1 { throw fail("upload.max_file_bytes", "must be at least 1 (got \(upload.maxFileBytes))") }
        if upload.quotaBytesPerUser < upload.maxFileBytes {
            throw fail("upload.quota_bytes_per_user", "must be at least upload.max_file_bytes (\(upload.maxFileBytes))")
        }
        if upload.expireAfterDays < 0 { throw fail("upload.expire_after_days", "must be 0 (keep) or more days") }
        if let url = upload.publicURL, !(url.hasPrefix("http://") || url.hasPrefix("https://")) {
            throw fail("upload.public_url", "must start with http:// or https:// (got '\(url)')")
        }
        if !(50...3_600_000).contains(directory.refreshIntervalMs) {
            throw fail("directory.refresh_interval_ms", "must be between 50 and 3600000 (got \(directory.refreshIntervalMs))")
        }
        if !(1...1000).contains(directory.searchMaxResults) {
            throw fail("directory.search_max_results", "must be between 1 and 1000 (got \(directory.searchMaxResults))")
        }
        try ldap.validate(fail)
        try security.validate(fail)
        if directory.groupSeparator.count != 1 {
            throw fail("directory.group_separator", "must be one character (got '\(directory.groupSeparator)')")
        }
        if let mucDomain = muc.domain,
            mucDomain.isEmpty || mucDomain == domain || mucDomain.contains(where: { $0 == "@" || $0 == "/" || $0 == " " })
        {
            throw fail("muc.domain", "must be a host name other than 'domain', such as conference.\(domain) (got '\(mucDomain)')")
        }
        if !(0...10_000).contains(muc.maxHistory) { throw fail("muc.max_history", "must be between 0 and 10000 (got \(muc.maxHistory))") }
        if !(1...100_000).contains(muc.maxOccupants) {
            throw fail("muc.max_occupants", "must be between 1 and 100000 (got \(muc.maxOccupants))")
        }
        if muc.maxRoomsPerUser < 0 { throw fail("muc.max_rooms_per_user", "must be 0 or more (got \(muc.maxRoomsPerUser))") }
        for creator in muc.roomCreators where creator.isEmpty || creator.contains("/") || !creator.contains("@") {
            throw fail("muc.room_creators", "must list bare JIDs such as alice@\(domain) (got '\(creator)')")
        }
        for (key, value) in [
            ("limits.login_timeout_seconds", limits.loginTimeoutSeconds),
            ("limits.idle_timeout_seconds", limits.idleTimeoutSeconds),
            ("limits.resumption_timeout_seconds", limits.resumptionTimeoutSeconds),
            ("limits.max_login_failures", limits.maxLoginFailures),
            ("limits.login_failure_window_seconds", limits.loginFailureWindowSeconds),
            ("limits.login_lockout_seconds", limits.loginLockoutSeconds),
        ] where value < 1 {
            throw fail(key, "must be at least 1 (got \(value))")
        }
        if limits.loginLockoutMaxSeconds < limits.loginLockoutSeconds {
            throw fail("limits.login_lockout_max_seconds", "must be at least limits.login_lockout_seconds (\(limits.loginLockoutSeconds))")
        }
        if !(1024...16 * 1024 * 1024).contains(limits.maxStanzaBytesBeforeAuth) {
            throw fail(
                "limits.max_stanza_bytes_before_auth", "must be between 1024 and 16777216 (got \(limits.maxStanzaBytesBeforeAuth))")
        }
        for (key, value) in [
            ("limits.stanza_rate_per_second", limits.stanzaRatePerSecond),
            ("limits.stanza_rate_disconnect_after_seconds", limits.stanzaRateDisconnectAfterSeconds),
            ("limits.max_connections_per_address", limits.maxConnectionsPerAddress),
            ("limits.connection_rate_per_address", limits.connectionRatePerAddress),
            ("limits.max_sessions_per_user", limits.maxSessionsPerUser),
        ] where value < 0 {
            throw fail(key, "must be 0 (no limit) or more (got \(value))")
        }
        if limits.stanzaRatePerSecond > 0, limits.stanzaBurst < 1 {
            throw fail("limits.stanza_burst", "must be at least 1 when limits.stanza_rate_per_second is set (got \(limits.stanzaBurst))")
        }
        for entry in limits.exemptAddresses where AddressRange(entry) == nil {
            throw fail("limits.exempt_addresses", "must list addresses or CIDR ranges such as 10.1.0.0/16 (got '\(entry)')")
        }
        if limits.connectionRatePerAddress > 0, limits.connectionBurstPerAddress < 1 {
            throw fail(
                "limits.connection_burst_per_address",
                "must be at least 1 when limits.connection_rate_per_address is set (got \(limits.connectionBurstPerAddress))")
        }
    }
}
