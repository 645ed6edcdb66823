import Crypto
import Directory
import Foundation
import Modules
import NIOSSL
import SQLiteStorage
import Server
import Storage
import SwiftASN1
import SwitchboardTestSupport
import Testing
import X509
import XMLStream
import XMPPCore

/// SASL EXTERNAL with client certificates from the company CA (XEP-0178), over STARTTLS and
/// direct TLS, and the policy that requires it for chosen roles and units.
@Suite struct CertificateLoginTests {
    /// A server whose data directory holds a CA (created before the listeners start), with
    /// accounts alice and bob (password "pw").
    private func start(configure: @escaping (inout ServerConfiguration) -> Void = { _ in }) async throws -> (TestServer, CertificateAuthority) {
        let server = try await TestServer.start {
            _ = try? CertificateAuthority.create(dataDir: $0.dataDir, subject: "CN=Test Corp IM CA, O=Test Corp", days: 30)
            $0.directory.refreshIntervalMs = 50
            configure(&$0)
        }
        let ca = try CertificateAuthority.load(dataDir: server.dataDirectory)
        try await server.addUser("alice", password: "pw")
        try await server.addUser("bob", password: "pw")
        return (server, ca)
    }

    /// Issues (and records, unless `record` is false) a certificate; returns a client TLS context presenting it.
    private func issue(
        _ ca: CertificateAuthority, _ server: TestServer, _ user: String, days: Int = 30, now: Date = Date(), record: Bool = true
    ) async throws -> (NIOSSLContext, String) {
        let identity = try ca.issue(address: "\(user)@\(server.domain)", days: days, now: now)
        if record {
            try await server.stores.recordCertificate(
                IssuedCertificate(
                    serial: identity.serial, username: user, issuedAt: now.timeIntervalSince1970,
                    notBefore: identity.certificate.notValidBefore.timeIntervalSince1970,
                    notAfter: identity.certificate.notValidAfter.timeIntervalSince1970))
        }
        let context = try TestClient.tlsContext(certificatePEM: identity.certificatePEM, keyPEM: identity.privateKeyPEM)
        return (context, identity.serial)
    }

    private func starttls(_ server: TestServer, _ context: NIOSSLContext) async throws -> (TestClient, XMLElement) {
        let client = try await TestClient.connect(port: server.ports.c2s ?? 0, domain: server.domain)
        let features = try await client.startTLS(context)
        return (client, features)
    }

    private func failureText(_ element: XMLElement) -> String { element.child("text", namespace: NS.sasl)?.text ?? "" }

    @Test func externalOverSTARTTLSLogsInAndBinds() async throws {
        let (server, ca) = try await start()
        defer { Task { await server.stop() } }
        let (context, _) = try await issue(ca, server, "alice")
        let (client, features) = try await starttls(server, context)
        #expect(TestClient.mechanisms(features).first == "EXTERNAL")
        let outcome = try await client.authenticateExternal()
        #expect(outcome.name == "success", "\(XMLSerializer.string(outcome))")
        _ = try await client.openStream()
        let jid = try await client.bind("token")
        #expect(jid == "alice@example.test/token")
        await client.close()
    }

    @Test func externalOverDirectTLSWithAuthzid() async throws {
        let (server, ca) = try await start()
        defer { Task { await server.stop() } }
        let (context, _) = try await issue(ca, server, "alice")
        let client = try await TestClient.connect(port: server.ports.c2sDirectTLS ?? 0, domain: server.domain, directTLS: context)
        let features = try await client.openStream()
        #expect(TestClient.mechanisms(features).contains("EXTERNAL"))
        let outcome = try await client.authenticateExternal(authzid: "alice@example.test")
        #expect(outcome.name == "success", "\(XMLSerializer.string(outcome))")
        _ = try await client.openStream()
        #expect(try await client.bind("phone") == "alice@example.test/phone")
        await client.close()
    }

    @Test func withoutCertificateNoExternalButPasswordsWork() async throws {
        let (server, _) = try await start()
        defer { Task { await server.stop() } }
        let (client, features) = try await starttls(server, try TestClient.tlsContext())
        #expect(!TestClient.mechanisms(features).contains("EXTERNAL"))
        #expect(TestClient.mechanisms(features).contains("SCRAM-SHA-256"))
        let refused = try await client.authenticateExternal()
        #expect(refused.name == "failure")
        #expect(refused.child("invalid-mechanism") != nil)
        let outcome = try await client.scramOutcome("alice", password: "pw")
        #expect(outcome.name == "success", "\(XMLSerializer.string(outcome))")
        await client.close()
    }

    @Test func noCAMeansNoExternal() async throws {
        let server = try await TestServer.start()
        defer { Task { await server.stop() } }
        try await server.addUser("alice", password: "pw")
        let other = FileManager.default.temporaryDirectory.appendingPathComponent("sb-ca-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: other) }
        let ca = try CertificateAuthority.create(dataDir: other, subject: "CN=Elsewhere", days: 30)
        let identity = try ca.issue(address: "alice@example.test", days: 30)
        let context = try TestClient.tlsContext(certificatePEM: identity.certificatePEM, keyPEM: identity.privateKeyPEM)
        let (client, features) = try await starttls(server, context)
        #expect(!TestClient.mechanisms(features).contains("EXTERNAL"))
        #expect(try await client.authenticateExternal().child("invalid-mechanism") != nil)
        await client.close()
    }

    @Test func revokedCertificateIsRefused() async throws {
        let (server, ca) = try await start()
        defer { Task { await server.stop() } }
        let (context, serial) = try await issue(ca, server, "alice")
        #expect(try await server.stores.revokeCertificate(serial: serial, at: Date().timeIntervalSince1970, reason: "keyCompromise"))
        let (client, _) = try await starttls(server, context)
        let outcome = try await client.authenticateExternal()
        #expect(outcome.name == "failure")
        #expect(outcome.child("not-authorized") != nil)
        #expect(failureText(outcome).contains("revoked"))
        await client.close()
    }

    @Test func revokingEndsSessionsLoggedInWithTheCertificate() async throws {
        let (server, ca) = try await start()
        defer { Task { await server.stop() } }
        let (context, serial) = try await issue(ca, server, "alice")
        let (client, _) = try await starttls(server, context)
        #expect(try await client.authenticateExternal().name == "success")
        _ = try await client.openStream()
        _ = try await client.bind("token")
        // A password session of the same user stays.
        let (other, _) = try await starttls(server, try TestClient.tlsContext())
        #expect(try await other.scramOutcome("alice", password: "pw").name == "success")
        _ = try await other.openStream()
        _ = try await other.bind("desk")
        #expect(try await server.stores.revokeCertificate(serial: serial, at: Date().timeIntervalSince1970, reason: nil))
        let error = try await client.next(timeout: .seconds(10))
        #expect(error.name == "error")
        #expect(error.child("not-authorized") != nil, "\(XMLSerializer.string(error))")
        try await other.send("<iq type='get' id='still'><ping xmlns='urn:xmpp:ping'/></iq>")
        #expect(try await other.next { $0.id == "still" }.stanzaType == "result")
        await other.close()
    }

    @Test func expiredCertificateIsRefusedWithAReason() async throws {
        let (server, ca) = try await start()
        defer { Task { await server.stop() } }
        let (context, _) = try await issue(ca, server, "alice", days: 1, now: Date().addingTimeInterval(-3 * 86400))
        let (client, features) = try await starttls(server, context)
        // The handshake succeeds (a client with an old certificate can still use its password),
        // EXTERNAL is not offered, and trying it says why.
        #expect(!TestClient.mechanisms(features).contains("EXTERNAL"))
        let outcome = try await client.authenticateExternal()
        #expect(outcome.child("not-authorized") != nil)
        #expect(failureText(outcome).contains("expired"))
        #expect(try await client.scramOutcome("alice", password: "pw").name == "success")
        await client.close()
    }

    @Test func certificateOfAnotherUserIsRefused() async throws {
        let (server, ca) = try await start()
        defer { Task { await server.stop() } }
        let (context, _) = try await issue(ca, server, "alice")
        let (client, _) = try await starttls(server, context)
        let outcome = try await client.authenticateExternal(authzid: "bob@example.test")
        #expect(outcome.name == "failure")
        #expect(outcome.child("not-authorized") != nil)
        #expect(failureText(outcome).contains("bob@example.test"))
        await client.close()
    }

    @Test func certificatesTheServerDidNotRecordOrIssueAreRefused() async throws {
        let (server, ca) = try await start()
        defer { Task { await server.stop() } }
        // Signed by the CA but never recorded (e.g. made with a copy of the key): refused.
        let (unrecorded, _) = try await issue(ca, server, "alice", record: false)
        let (first, _) = try await starttls(server, unrecorded)
        let outcome = try await first.authenticateExternal()
        #expect(outcome.child("not-authorized") != nil)
        #expect(failureText(outcome).contains("record"))
        await first.close()
        // From another CA: not offered, refused with the reason.
        let other = FileManager.default.temporaryDirectory.appendingPathComponent("sb-ca-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: other) }
        let foreign = try CertificateAuthority.create(dataDir: other, subject: "CN=Test Corp IM CA, O=Test Corp", days: 30)
        let identity = try foreign.issue(address: "alice@example.test", days: 30)
        let (second, features) = try await starttls(
            server, try TestClient.tlsContext(certificatePEM: identity.certificatePEM, keyPEM: identity.privateKeyPEM))
        #expect(!TestClient.mechanisms(features).contains("EXTERNAL"))
        let refused = try await second.authenticateExternal()
        #expect(refused.child("not-authorized") != nil)
        #expect(failureText(refused).contains("not issued by"))
        await second.close()
    }

    @Test func disabledAccountGetsAccountDisabled() async throws {
        let (server, ca) = try await start()
        defer { Task { await server.stop() } }
        let service = DirectoryService(store: server.stores, accounts: server.stores)
        try await service.createUser(DirectoryUser(username: "gina", displayName: "Gina"), credentials: try StoredCredentials.derive(password: "pw"))
        try await service.setStatus("gina", .disabled)
        #expect(try await server.stores.account("gina")?.disabled == true)
        let (context, _) = try await issue(ca, server, "gina")
        let (client, _) = try await starttls(server, context)
        let outcome = try await client.authenticateExternal()
        #expect(outcome.child("account-disabled") != nil, "\(XMLSerializer.string(outcome))")
        await client.close()
    }


    @Test func policyForcesCertificateLoginForAnAdmin() async throws {
        let (server, ca) = try await start { $0.certificateLogin.requiredRoles = ["admin"] }
        defer { Task { await server.stop() } }
        let service = DirectoryService(store: server.stores, accounts: server.stores)
        try await service.createUser(DirectoryUser(username: "carol", displayName: "Carol"), credentials: try StoredCredentials.derive(password: "pw"))
        try await service.createUser(DirectoryUser(username: "dave", displayName: "Dave"), credentials: try StoredCredentials.derive(password: "pw"))
        try await service.grantRole("admin", to: "carol")
        let (watcherTLS, _) = try await starttls(server, try TestClient.tlsContext())
        _ = try await watcherTLS.scramOutcome("dave", password: "pw")
        _ = try await watcherTLS.openStream()
        _ = try await watcherTLS.bind("watch")
        try await server.waitForDirectory(watcherTLS)

        // Right password, but an admin: refused, and told why.
        let (scram, _) = try await starttls(server, try TestClient.tlsContext())
        let refused = try await scram.scramOutcome("carol", password: "pw")
        #expect(refused.child("not-authorized") != nil)
        #expect(failureText(refused).contains("certificate"))
        // Wrong password: the same condition, without the hint (nothing revealed without the password).
        let wrong = try await scram.scramOutcome("carol", password: "nope")
        #expect(wrong.child("not-authorized") != nil)
        #expect(failureText(wrong).isEmpty)
        await scram.close()

        // PLAIN is refused the same way.
        let (plain, _) = try await starttls(server, try TestClient.tlsContext())
        let payload = Data("\0carol\0pw".utf8).base64EncodedString()
        try await plain.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>\(payload)</auth>")
        let plainOutcome = try await plain.next()
        #expect(plainOutcome.child("not-authorized") != nil)
        #expect(failureText(plainOutcome).contains("certificate"))
        await plain.close()

        // A colleague without the role still uses a password; carol gets in with her certificate.
        let (other, _) = try await starttls(server, try TestClient.tlsContext())
        #expect(try await other.scramOutcome("dave", password: "pw").name == "success")
        await other.close()
        let (context, _) = try await issue(ca, server, "carol")
        let (client, _) = try await starttls(server, context)
        #expect(try await client.authenticateExternal().name == "success")
        await client.close()
        await watcherTLS.close()
    }

    @Test func policyByUnitCoversUnitsBelow() async throws {
        let (server, _) = try await start { $0.certificateLogin.requiredUnits = ["finance"] }
        defer { Task { await server.stop() } }
        let service = DirectoryService(store: server.stores, accounts: server.stores)
        _ = try await service.createUnit(name: "Finance", id: "finance")
        _ = try await service.createUnit(name: "Payroll", parent: "finance", id: "payroll")
        try await service.createUser(
            DirectoryUser(username: "erin", displayName: "Erin"), credentials: try StoredCredentials.derive(password: "pw"), unit: "payroll")
        try await service.createUser(DirectoryUser(username: "frank", displayName: "Frank"), credentials: try StoredCredentials.derive(password: "pw"))
        let (watcher, _) = try await starttls(server, try TestClient.tlsContext())
        #expect(try await watcher.scramOutcome("frank", password: "pw").name == "success")
        _ = try await watcher.openStream()
        _ = try await watcher.bind("watch")
        try await server.waitForDirectory(watcher)

        let (client, _) = try await starttls(server, try TestClient.tlsContext())
        let refused = try await client.scramOutcome("erin", password: "pw")
        #expect(refused.child("not-authorized") != nil)
        #expect(failureText(refused).contains("Finance"))
        await client.close()
        await watcher.close()
    }

    @Test func policyVerdictsFromSnapshot() async throws {
        var configuration = ServerConfiguration.CertificateLogin()
        configuration.requiredRoles = ["auditor"]
        configuration.requiredUnits = ["Board"]
        var data = DirectoryData()
        data.units = [
            OrgUnit(id: "board", parentID: nil, name: "Board", position: 0, description: nil, alwaysVisible: false, source: "local"),
            OrgUnit(id: "ops", parentID: nil, name: "Ops", position: 1, description: nil, alwaysVisible: false, source: "local"),
        ]
        data.users = ["ann", "ben", "cid"].map { DirectoryUser(username: $0, displayName: $0) }
        data.memberships = [
            Membership(username: "ann", unitID: "board", isPrimary: true), Membership(username: "ben", unitID: "ops", isPrimary: true),
            Membership(username: "cid", unitID: "ops", isPrimary: true),
        ]
        data.grants = [RoleGrant(username: "cid", role: "auditor")]
        let snapshot = DirectorySnapshot(data)
        #expect(CertificateLoginModule.verdict(for: "ann", configuration: configuration, snapshot: snapshot) != .allowed)
        #expect(CertificateLoginModule.verdict(for: "ben", configuration: configuration, snapshot: snapshot) == .allowed)
        #expect(CertificateLoginModule.verdict(for: "cid", configuration: configuration, snapshot: snapshot) != .allowed)
        #expect(CertificateLoginModule.verdict(for: "nobody", configuration: configuration, snapshot: snapshot) == .allowed)
    }

    @Test func issuedCertificateCarriesXmppAddrAndClientAuth() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("sb-ca-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let ca = try CertificateAuthority.create(dataDir: directory, subject: "CN=Example Corp IM CA, O=Example Corp", days: 30)
        // Files: key 0600 in a 0700 directory; a second init refuses to overwrite.
        let keyMode = try FileManager.default.attributesOfItem(atPath: CertificateAuthority.keyPath(dataDir: directory))[.posixPermissions] as? Int
        let directoryMode = try FileManager.default.attributesOfItem(atPath: CertificateAuthority.directory(dataDir: directory))[.posixPermissions] as? Int
        #expect(keyMode == 0o600)
        #expect(directoryMode == 0o700)
        #expect(throws: ConfigurationError.self) { try CertificateAuthority.create(dataDir: directory, subject: "CN=Again", days: 30) }
        #expect(ca.certificate.subject.description == "CN=Example Corp IM CA,O=Example Corp")

        let identity = try ca.issue(address: "zhangwei@example.test", days: 10)
        let certificate = identity.certificate
        #expect(certificate.issuer == ca.certificate.subject)
        #expect(ca.certificate.publicKey.isValidSignature(certificate.signature, for: certificate))
        #expect(try certificate.extensions.extendedKeyUsage?.contains(.clientAuth) == true)
        let names = try #require(try certificate.extensions.subjectAlternativeNames)
        let addresses: [String] = names.compactMap {
            guard case .otherName(let other) = $0, other.typeID == [1, 3, 6, 1, 5, 5, 7, 8, 5], let value = other.value,
                let text = try? ASN1UTF8String(asn1Any: value)
            else { return nil }
            return String(text)
        }
        #expect(addresses == ["zhangwei@example.test"])
        #expect(certificate.subject.description == "CN=zhangwei@example.test")
    }

    @Test func revocationListIsSignedAndListsRevokedSerials() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("sb-ca-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let ca = try CertificateAuthority.create(dataDir: directory, subject: "CN=CRL Test CA", days: 30)
        let revoked = try ca.issue(address: "a@example.test", days: 10)
        let der = try ca.revocationList(
            [CertificateAuthority.Revocation(serial: revoked.serial, date: Date(), reason: "keyCompromise")], number: 7)
        let root = try DER.parse(der)
        guard case .constructed(let children) = root.content else {
            Issue.record("CRL is not a SEQUENCE")
            return
        }
        let parts = Array(children)
        #expect(parts.count == 3)
        guard case .constructed = parts[0].content else {
            Issue.record("tbsCertList is not a SEQUENCE")
            return
        }
        let tbsBytes = Array(parts[0].encodedBytes)
        let bits = try ASN1BitString(derEncoded: parts[2])
        let signature = try P256.Signing.ECDSASignature(derRepresentation: Array(bits.bytes))
        let key = try #require(P256.Signing.PublicKey(ca.certificate.publicKey))
        #expect(key.isValidSignature(signature, for: tbsBytes))
        // The revoked serial is in the list (as its INTEGER content bytes).
        let hex = der.map { String(format: "%02x", $0) }.joined()
        #expect(hex.contains(revoked.serial))
    }
}
