import Foundation
import Testing
@testable import XMPPCore

private func b(_ string: String) -> [UInt8] { Array(string.utf8) }
private func s(_ bytes: [UInt8]) -> String { String(decoding: bytes, as: UTF8.self) }

/// Runs `body` and returns the SASLError it throws, recording an issue if it does not throw.
private func saslError(
    sourceLocation: SourceLocation = #_sourceLocation,
    _ body: () throws -> Void
) -> SASLError? {
    do {
        try body()
        Issue.record("expected a SASLError", sourceLocation: sourceLocation)
        return nil
    } catch let error as SASLError {
        return error
    } catch {
        Issue.record("expected a SASLError, got \(error)", sourceLocation: sourceLocation)
        return nil
    }
}

struct SCRAMVector: Sendable, CustomTestStringConvertible {
    var hash: SCRAMHash
    var password: String
    var clientNonce: String
    var serverNonce: String
    var salt: String
    var iterations: Int
    var clientFirst: String
    var serverFirst: String
    var clientFinal: String
    var serverFinal: String
    var testDescription: String { hash.mechanismName }

    var saltBytes: [UInt8] { Array(Data(base64Encoded: salt) ?? Data()) }

    /// RFC 5802 §5.
    static let rfc5802 = SCRAMVector(
        hash: .sha1, password: "pencil",
        clientNonce: "fyko+d2lbbFgONRv9qkxdawL", serverNonce: "3rfcNHYJY1ZVvWVs7j",
        salt: "QSXCR+Q6sek8bf92", iterations: 4096,
        clientFirst: "n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL",
        serverFirst: "r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096",
        clientFinal: "c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
        serverFinal: "v=rmF9pqV8S7suAoZWja4dJRkFsKQ="
    )

    /// RFC 7677 §3.
    static let rfc7677 = SCRAMVector(
        hash: .sha256, password: "pencil",
        clientNonce: "rOprNGfwEbeRWgbNEkqO", serverNonce: "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
        salt: "W22ZaJ0SNY7soEsUEjb6gQ==", iterations: 4096,
        clientFirst: "n,,n=user,r=rOprNGfwEbeRWgbNEkqO",
        serverFirst: "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
        clientFinal: "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
        serverFinal: "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
    )

    static let all = [rfc5802, rfc7677]

    func credentials() throws -> SCRAMCredentials {
        try SCRAMCredentials.derive(password: password, salt: saltBytes, iterations: iterations, hash: hash)
    }

    func server() -> SCRAMServer {
        let nonce = serverNonce
        return SCRAMServer(hash: hash, nonceGenerator: { nonce })
    }
}

@Suite("SCRAM")
struct SCRAMTests {
    static let fakeSaltKey: [UInt8] = Array(repeating: 0x42, count: 32)

    // MARK: RFC test vectors

    @Test("Client produces the RFC messages", arguments: SCRAMVector.all)
    func clientMatchesVector(_ vector: SCRAMVector) throws {
        var client = SCRAMClient(hash: vector.hash, username: "user", password: vector.password, nonce: vector.clientNonce)
        #expect(s(client.clientFirst()) == vector.clientFirst)
        #expect(s(try client.receiveServerFirst(b(vector.serverFirst))) == vector.clientFinal)
        try client.receiveServerFinal(b(vector.serverFinal))
        #expect(client.isAuthenticated)
    }

    @Test("Server produces the RFC messages", arguments: SCRAMVector.all)
    func serverMatchesVector(_ vector: SCRAMVector) throws {
        var server = vector.server()
        let identity = try server.receiveClientFirst(b(vector.clientFirst))
        #expect(identity.username == "user")
        #expect(identity.authzid == nil)
        #expect(s(server.serverFirst(credentials: try vector.credentials(), fakeSaltKey: Self.fakeSaltKey)) == vector.serverFirst)
        #expect(s(try server.receiveClientFinal(b(vector.clientFinal))) == vector.serverFinal)
        #expect(server.isAuthenticated)
        #expect(server.username == "user")
    }

    @Test("Client and server agree", arguments: SCRAMVector.all)
    func clientAgainstServer(_ vector: SCRAMVector) throws {
        var client = SCRAMClient(hash: vector.hash, username: "user", password: vector.password, nonce: vector.clientNonce)
        var server = vector.server()
        _ = try server.receiveClientFirst(client.clientFirst())
        let challenge = server.serverFirst(credentials: try vector.credentials(), fakeSaltKey: Self.fakeSaltKey)
        let response = try client.receiveServerFirst(challenge)
        #expect(s(response) == vector.clientFinal)
        let success = try server.receiveClientFinal(response)
        try client.receiveServerFinal(success)
        #expect(client.isAuthenticated && server.isAuthenticated)
    }

    @Test("Random nonces, fresh credentials", arguments: SCRAMHash.allCases)
    func randomExchange(_ hash: SCRAMHash) throws {
        let credentials = try SCRAMCredentials.generate(password: "correct horse battery staple", hash: hash, iterations: 512)
        #expect(credentials.salt.count == 16)
        #expect(credentials.storedKey.count == hash.byteCount && credentials.serverKey.count == hash.byteCount)
        var client = SCRAMClient(hash: hash, username: "al,i=ce", password: "correct horse battery staple")
        var server = SCRAMServer(hash: hash)
        let first = client.clientFirst()
        #expect(s(first).hasPrefix("n,,n=al=2Ci=3Dce,r="))
        #expect(try server.receiveClientFirst(first).username == "al,i=ce")
        let final = try client.receiveServerFirst(server.serverFirst(credentials: credentials, fakeSaltKey: Self.fakeSaltKey))
        try client.receiveServerFinal(try server.receiveClientFinal(final))
        #expect(client.isAuthenticated)
    }

    // MARK: Failures

    @Test("Wrong password is not-authorized", arguments: SCRAMVector.all)
    func wrongPassword(_ vector: SCRAMVector) throws {
        var client = SCRAMClient(hash: vector.hash, username: "user", password: "pencil2", nonce: vector.clientNonce)
        var server = vector.server()
        _ = try server.receiveClientFirst(client.clientFirst())
        let response = try client.receiveServerFirst(server.serverFirst(credentials: try vector.credentials(), fakeSaltKey: Self.fakeSaltKey))
        let error = saslError { _ = try server.receiveClientFinal(response) }
        #expect(error == .notAuthorized)
        #expect(error?.elementName == "not-authorized")
        #expect(!server.isAuthenticated)
        // The exchange is over.
        #expect(saslError { _ = try server.receiveClientFinal(response) }?.condition == .malformedRequest)
    }

    @Test func tamperedProofIsNotAuthorized() throws {
        let vector = SCRAMVector.rfc7677
        var server = vector.server()
        _ = try server.receiveClientFirst(b(vector.clientFirst))
        _ = server.serverFirst(credentials: try vector.credentials(), fakeSaltKey: Self.fakeSaltKey)
        let tampered = vector.clientFinal.replacingOccurrences(of: "p=dHz", with: "p=dHy")
        #expect(saslError { _ = try server.receiveClientFinal(b(tampered)) } == .notAuthorized)
    }

    @Test func clientRejectsWrongServerSignature() throws {
        let vector = SCRAMVector.rfc5802
        var client = SCRAMClient(hash: vector.hash, username: "user", password: vector.password, nonce: vector.clientNonce)
        _ = client.clientFirst()
        _ = try client.receiveServerFirst(b(vector.serverFirst))
        #expect(saslError { try client.receiveServerFinal(b("v=AAAAAAAAAAAAAAAAAAAAAAAAAAA=")) }?.condition == .notAuthorized)
        #expect(!client.isAuthenticated)

        var other = SCRAMClient(hash: vector.hash, username: "user", password: vector.password, nonce: vector.clientNonce)
        _ = other.clientFirst()
        _ = try other.receiveServerFirst(b(vector.serverFirst))
        let error = saslError { try other.receiveServerFinal(b("e=invalid-proof")) }
        #expect(error == SASLError(.notAuthorized, text: "invalid-proof"))
    }

    @Test func clientRejectsBadServerFirst() throws {
        for message in [
            "r=someoneelse,s=QSXCR+Q6sek8bf92,i=4096",  // nonce does not extend ours
            "r=abc,s=QSXCR+Q6sek8bf92,i=4096",  // nonce equals ours
            "r=abcdef,s=,i=4096",
            "r=abcdef,s=QSXCR+Q6sek8bf92,i=0",
            "r=abcdef,s=QSXCR+Q6sek8bf92,i=-1",
            "r=abcdef,s=QSXCR+Q6sek8bf92,i=x",
            "r=abcdef,s=QSXCR+Q6sek8bf92",
            "m=x,r=abcdef,s=QSXCR+Q6sek8bf92,i=4096",
        ] {
            var client = SCRAMClient(hash: .sha1, username: "user", password: "pencil", nonce: "abc")
            _ = client.clientFirst()
            #expect(saslError { _ = try client.receiveServerFirst(b(message)) }?.condition == .malformedRequest, "\(message)")
        }
    }

    @Test("Unknown users look like real ones and fail as not-authorized", arguments: SCRAMHash.allCases)
    func unknownUser(_ hash: SCRAMHash) throws {
        func challenge(user: String, key: [UInt8]) throws -> String {
            var server = SCRAMServer(hash: hash, nonceGenerator: { "SERVER" })
            _ = try server.receiveClientFirst(b("n,,n=\(user),r=CLIENT"))
            return s(server.serverFirst(credentials: nil, fakeSaltKey: key, fakeIterations: 4096))
        }
        let first = try challenge(user: "ghost", key: Self.fakeSaltKey)
        #expect(first.hasPrefix("r=CLIENTSERVER,s="))
        #expect(first.hasSuffix(",i=4096"))
        // The same salt every time for the same user, a different one for others / other keys.
        #expect(try challenge(user: "ghost", key: Self.fakeSaltKey) == first)
        #expect(try challenge(user: "phantom", key: Self.fakeSaltKey) != first)
        // Usernames that map to the same account get the same fake salt, as they would a real one.
        #expect(try challenge(user: "GHOST", key: Self.fakeSaltKey) == first)
        #expect(try challenge(user: "\u{FF27}host", key: Self.fakeSaltKey) == first)
        #expect(try challenge(user: "ghost", key: Array(repeating: 1, count: 32)) != first)
        // The salt has the same shape as a generated one.
        let saltField = first.split(separator: ",")[1].dropFirst(2)
        #expect(Data(base64Encoded: String(saltField))?.count == 16)

        // A client carries on normally; the server refuses with not-authorized.
        var client = SCRAMClient(hash: hash, username: "ghost", password: "anything", nonce: "CLIENT")
        var server = SCRAMServer(hash: hash, nonceGenerator: { "SERVER" })
        _ = try server.receiveClientFirst(client.clientFirst())
        let response = try client.receiveServerFirst(server.serverFirst(credentials: nil, fakeSaltKey: Self.fakeSaltKey))
        #expect(saslError { _ = try server.receiveClientFinal(response) } == .notAuthorized)
    }

    @Test func credentialsForAnotherHashCountAsUnknown() throws {
        let vector = SCRAMVector.rfc5802
        var client = SCRAMClient(hash: .sha256, username: "user", password: vector.password)
        var server = SCRAMServer(hash: .sha256)
        _ = try server.receiveClientFirst(client.clientFirst())
        let response = try client.receiveServerFirst(server.serverFirst(credentials: try vector.credentials(), fakeSaltKey: Self.fakeSaltKey))
        #expect(saslError { _ = try server.receiveClientFinal(response) } == .notAuthorized)
    }

    // MARK: Client-first parsing

    @Test(arguments: [
        "",
        "n",
        "n,,",
        "n,,n=user",
        "n,,n=user,",
        "n,,n=user,r=",
        "n,,n=,r=abc",
        "n,,r=abc,n=user",
        "n,,n=user,r=abc,",
        "n,,n=user,r=abc,x",
        "x,,n=user,r=abc",
        "nn,,n=user,r=abc",
        "p=tls-unique,,n=user,r=abc",
        "p=tls-exporter,,n=user,r=abc",
        "n,,m=ext,n=user,r=abc",
        "n,x,n=user,r=abc",
        "n,a=,n=user,r=abc",
        "n,,n=us=3Eer,r=abc",
        "n,,n=user=,r=abc",
        "n,,n=user=2,r=abc",
        "n,,n=user,r=ab\u{7F}c",
        "n,,n=user,r=ab c",
        "n,,n=us\u{0}er,r=abc",
        " n,,n=user,r=abc",
    ])
    func malformedClientFirst(_ message: String) {
        var server = SCRAMServer(hash: .sha256)
        let error = saslError { _ = try server.receiveClientFirst(b(message)) }
        #expect(error?.condition == .malformedRequest)
        #expect(server.username == nil)
    }

    @Test func invalidUTF8InClientFirst() {
        var server = SCRAMServer(hash: .sha256)
        let message: [UInt8] = b("n,,n=") + [0xFF, 0xFE] + b(",r=abc")
        #expect(saslError { _ = try server.receiveClientFirst(message) }?.condition == .malformedRequest)
        var overlong = SCRAMServer(hash: .sha256)
        let long = b("n,,n=") + Array(repeating: UInt8(ascii: "a"), count: 10_000) + b(",r=abc")
        #expect(saslError { _ = try overlong.receiveClientFirst(long) }?.condition == .malformedRequest)
    }

    @Test func acceptedClientFirstVariants() throws {
        var server = SCRAMServer(hash: .sha1)
        #expect(try server.receiveClientFirst(b("y,,n=user,r=abc")) == ("user", nil))

        server = SCRAMServer(hash: .sha1)
        let identity = try server.receiveClientFirst(b("n,a=admin=2Cx=3Dy@example.com,n=j=2Cu=3Dl,r=abc,x=ext"))
        #expect(identity.username == "j,u=l")
        #expect(identity.authzid == "admin,x=y@example.com")
        #expect(server.authzid == "admin,x=y@example.com")

        server = SCRAMServer(hash: .sha1)
        #expect(try server.receiveClientFirst(b("n,,n=\u{5F20}\u{4F1F},r=abc")).username == "\u{5F20}\u{4F1F}")
    }

    // MARK: Client-final parsing

    private static func serverAwaitingFinal(_ vector: SCRAMVector, clientFirst: String? = nil) throws -> SCRAMServer {
        var server = vector.server()
        _ = try server.receiveClientFirst(b(clientFirst ?? vector.clientFirst))
        _ = server.serverFirst(credentials: try vector.credentials(), fakeSaltKey: fakeSaltKey)
        return server
    }

    @Test func malformedClientFinal() throws {
        let vector = SCRAMVector.rfc5802
        let nonce = "fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j"
        let proof = "v0X8v3Bz2T0CJGbJQyF0X+HI4Ts="
        for message in [
            "",
            "c=biws",
            "c=biws,r=\(nonce)",
            "c=eSws,r=\(nonce),p=\(proof)",  // "y,," does not match the "n,," header
            "c=biws,r=\(nonce)x,p=\(proof)",  // nonce mismatch
            "c=biws,r=fyko+d2lbbFgONRv9qkxdawL,p=\(proof)",  // client nonce only
            "c=biws,r=\(nonce),p=",
            "c=biws,r=\(nonce),p=AAAA",  // wrong length
            "c=biws,r=\(nonce),p=!!!!",
            "c=biws,r=\(nonce),p=\(proof),x=1",  // proof must be last
            "c=biws,r=\(nonce),,p=\(proof)",
            "r=\(nonce),c=biws,p=\(proof)",
            "c=,r=\(nonce),p=\(proof)",
        ] {
            var server = try Self.serverAwaitingFinal(vector)
            #expect(saslError { _ = try server.receiveClientFinal(b(message)) }?.condition == .malformedRequest, "\(message)")
            #expect(!server.isAuthenticated)
        }
    }

    @Test func channelBindingFlagYIsVerified() throws {
        // With "y,," the c= attribute must be base64("y,,") = "eSws"; then the proof
        // (computed over a different AuthMessage) is simply wrong.
        let vector = SCRAMVector.rfc5802
        var server = try Self.serverAwaitingFinal(vector, clientFirst: "y,,n=user,r=fyko+d2lbbFgONRv9qkxdawL")
        let final = vector.clientFinal.replacingOccurrences(of: "c=biws", with: "c=eSws")
        #expect(saslError { _ = try server.receiveClientFinal(b(final)) } == .notAuthorized)
    }

    @Test func authzidRoundTrip() throws {
        let credentials = try SCRAMCredentials.derive(password: "pw", salt: [1, 2, 3, 4], iterations: 64, hash: .sha256)
        var client = SCRAMClient(hash: .sha256, username: "juliet", password: "pw", authzid: "romeo@example.net")
        var server = SCRAMServer(hash: .sha256)
        let identity = try server.receiveClientFirst(client.clientFirst())
        #expect(identity.authzid == "romeo@example.net")
        let response = try client.receiveServerFirst(server.serverFirst(credentials: credentials, fakeSaltKey: []))
        try client.receiveServerFinal(try server.receiveClientFinal(response))
        #expect(server.isAuthenticated && client.isAuthenticated)
    }

    @Test func extensionsBeforeProofAreAccepted() throws {
        let vector = SCRAMVector.rfc5802
        var client = SCRAMClient(hash: vector.hash, username: "user", password: vector.password, nonce: vector.clientNonce)
        _ = client.clientFirst()
        _ = try client.receiveServerFirst(b(vector.serverFirst))
        // Recompute the proof over a client-final-message that carries an extension.
        let salted = try SCRAMCredentials.saltedPassword(password: vector.password, salt: vector.saltBytes, iterations: 4096, hash: .sha1)
        let credentials = SCRAMCredentials.derive(saltedPassword: salted, salt: vector.saltBytes, iterations: 4096, hash: .sha1)
        let withoutProof = "c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,x=ext"
        let authMessage = b("n=user,r=fyko+d2lbbFgONRv9qkxdawL," + vector.serverFirst + "," + withoutProof)
        let clientKey = SCRAMHash.sha1.hmac(key: salted, data: SCRAMSupport.clientKeyLabel)
        let signature = SCRAMHash.sha1.hmac(key: credentials.storedKey, data: authMessage)
        let proof = Data(SCRAMSupport.xor(clientKey, signature)).base64EncodedString()
        var server = try Self.serverAwaitingFinal(vector)
        _ = try server.receiveClientFinal(b(withoutProof + ",p=" + proof))
        #expect(server.isAuthenticated)
    }

    @Test func callsOutOfOrder() throws {
        var server = SCRAMServer(hash: .sha1)
        #expect(saslError { _ = try server.receiveClientFinal(b("c=biws,r=a,p=AAAA")) }?.condition == .malformedRequest)

        var early = SCRAMServer(hash: .sha1)
        #expect(early.serverFirst(credentials: nil, fakeSaltKey: []).isEmpty)
        #expect(saslError { _ = try early.receiveClientFirst(b("n,,n=user,r=abc")) }?.condition == .malformedRequest)

        var twice = SCRAMServer(hash: .sha1)
        _ = try twice.receiveClientFirst(b("n,,n=user,r=abc"))
        #expect(saslError { _ = try twice.receiveClientFirst(b("n,,n=user,r=abc")) }?.condition == .malformedRequest)

        var client = SCRAMClient(hash: .sha1, username: "user", password: "pencil")
        #expect(saslError { _ = try client.receiveServerFirst(b("r=x,s=QSXCR+Q6sek8bf92,i=1")) }?.condition == .malformedRequest)
    }

    // MARK: Credentials

    @Test("Derived keys match the RFC vectors", arguments: SCRAMVector.all)
    func derivedCredentials(_ vector: SCRAMVector) throws {
        let credentials = try vector.credentials()
        #expect(credentials.hash == vector.hash)
        #expect(credentials.iterations == 4096)
        #expect(credentials.salt == vector.saltBytes)
        #expect(credentials.verify(password: "pencil"))
        #expect(!credentials.verify(password: "Pencil"))
        #expect(!credentials.verify(password: ""))
        #expect(!credentials.verify(password: "pencil\u{0}"))
        let decoded = try JSONDecoder().decode(SCRAMCredentials.self, from: JSONEncoder().encode(credentials))
        #expect(decoded == credentials)
    }

    @Test func credentialsCodableFormat() throws {
        let credentials = try SCRAMVector.rfc5802.credentials()
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        let json = String(decoding: try encoder.encode(credentials), as: UTF8.self)
        #expect(json.contains("\"hash\":\"sha1\""))
        #expect(json.contains("\"salt\":\"QSXCR+Q6sek8bf92\""))
        #expect(json.contains("\"iterations\":4096"))

        let badLength = #"{"hash":"sha256","salt":"QSXCR+Q6sek8bf92","iterations":4096,"storedKey":"AAAA","serverKey":"AAAA"}"#
        #expect(throws: DecodingError.self) { try JSONDecoder().decode(SCRAMCredentials.self, from: Data(badLength.utf8)) }
        let badBase64 = json.replacingOccurrences(of: "QSXCR+Q6sek8bf92", with: "not base64!")
        #expect(throws: DecodingError.self) { try JSONDecoder().decode(SCRAMCredentials.self, from: Data(badBase64.utf8)) }
        let zeroIterations = json.replacingOccurrences(of: "\"iterations\":4096", with: "\"iterations\":0")
        #expect(throws: DecodingError.self) { try JSONDecoder().decode(SCRAMCredentials.self, from: Data(zeroIterations.utf8)) }
    }

    @Test func passwordsArePreparedWithOpaqueString() throws {
        let salt: [UInt8] = Array("salt".utf8)
        let composed = try SCRAMCredentials.derive(password: "p\u{E9}ncil", salt: salt, iterations: 16, hash: .sha256)
        #expect(composed.verify(password: "pe\u{301}ncil"))
        let spaced = try SCRAMCredentials.derive(password: "a b", salt: salt, iterations: 16, hash: .sha256)
        #expect(spaced.verify(password: "a\u{A0}b"))
        #expect(!spaced.verify(password: "ab"))
        #expect(saslError { _ = try SCRAMCredentials.derive(password: "", salt: salt, iterations: 16, hash: .sha1) }?.condition == .malformedRequest)
        #expect(saslError { _ = try SCRAMCredentials.derive(password: "a\u{7}", salt: salt, iterations: 16, hash: .sha1) }?.condition == .malformedRequest)
        #expect(saslError { _ = try SCRAMCredentials.derive(password: "x", salt: [], iterations: 16, hash: .sha1) }?.condition == .malformedRequest)
        #expect(saslError { _ = try SCRAMCredentials.derive(password: "x", salt: salt, iterations: 0, hash: .sha1) }?.condition == .malformedRequest)
    }

    @Test func saltedPasswordCacheAndPrecomputedInit() throws {
        let vector = SCRAMVector.rfc7677
        let credentials = try vector.credentials()
        let cache = SCRAMSaltedPasswordCache()
        for index in 0..<3 {
            var client = SCRAMClient(hash: .sha256, username: "user", password: "pencil", saltedPasswordCache: cache)
            var server = vector.server()
            _ = try server.receiveClientFirst(client.clientFirst())
            let response = try client.receiveServerFirst(server.serverFirst(credentials: credentials, fakeSaltKey: []))
            try client.receiveServerFinal(try server.receiveClientFinal(response))
            #expect(cache.count == 1, "round \(index)")
        }

        let salted = try SCRAMCredentials.saltedPassword(password: "pencil", salt: vector.saltBytes, iterations: 4096, hash: .sha256)
        var client = SCRAMClient(hash: .sha256, username: "user", saltedPassword: salted, salt: vector.saltBytes, iterations: 4096, nonce: vector.clientNonce)
        #expect(s(client.clientFirst()) == vector.clientFirst)
        #expect(s(try client.receiveServerFirst(b(vector.serverFirst))) == vector.clientFinal)

        var mismatched = SCRAMClient(hash: .sha256, username: "user", saltedPassword: salted, salt: [9], iterations: 4096, nonce: vector.clientNonce)
        _ = mismatched.clientFirst()
        #expect(saslError { _ = try mismatched.receiveServerFirst(b(vector.serverFirst)) }?.condition == .malformedRequest)
    }

    @Test func mechanismNames() {
        #expect(SCRAMHash.sha1.mechanismName == "SCRAM-SHA-1")
        #expect(SCRAMHash.sha256.mechanismName == "SCRAM-SHA-256")
        #expect(SCRAMHash(mechanismName: "SCRAM-SHA-256") == .sha256)
        #expect(SCRAMHash(mechanismName: "SCRAM-SHA-1") == .sha1)
        #expect(SCRAMHash(mechanismName: "SCRAM-SHA-256-PLUS") == nil)
        #expect(SCRAMHash.sha1.byteCount == 20 && SCRAMHash.sha256.byteCount == 32)
    }
}

@Suite("SASL PLAIN and errors")
struct PLAINTests {
    @Test func parsesMessages() throws {
        let plain = try PLAINMessage.parse(b("\u{0}tim\u{0}tanstaaftanstaaf"))
        #expect(plain.authzid == nil && plain.authcid == "tim" && plain.password == "tanstaaftanstaaf")

        let withAuthzid = try PLAINMessage.parse(b("Ursel\u{0}Kurt\u{0}xipj3plmq"))
        #expect(withAuthzid.authzid == "Ursel" && withAuthzid.authcid == "Kurt" && withAuthzid.password == "xipj3plmq")

        let unicode = try PLAINMessage.parse(b("\u{0}\u{5F20}\u{4F1F}\u{0}p\u{E4}ss w\u{F6}rd"))
        #expect(unicode.authcid == "\u{5F20}\u{4F1F}" && unicode.password == "p\u{E4}ss w\u{F6}rd")

        #expect(try PLAINMessage.parse(PLAINMessage.encode(authzid: "a", authcid: "b", password: "c")) == ("a", "b", "c"))
        #expect(try PLAINMessage.parse(PLAINMessage.encode(authcid: "b", password: "c")) == (nil, "b", "c"))

        let maximal = [UInt8](repeating: UInt8(ascii: "p"), count: PLAINMessage.maximumLength - 3)
        #expect(try PLAINMessage.parse(b("\u{0}u\u{0}") + maximal).password.utf8.count == PLAINMessage.maximumLength - 3)
    }

    @Test(arguments: [
        "",
        "user",
        "\u{0}user",
        "\u{0}\u{0}password",
        "\u{0}user\u{0}",
        "\u{0}\u{0}",
        "authz\u{0}user\u{0}pass\u{0}word",
        "a\u{0}b\u{0}c\u{0}",
    ])
    func rejectsMalformed(_ message: String) {
        #expect(saslError { _ = try PLAINMessage.parse(b(message)) }?.condition == .malformedRequest, "\(message.debugDescription)")
    }

    @Test func rejectsOverlongAndInvalidUTF8() {
        let long = b("\u{0}user\u{0}") + [UInt8](repeating: UInt8(ascii: "p"), count: 1020)
        #expect(long.count > 1024)
        #expect(saslError { _ = try PLAINMessage.parse(long) }?.condition == .malformedRequest)
        #expect(saslError { _ = try PLAINMessage.parse([0] + b("user") + [0, 0xC3, 0x28]) }?.condition == .malformedRequest)
        #expect(saslError { _ = try PLAINMessage.parse([0, 0xFF] + b("user") + [0] + b("pw")) }?.condition == .malformedRequest)
        #expect(saslError { _ = try PLAINMessage.parse([0xED, 0xA0, 0x80, 0] + b("user") + [0] + b("pw")) }?.condition == .malformedRequest)
    }

    @Test func plainAgainstStoredCredentials() throws {
        let credentials = try SCRAMCredentials.derive(password: "s3cret", salt: Array("NaCl".utf8), iterations: 128, hash: .sha256)
        let plain = try PLAINMessage.parse(PLAINMessage.encode(authcid: "user", password: "s3cret"))
        #expect(credentials.verify(password: plain.password))
        #expect(!credentials.verify(password: "s3cret "))
    }

    @Test func errorElementNames() {
        let expected: [SASLError.Condition: String] = [
            .aborted: "aborted", .accountDisabled: "account-disabled", .credentialsExpired: "credentials-expired",
            .encryptionRequired: "encryption-required", .incorrectEncoding: "incorrect-encoding",
            .invalidAuthzid: "invalid-authzid", .invalidMechanism: "invalid-mechanism",
            .malformedRequest: "malformed-request", .mechanismTooWeak: "mechanism-too-weak",
            .notAuthorized: "not-authorized", .temporaryAuthFailure: "temporary-auth-failure",
        ]
        #expect(expected.count == SASLError.Condition.allCases.count)
        for condition in SASLError.Condition.allCases {
            #expect(SASLError(condition).elementName == expected[condition])
        }
        #expect(SASLError.notAuthorized.text == nil)
        #expect(SASLError(.malformedRequest, text: "bad").description == "malformed-request: bad")
        #expect(SASLError.temporaryAuthFailure.description == "temporary-auth-failure")
    }
}
