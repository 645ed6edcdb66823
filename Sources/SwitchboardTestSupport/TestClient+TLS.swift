import Foundation
import NIOCore
import NIOSSL
import XMLStream
import XMPPCore

extension TestClient {
    /// A client TLS context that trusts any server certificate (the test server's is self-signed)
    /// and presents `certificatePEM` (leaf first, then any chain) with `keyPEM` when given.
    public static func tlsContext(certificatePEM: String? = nil, keyPEM: String? = nil) throws -> NIOSSLContext {
        var configuration = TLSConfiguration.makeClientConfiguration()
        configuration.certificateVerification = .none
        if let certificatePEM, let keyPEM {
            configuration.certificateChain = try NIOSSLCertificate.fromPEMBytes(Array(certificatePEM.utf8)).map { .certificate($0) }
            configuration.privateKey = .privateKey(try NIOSSLPrivateKey(bytes: Array(keyPEM.utf8), format: .pem))
        }
        return try NIOSSLContext(configuration: configuration)
    }

    /// STARTTLS (RFC 6120 §5) on a fresh stream; returns the features of the stream opened over TLS.
    @discardableResult
    public func startTLS(_ context: NIOSSLContext) async throws -> XMLElement {
        let features = try await openStream()
        guard features.child("starttls", namespace: "urn:ietf:params:xml:ns:xmpp-tls") != nil else {
            throw TestClientError("STARTTLS not offered: \(XMLSerializer.string(features))")
        }
        try await send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        let proceed = try await next()
        guard proceed.name == "proceed" else { throw TestClientError("no proceed: \(XMLSerializer.string(proceed))") }
        let channel = self.channel
        try await channel.eventLoop.submit {
            try channel.pipeline.syncOperations.addHandler(NIOSSLClientHandler(context: context, serverHostname: nil), position: .first)
        }.get()
        return try await openStream()
    }

    /// The SASL mechanisms a features element offers.
    public static func mechanisms(_ features: XMLElement) -> [String] {
        features.child("mechanisms", namespace: NS.sasl)?.elements.map(\.text) ?? []
    }

    /// SASL EXTERNAL (XEP-0178) with an optional authzid; returns `<success/>` or `<failure/>`.
    /// The caller opened the stream (over TLS) already.
    public func authenticateExternal(authzid: String? = nil) async throws -> XMLElement {
        let payload = authzid.map { Data($0.utf8).base64EncodedString() } ?? "="
        try await send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>\(payload)</auth>")
        return try await next()
    }

    /// SCRAM-SHA-256 on the current (already opened) stream; returns `<success/>` or `<failure/>`.
    public func scramOutcome(_ username: String, password: String) async throws -> XMLElement {
        var scram = SCRAMClient(hash: .sha256, username: username, password: password)
        try await send(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-256'>\(Data(scram.clientFirst()).base64EncodedString())</auth>")
        let challenge = try await next()
        guard challenge.name == "challenge", let serverFirst = Data(base64Encoded: challenge.text) else { return challenge }
        let final = try scram.receiveServerFirst(Array(serverFirst))
        try await send("<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>\(Data(final).base64EncodedString())</response>")
        return try await next()
    }
}
