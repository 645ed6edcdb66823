import Foundation
import Logging
import NIOConcurrencyHelpers
@testable import Server
import SwitchboardTestSupport
import Testing
import XMPPCore

/// Secrets never reach the logs, even at trace level, and key material is private on disk.
@Suite struct SecretsTests {
    @Test func passwordsNeverAppearInTraceLogs() async throws {
        let lines = NIOLockedValueBox<[String]>([])
        var logger = Logger(label: "switchboard") { label in
            JSONLogHandler(label: label, level: .trace, output: { line in lines.withLockedValue { $0.append(line) } })
        }
        logger.logLevel = .trace
        let server = try await TestServer.start(logger: logger) {
            $0.c2s.requireTLS = false
            $0.logLevel = "trace"
            $0.logFormat = "json"
        }
        let password = "Tr0ub4dor&3-secret-ÄÖ"
        let newPassword = "correct-horse-battery-9"
        try await server.addUser("alice", password: password)
        let tlsPort = server.ports.c2sDirectTLS ?? 0

        // SCRAM right and wrong, PLAIN right and wrong (over TLS), an in-band password change.
        let scram = try await server.connect()
        try await scram.login("alice", password: password, resource: "scram")
        await scram.close()
        let wrongScram = try await server.connect()
        await #expect(throws: TestClientError.self) { try await wrongScram.login("alice", password: password + "x") }
        await wrongScram.close()
        let plain = try await TestClient.connect(port: tlsPort, tls: true)
        try await plain.authenticatePLAIN("alice", password: password)
        _ = try await plain.bind("plain")
        try await plain.send(
            "<iq type='set' id='pw'><query xmlns='jabber:iq:register'><username>alice</username><password>\(newPassword)</password></query></iq>")
        #expect(try await plain.next { $0.id == "pw" }.stanzaType == "result")
        await plain.close()
        let wrongPlain = try await TestClient.connect(port: tlsPort, tls: true)
        await #expect(throws: TestClientError.self) { try await wrongPlain.authenticatePLAIN("alice", password: password) }
        await wrongPlain.close()
        let plainNew = try await TestClient.connect(port: tlsPort, tls: true)
        try await plainNew.authenticatePLAIN("alice", password: newPassword)
        await plainNew.close()
        await server.stop()

        let log = lines.withLockedValue { $0.joined() }
        #expect(log.contains("authentication failed"), "the capture saw no login events; is trace logging wired?")
        #expect(log.contains("\"xmpp.user\":\"alice\""))
        for secret in [password, newPassword] {
            let forms = [
                secret, Data(secret.utf8).base64EncodedString(),
                Data(PLAINMessage.encode(authcid: "alice", password: secret)).base64EncodedString(),
                JSONLogHandler.quote(secret).dropFirst().dropLast().description,
            ]
            for form in forms {
                #expect(!log.contains(form), "a secret (\(form.prefix(4))…) is in the log")
            }
        }
    }

    @Test func keyMaterialAndDataAreCreatedPrivate() async throws {
        let server = try await TestServer.start()
        let directory = server.dataDirectory
        func mode(_ path: String) throws -> Int {
            (try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? NSNumber)?.intValue ?? -1
        }
        #expect(try mode(directory) == 0o700)
        #expect(try mode(directory + "/tls") == 0o700)
        // The database and its WAL files, the message journal: nobody else may read them.
        for file in ["switchboard.sqlite", "switchboard.sqlite-wal", "switchboard.sqlite-shm"] {
            #expect(try mode(directory + "/" + file) == 0o600, "\(file)")
        }
        #expect(try mode(directory + "/journal") == 0o700)
        for segment in try FileManager.default.contentsOfDirectory(atPath: directory + "/journal") {
            #expect(try mode(directory + "/journal/" + segment) == 0o600, "\(segment)")
        }
        #expect(try mode(directory + "/tls/private-key.pem") == 0o600)
        let key = try String(contentsOfFile: directory + "/tls/private-key.pem", encoding: .utf8)
        #expect(key.contains("PRIVATE KEY"))
        #expect(TLSSetup.looseKeyPermissions(directory + "/tls/private-key.pem") == nil)
        // A configured key that others can read is reported at start-up.
        let loose = directory + "/loose-key.pem"
        #expect(FileManager.default.createFile(atPath: loose, contents: Data(key.utf8), attributes: [.posixPermissions: 0o644]))
        #expect(TLSSetup.looseKeyPermissions(loose)?.contains("chmod 600") == true)
        await server.stop()
    }
}
