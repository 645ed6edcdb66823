import Foundation
import NIOSSL
import SwiftASN1
import X509
import XMPPCore

/// What a client's TLS certificate proves, as far as SASL EXTERNAL (XEP-0178) is concerned.
enum ClientCertificateStatus: Sendable {
    /// The client presented no certificate.
    case absent
    /// A certificate that cannot log in; `reason` is safe to show the client.
    case invalid(reason: String)
    case valid(ClientCertificateIdentity)
}

/// The identity a valid client certificate carries.
struct ClientCertificateIdentity: Sendable {
    /// Normalised hex serial (see `CertificateAuthority.serialString`).
    let serial: String
    /// The id-on-xmppAddr subjectAltNames, as bare JIDs.
    let addresses: [JID]
    let notAfter: Date
    /// Issued by this server's own CA (`data_dir/ca`), which records every certificate it issues:
    /// a serial it does not know is refused.
    let issuedByLocalAuthority: Bool
}

/// Checks client certificates against the company CA(s).
///
/// The TLS layer accepts any certificate the client proves it holds the key of (BoringSSL still
/// checks the CertificateVerify signature); the chain, validity period and purpose are checked
/// here, so that a client with an expired or foreign certificate still connects, can log in with
/// a password where policy allows, and gets a SASL failure that says what is wrong instead of a
/// TLS alert.
public struct ClientCertificateVerifier: Sendable {
    struct Authority: Sendable {
        let certificate: Certificate
        let local: Bool
    }

    let authorities: [Authority]

    /// The authorities' certificates, for the TLS CertificateRequest's CA name list.
    public var trustRoots: [NIOSSLCertificate] {
        authorities.compactMap { try? NIOSSLCertificate(bytes: Self.der($0.certificate), format: .der) }
    }

    init(authorities: [Authority]) {
        self.authorities = authorities
    }

    /// The data directory's CA and `tls.client_ca`; nil when neither exists (no certificate login).
    public static func load(configuration: ServerConfiguration) throws -> ClientCertificateVerifier? {
        var authorities: [Authority] = []
        let localPath = CertificateAuthority.certificatePath(dataDir: configuration.dataDir)
        if FileManager.default.fileExists(atPath: localPath) {
            do {
                authorities.append(
                    Authority(certificate: try Certificate(pemEncoded: String(contentsOfFile: localPath, encoding: .utf8)), local: true))
            } catch {
                throw ConfigurationError("cannot read the certificate authority \(localPath): \(error)")
            }
        }
        if let path = configuration.tls.clientCA {
            do {
                let pem = try String(contentsOfFile: path, encoding: .utf8)
                let documents = try PEMDocument.parseMultiple(pemString: pem)
                guard !documents.isEmpty else { throw ConfigurationError("no PEM certificate in the file") }
                for document in documents {
                    authorities.append(Authority(certificate: try Certificate(pemDocument: document), local: false))
                }
            } catch {
                throw ConfigurationError("tls.client_ca: cannot load PEM CA certificates from \(path): \(error)")
            }
        }
        return authorities.isEmpty ? nil : ClientCertificateVerifier(authorities: authorities)
    }

    private static func der(_ certificate: Certificate) -> [UInt8] {
        var serializer = DER.Serializer()
        try? serializer.serialize(certificate)
        return serializer.serializedBytes
    }

    /// Evaluates the leaf certificate a client presented.
    func evaluate(_ peer: NIOSSLCertificate?, domain: String, now: Date = Date()) -> ClientCertificateStatus {
        guard let peer else { return .absent }
        guard let bytes = try? peer.toDERBytes(), let leaf = try? Certificate(derEncoded: bytes) else {
            return .invalid(reason: "the client certificate cannot be parsed")
        }
        return evaluate(leaf, domain: domain, now: now)
    }

    func evaluate(_ leaf: Certificate, domain: String, now: Date = Date()) -> ClientCertificateStatus {
        guard
            let authority = authorities.first(where: {
                $0.certificate.subject == leaf.issuer && $0.certificate.publicKey.isValidSignature(leaf.signature, for: leaf)
            })
        else {
            return .invalid(reason: "the client certificate was not issued by this server's certificate authority")
        }
        let formatter = ISO8601DateFormatter()
        if now > leaf.notValidAfter {
            return .invalid(reason: "the client certificate expired on \(formatter.string(from: leaf.notValidAfter))")
        }
        if now < leaf.notValidBefore {
            return .invalid(reason: "the client certificate is not valid before \(formatter.string(from: leaf.notValidBefore))")
        }
        if now > authority.certificate.notValidAfter {
            return .invalid(reason: "the certificate authority expired on \(formatter.string(from: authority.certificate.notValidAfter))")
        }
        if let constraints = try? leaf.extensions.basicConstraints, case .isCertificateAuthority = constraints {
            return .invalid(reason: "a CA certificate cannot be used to log in")
        }
        if let usage = try? leaf.extensions.extendedKeyUsage, !usage.contains(.clientAuth), !usage.contains(.any) {
            return .invalid(reason: "the client certificate is not meant for client authentication (extendedKeyUsage)")
        }
        var addresses: [JID] = []
        if let names = try? leaf.extensions.subjectAlternativeNames {
            for name in names {
                guard case .otherName(let other) = name, other.typeID == CertificateAuthority.xmppAddrOID, let value = other.value,
                    let text = try? ASN1UTF8String(asn1Any: value), let jid = try? JID(String(text)),
                    jid.localpart != nil, jid.domainpart == domain
                else { continue }
                addresses.append(jid.bare)
            }
        }
        guard !addresses.isEmpty else {
            return .invalid(reason: "the client certificate names no XMPP address of \(domain) (subjectAltName id-on-xmppAddr)")
        }
        return .valid(
            ClientCertificateIdentity(
                serial: CertificateAuthority.serialString(leaf.serialNumber), addresses: addresses, notAfter: leaf.notValidAfter,
                issuedByLocalAuthority: authority.local))
    }
}
