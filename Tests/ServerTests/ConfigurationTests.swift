import Foundation
import Server
import Testing

@Suite struct ConfigurationTests {
    @Test func emptyFileGivesDefaults() throws {
        let configuration = try ServerConfiguration.parse(yaml: "", source: "test.yaml")
        #expect(configuration == ServerConfiguration())
        #expect(configuration.c2s.port == 5222)
        #expect(configuration.c2sDirectTLS.port == 5223)
        #expect(configuration.http.port == 5280)
        #expect(configuration.http.bind == "127.0.0.1")
        #expect(configuration.c2s.requireTLS)
        #expect(!configuration.registration.enabled)
        #expect(configuration.limits.maxStanzaBytes == 262_144)
    }

    @Test func shippedExampleIsValidAndEqualsTheDefaults() throws {
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../switchboard.example.yaml")
        let configuration = try ServerConfiguration.load(path: url.standardized.path)
        #expect(configuration == ServerConfiguration())
    }

    @Test func partialSectionsKeepOtherDefaults() throws {
        let configuration = try ServerConfiguration.parse(
            yaml: "domain: corp.example\nc2s: {port: 15222}\nlimits: {max_stanza_bytes: 65536}\n", source: "t")
        #expect(configuration.domain == "corp.example")
        #expect(configuration.c2s.port == 15222)
        #expect(configuration.c2s.bind == "0.0.0.0")
        #expect(configuration.limits.maxStanzaBytes == 65536)
        #expect(configuration.limits.maxDepth == 64)
    }

    @Test func mucSection() throws {
        let configuration = try ServerConfiguration.parse(
            yaml: "domain: corp.example\nmuc: {max_history: 10, room_creators: [boss@corp.example]}\n", source: "t")
        #expect(configuration.mucDomain == "conference.corp.example")
        #expect(configuration.muc.maxHistory == 10 && configuration.muc.maxOccupants == 1000)
        #expect(configuration.muc.roomCreators == ["boss@corp.example"])
        let other = try ServerConfiguration.parse(yaml: "muc: {enabled: false, domain: rooms.localhost}\n", source: "t")
        #expect(!other.muc.enabled && other.mucDomain == "rooms.localhost")
    }

    @Test func hardeningLimitsParse() throws {
        let configuration = try ServerConfiguration.parse(
            yaml: "limits: {stanza_rate_per_second: 0, max_sessions_per_user: 3, exempt_addresses: [10.1.0.0/16, '2001:db8::/48', 192.0.2.7]}\n",
            source: "t")
        #expect(configuration.limits.stanzaRatePerSecond == 0)
        #expect(configuration.limits.maxSessionsPerUser == 3)
        #expect(configuration.limits.exemptAddresses == ["10.1.0.0/16", "2001:db8::/48", "192.0.2.7"])
        #expect(configuration.limits.connectionRatePerAddress == 50)
    }

    @Test(arguments: [
        ("colour: blue", "unknown key 'colour'"),
        ("c2s: {prot: 1}", "unknown key 'c2s.prot'"),
        ("c2s: {port: 70000}", "'c2s.port' must be between 0 and 65535"),
        ("c2s: {port: abc}", "'c2s.port' must be an integer"),
        ("domain: 'a b'", "'domain' must be a host name"),
        ("log_level: loud", "'log_level' must be one of"),
        ("log_format: xml", "'log_format' must be text or json"),
        ("tls: {certificate: /x.pem}", "'tls.private_key' must be set together"),
        ("limits: {max_stanza_bytes: 10}", "'limits.max_stanza_bytes' must be between"),
        ("limits: {exempt_addresses: [10.0.0.0/33]}", "'limits.exempt_addresses' must list addresses or CIDR ranges"),
        ("limits: {exempt_addresses: [office]}", "'limits.exempt_addresses' must list addresses or CIDR ranges"),
        ("limits: {stanza_rate_per_second: -1}", "'limits.stanza_rate_per_second' must be 0 (no limit) or more"),
        ("limits: {login_lockout_seconds: 600, login_lockout_max_seconds: 60}", "'limits.login_lockout_max_seconds' must be at least"),
        ("limits: {max_stanza_bytes_before_auth: 100}", "'limits.max_stanza_bytes_before_auth' must be between"),
        ("limits: {stanza_burst: 0}", "'limits.stanza_burst' must be at least 1"),
        ("c2s: 5", "'c2s' must be a mapping"),
        ("certificate_login: {roles: [admin]}", "unknown key 'certificate_login.roles'"),
        ("certificate_login: {required_roles: ['']}", "'certificate_login.required_roles' must list non-empty names"),
        ("tls: {client_ca: ''}", "'tls.client_ca' must be a file path"),
        ("- a\n- b", "top level must be a mapping"),
        ("muc: {rooms: 5}", "unknown key 'muc.rooms'"),
        ("muc: {domain: localhost}", "'muc.domain' must be a host name other than 'domain'"),
        ("muc: {max_occupants: 0}", "'muc.max_occupants' must be between"),
        ("muc: {max_history: -1}", "'muc.max_history' must be between"),
        ("muc: {room_creators: [alice]}", "'muc.room_creators' must list bare JIDs"),
    ])
    func badConfigurationNamesTheKey(yaml: String, expected: String) {
        do {
            _ = try ServerConfiguration.parse(yaml: yaml, source: "switchboard.yaml")
            Issue.record("accepted: \(yaml)")
        } catch let error as ConfigurationError {
            #expect(error.description.contains(expected), "\(error.description)")
            #expect(error.description.hasPrefix("switchboard.yaml: "))
        } catch {
            Issue.record("unexpected error \(error)")
        }
    }

    @Test func certificateLoginSection() throws {
        let configuration = try ServerConfiguration.parse(
            yaml: "certificate_login: {required_roles: [admin, auditor], required_units: [finance]}\ntls: {client_ca: /etc/ca.pem}\n",
            source: "t")
        #expect(configuration.certificateLogin.requiredRoles == ["admin", "auditor"])
        #expect(configuration.certificateLogin.requiredUnits == ["finance"])
        #expect(configuration.tls.clientCA == "/etc/ca.pem")
        #expect(ServerConfiguration().certificateLogin.isEmpty)
    }
}
