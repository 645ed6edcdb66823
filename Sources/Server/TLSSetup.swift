import Crypto
import Foundation
import Logging
import NIOSSL
import SwiftASN1
import X509

/// Loads the configured certificate, or creates (once) and reuses a self-signed one.
enum TLSSetup {
    /// Builds the server TLS context: TLS 1.2 minimum, the configured or generated certificate.
    ///
    /// With `clientAuthorities` (the company CA), the server asks clients for a certificate
    /// (naming those CAs, so a token or phone offers the right one) without requiring one; the
    /// certificate is checked by `ClientCertificateVerifier` at SASL EXTERNAL time.
    static func makeContext(
        configuration: ServerConfiguration, logger: Logger, clientAuthorities: [NIOSSLCertificate] = []
    ) throws -> NIOSSLContext {
        let certificatePath: String
        let keyPath: String
        if let certificate = configuration.tls.certificate, let key = configuration.tls.privateKey {
            certificatePath = certificate
            keyPath = key
        } else {
            certificatePath = configuration.dataDir + "/tls/certificate.pem"
            keyPath = configuration.dataDir + "/tls/private-key.pem"
            if !FileManager.default.fileExists(atPath: certificatePath) || !FileManager.default.fileExists(atPath: keyPath) {
                try generateSelfSigned(domain: configuration.domain, certificatePath: certificatePath, keyPath: keyPath)
                logger.notice(
                    "generated a self-signed certificate; configure tls.certificate and tls.private_key for production",
                    metadata: ["tls.certificate": "\(certificatePath)", "xmpp.domain": "\(configuration.domain)"]
                )
            }
        }
        if let problem = looseKeyPermissions(keyPath) {
            logger.warning("\(problem)", metadata: ["tls.private_key": "\(keyPath)"])
        }
        let chain: [NIOSSLCertificate]
        let key: NIOSSLPrivateKey
        do {
            chain = try NIOSSLCertificate.fromPEMFile(certificatePath)
        } catch {
            throw ConfigurationError("tls.certificate: cannot load PEM certificate chain from \(certificatePath): \(error)")
        }
        do {
            key = try NIOSSLPrivateKey(file: keyPath, format: .pem)
        } catch {
            throw ConfigurationError("tls.private_key: cannot load PEM private key from \(keyPath): \(error)")
        }
        var tls = TLSConfiguration.makeServerConfiguration(
            certificateChain: chain.map { .certificate($0) },
            privateKey: .privateKey(key)
        )
        tls.minimumTLSVersion = .tlsv12
        tls.cipherSuiteValues = [
            .TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, .TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            .TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, .TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            .TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, .TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        ]
        if !clientAuthorities.isEmpty {
            tls.certificateVerification = .optionalVerification
            tls.trustRoots = .certificates(clientAuthorities)
            tls.sendCANameList = true
        }
        return try NIOSSLContext(configuration: tls)
    }

    /// The TLS handler for a client connection. With client certificates requested, any
    /// certificate whose key the client proves to hold is let through the handshake (see
    /// `ClientCertificateVerifier` for why and where it is checked).
    static func serverHandler(context: NIOSSLContext, requestsClientCertificates: Bool) -> NIOSSLServerHandler {
        guard requestsClientCertificates else { return NIOSSLServerHandler(context: context) }
        return NIOSSLServerHandler(context: context) { _, promise in
            promise.succeed(.certificateVerified)
        }
    }

    /// A warning if the private key file can be read or written by group or others (it should be 0600 or 0400).
    static func looseKeyPermissions(_ path: String) -> String? {
        guard let mode = (try? FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? NSNumber)?.intValue,
            mode & 0o077 != 0
        else { return nil }
        return "the TLS private key is accessible to group or others (mode \(String(mode, radix: 8))); run chmod 600 on it"
    }

    /// Writes a P-256 self-signed certificate for `domain` (valid ten years) and its key (mode 0600).
    static func generateSelfSigned(domain: String, certificatePath: String, keyPath: String) throws {
        let directory = (certificatePath as NSString).deletingLastPathComponent
        try FileManager.default.createDirectory(
            atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700]
        )
        let key = P256.Signing.PrivateKey()
        let name = try DistinguishedName {
            CommonName(domain)
            OrganizationName("Switchboard self-signed")
        }
        let now = Date()
        let certificate = try Certificate(
            version: .v3,
            serialNumber: Certificate.SerialNumber(),
            publicKey: .init(key.publicKey),
            notValidBefore: now.addingTimeInterval(-3600),
            notValidAfter: now.addingTimeInterval(3650 * 86400),
            issuer: name,
            subject: name,
            signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.notCertificateAuthority)
                Critical(KeyUsage(digitalSignature: true))
                try ExtendedKeyUsage([.serverAuth])
                SubjectAlternativeNames([.dnsName(domain), .dnsName("*." + domain)])
            },
            issuerPrivateKey: .init(key)
        )
        let certificatePEM = try certificate.serializeAsPEM().pemString + "\n"
        guard FileManager.default.createFile(
            atPath: keyPath, contents: Data(key.pemRepresentation.utf8), attributes: [.posixPermissions: 0o600]
        ) else {
            throw ConfigurationError("cannot write the generated private key to \(keyPath)")
        }
        guard FileManager.default.createFile(
            atPath: certificatePath, contents: Data(certificatePEM.utf8), attributes: [.posixPermissions: 0o644]
        ) else {
            throw ConfigurationError("cannot write the generated certificate to \(certificatePath)")
        }
    }
}
