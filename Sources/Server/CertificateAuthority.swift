import Crypto
import Foundation
import SwiftASN1
import X509

/// The company certificate authority in `data_dir/ca`: issues the client certificates users log
/// in with (SASL EXTERNAL, XEP-0178) and signs the revocation list.
///
/// Files: `ca.pem` (the CA certificate, mode 0644) and `ca-key.pem` (its private key, mode 0600)
/// in a directory of mode 0700. Created by `switchboard ca init` or `switchboard ca import`.
public struct CertificateAuthority: Sendable {
    public let certificate: Certificate
    private let key: Certificate.PrivateKey

    /// RFC 6120 §13.7.1.4: id-on-xmppAddr, an otherName holding a UTF8String JID.
    public static let xmppAddrOID: ASN1ObjectIdentifier = [1, 3, 6, 1, 5, 5, 7, 8, 5]

    public static func directory(dataDir: String) -> String { dataDir + "/ca" }
    public static func certificatePath(dataDir: String) -> String { directory(dataDir: dataDir) + "/ca.pem" }
    public static func keyPath(dataDir: String) -> String { directory(dataDir: dataDir) + "/ca-key.pem" }

    /// Whether `data_dir` holds a CA (its certificate file).
    public static func exists(dataDir: String) -> Bool {
        FileManager.default.fileExists(atPath: certificatePath(dataDir: dataDir))
    }

    init(certificate: Certificate, key: Certificate.PrivateKey) {
        self.certificate = certificate
        self.key = key
    }

    /// Loads the CA of `data_dir`.
    public static func load(dataDir: String) throws -> CertificateAuthority {
        let certificatePath = certificatePath(dataDir: dataDir)
        let keyPath = keyPath(dataDir: dataDir)
        guard exists(dataDir: dataDir) else {
            throw ConfigurationError("no certificate authority in \(directory(dataDir: dataDir)): run 'switchboard ca init' or 'switchboard ca import' first")
        }
        let certificate: Certificate
        let key: Certificate.PrivateKey
        do {
            certificate = try Certificate(pemEncoded: String(contentsOfFile: certificatePath, encoding: .utf8))
        } catch {
            throw ConfigurationError("cannot read the CA certificate \(certificatePath): \(error)")
        }
        do {
            key = try Certificate.PrivateKey(pemEncoded: String(contentsOfFile: keyPath, encoding: .utf8))
        } catch {
            throw ConfigurationError("cannot read the CA private key \(keyPath): \(error)")
        }
        return CertificateAuthority(certificate: certificate, key: key)
    }

    /// Creates a new CA (P-256 key) in `data_dir/ca`; refuses to overwrite an existing one.
    @discardableResult
    public static func create(dataDir: String, subject: String, days: Int, now: Date = Date()) throws -> CertificateAuthority {
        let name = try parseDistinguishedName(subject)
        let key = P256.Signing.PrivateKey()
        let privateKey = Certificate.PrivateKey(key)
        let certificate = try Certificate(
            version: .v3,
            serialNumber: Certificate.SerialNumber(),
            publicKey: privateKey.publicKey,
            notValidBefore: now.addingTimeInterval(-3600),
            notValidAfter: now.addingTimeInterval(Double(days) * 86400),
            issuer: name,
            subject: name,
            signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.isCertificateAuthority(maxPathLength: 0))
                Critical(KeyUsage(digitalSignature: true, keyCertSign: true, cRLSign: true))
                SubjectKeyIdentifier(hash: privateKey.publicKey)
            },
            issuerPrivateKey: privateKey
        )
        try write(certificatePEM: try certificate.serializeAsPEM().pemString, keyPEM: key.pemRepresentation, dataDir: dataDir)
        return CertificateAuthority(certificate: certificate, key: privateKey)
    }

    /// Adopts an existing company CA (PEM certificate and its PEM private key, PKCS#8 or SEC1/PKCS#1).
    @discardableResult
    public static func importExisting(dataDir: String, certificatePEM: String, keyPEM: String) throws -> CertificateAuthority {
        let certificate: Certificate
        let key: Certificate.PrivateKey
        do {
            certificate = try Certificate(pemEncoded: certificatePEM)
        } catch {
            throw ConfigurationError("--certificate: not a PEM certificate: \(error)")
        }
        do {
            key = try Certificate.PrivateKey(pemEncoded: keyPEM)
        } catch {
            throw ConfigurationError("--key: not a PEM private key (RSA, P-256, P-384, P-521 or Ed25519): \(error)")
        }
        guard key.publicKey == certificate.publicKey else {
            throw ConfigurationError("--key does not belong to --certificate (their public keys differ)")
        }
        if let constraints = try? certificate.extensions.basicConstraints, case .notCertificateAuthority = constraints {
            throw ConfigurationError("--certificate is not a CA certificate (basicConstraints cA is false)")
        }
        try write(certificatePEM: try certificate.serializeAsPEM().pemString, keyPEM: try key.serializeAsPEM().pemString, dataDir: dataDir)
        return CertificateAuthority(certificate: certificate, key: key)
    }

    private static func write(certificatePEM: String, keyPEM: String, dataDir: String) throws {
        let directory = directory(dataDir: dataDir)
        let certificatePath = certificatePath(dataDir: dataDir)
        let keyPath = keyPath(dataDir: dataDir)
        let files = FileManager.default
        if files.fileExists(atPath: certificatePath) || files.fileExists(atPath: keyPath) {
            throw ConfigurationError(
                "a certificate authority already exists in \(directory); it is never overwritten (certificates it issued would stop working). Move the directory away first if you really mean to replace it")
        }
        try files.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        try files.setAttributes([.posixPermissions: 0o700], ofItemAtPath: directory)
        guard files.createFile(atPath: keyPath, contents: Data((keyPEM + "\n").utf8), attributes: [.posixPermissions: 0o600]) else {
            throw ConfigurationError("cannot write the CA private key to \(keyPath)")
        }
        guard files.createFile(atPath: certificatePath, contents: Data((certificatePEM + "\n").utf8), attributes: [.posixPermissions: 0o644]) else {
            try? files.removeItem(atPath: keyPath)
            throw ConfigurationError("cannot write the CA certificate to \(certificatePath)")
        }
    }

    /// A freshly issued client certificate and its new private key.
    public struct IssuedIdentity: Sendable {
        public let certificate: Certificate
        public let privateKey: P256.Signing.PrivateKey
        public var serial: String { CertificateAuthority.serialString(certificate.serialNumber) }
        public var certificatePEM: String { (try? certificate.serializeAsPEM().pemString) ?? "" }
        public var privateKeyPEM: String { privateKey.pemRepresentation }
    }

    /// Issues a client certificate for `address` (user@domain): a new P-256 key, CN and
    /// subjectAltName otherName id-on-xmppAddr = the address, extendedKeyUsage clientAuth.
    public func issue(address: String, days: Int, now: Date = Date()) throws -> IssuedIdentity {
        let clientKey = P256.Signing.PrivateKey()
        let publicKey = Certificate.PublicKey(clientKey.publicKey)
        let subject = try DistinguishedName { CommonName(address) }
        let xmppAddr = GeneralName.OtherName(typeID: Self.xmppAddrOID, value: try ASN1Any(erasing: ASN1UTF8String(address)))
        let authorityKeyID = (try? certificate.extensions.subjectKeyIdentifier)?.keyIdentifier
            ?? SubjectKeyIdentifier(hash: certificate.publicKey).keyIdentifier
        let notAfter = min(now.addingTimeInterval(Double(days) * 86400), certificate.notValidAfter)
        let issued = try Certificate(
            version: .v3,
            serialNumber: Certificate.SerialNumber(),
            publicKey: publicKey,
            notValidBefore: now.addingTimeInterval(-300),
            notValidAfter: notAfter,
            issuer: certificate.subject,
            subject: subject,
            signatureAlgorithm: signatureAlgorithm,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.notCertificateAuthority)
                Critical(KeyUsage(digitalSignature: true))
                try ExtendedKeyUsage([.clientAuth])
                SubjectAlternativeNames([.otherName(xmppAddr)])
                SubjectKeyIdentifier(hash: publicKey)
                AuthorityKeyIdentifier(keyIdentifier: authorityKeyID)
            },
            issuerPrivateKey: key
        )
        return IssuedIdentity(certificate: issued, privateKey: clientKey)
    }

    /// The signature algorithm for this CA's key type.
    private var signatureAlgorithm: Certificate.SignatureAlgorithm {
        if P384.Signing.PublicKey(certificate.publicKey) != nil { return .ecdsaWithSHA384 }
        if P521.Signing.PublicKey(certificate.publicKey) != nil { return .ecdsaWithSHA512 }
        if Curve25519.Signing.PublicKey(certificate.publicKey) != nil { return .ed25519 }
        if P256.Signing.PublicKey(certificate.publicKey) != nil { return .ecdsaWithSHA256 }
        return .sha256WithRSAEncryption
    }

    /// DER AlgorithmIdentifier of `signatureAlgorithm` (X509 keeps its own type internal).
    private var algorithmIdentifier: (oid: ASN1ObjectIdentifier, nullParameters: Bool) {
        switch signatureAlgorithm {
        case .ecdsaWithSHA384: return ([1, 2, 840, 10045, 4, 3, 3], false)
        case .ecdsaWithSHA512: return ([1, 2, 840, 10045, 4, 3, 4], false)
        case .ed25519: return ([1, 3, 101, 112], false)
        case .sha256WithRSAEncryption: return ([1, 2, 840, 113549, 1, 1, 11], true)
        default: return ([1, 2, 840, 10045, 4, 3, 2], false)
        }
    }

    // MARK: - Revocation list

    /// One revoked certificate in a CRL.
    public struct Revocation: Sendable {
        public var serial: String
        public var date: Date
        public var reason: String?
        public init(serial: String, date: Date, reason: String?) {
            self.serial = serial
            self.date = date
            self.reason = reason
        }
    }

    /// RFC 5280 §5.3.1 reason codes, by the names `ca revoke --reason` accepts.
    public static let reasonCodes: [String: Int] = [
        "unspecified": 0, "keycompromise": 1, "cacompromise": 2, "affiliationchanged": 3, "superseded": 4,
        "cessationofoperation": 5, "certificatehold": 6, "privilegewithdrawn": 9,
    ]

    static func reasonCode(_ reason: String?) -> Int? {
        guard let reason else { return nil }
        let key = reason.lowercased().filter { $0.isLetter }
        return reasonCodes[key]
    }

    /// An RFC 5280 v2 CRL signed by this CA, DER encoded.
    ///
    /// ```
    /// CertificateList ::= SEQUENCE { tbsCertList, signatureAlgorithm, signatureValue BIT STRING }
    /// TBSCertList ::= SEQUENCE { version v2, signature, issuer, thisUpdate, nextUpdate,
    ///     revokedCertificates SEQUENCE OF SEQUENCE { serial, date, [reasonCode] } OPTIONAL,
    ///     crlExtensions [0] EXPLICIT { cRLNumber, authorityKeyIdentifier } }
    /// ```
    public func revocationList(_ revoked: [Revocation], number: Int, now: Date = Date(), validDays: Int = 7) throws -> [UInt8] {
        let algorithm = algorithmIdentifier
        func writeAlgorithm(_ coder: inout DER.Serializer) throws {
            try coder.appendConstructedNode(identifier: .sequence) { coder in
                try coder.serialize(algorithm.oid)
                if algorithm.nullParameters { try coder.serialize(ASN1Null()) }
            }
        }
        func writeExtension(_ coder: inout DER.Serializer, _ oid: ASN1ObjectIdentifier, _ value: (inout DER.Serializer) throws -> Void) throws {
            var inner = DER.Serializer()
            try value(&inner)
            try coder.appendConstructedNode(identifier: .sequence) { coder in
                try coder.serialize(oid)
                try coder.serialize(ASN1OctetString(contentBytes: ArraySlice(inner.serializedBytes)))
            }
        }
        var tbs = DER.Serializer()
        try tbs.appendConstructedNode(identifier: .sequence) { coder in
            try coder.serialize(1)  // v2
            try writeAlgorithm(&coder)
            try coder.serialize(certificate.subject)
            try Self.writeTime(now, into: &coder)
            try Self.writeTime(now.addingTimeInterval(Double(validDays) * 86400), into: &coder)
            if !revoked.isEmpty {
                try coder.appendConstructedNode(identifier: .sequence) { coder in
                    for entry in revoked {
                        try coder.appendConstructedNode(identifier: .sequence) { coder in
                            try coder.serialize(ArraySlice(Self.serialBytes(entry.serial)))
                            try Self.writeTime(entry.date, into: &coder)
                            if let code = Self.reasonCode(entry.reason) {
                                try coder.appendConstructedNode(identifier: .sequence) { coder in
                                    try writeExtension(&coder, [2, 5, 29, 21]) { try code.serialize(into: &$0, withIdentifier: .enumerated) }
                                }
                            }
                        }
                    }
                }
            }
            try coder.appendConstructedNode(identifier: ASN1Identifier(tagWithNumber: 0, tagClass: .contextSpecific)) { coder in
                try coder.appendConstructedNode(identifier: .sequence) { coder in
                    try writeExtension(&coder, [2, 5, 29, 20]) { try $0.serialize(number) }
                    if let keyID = (try? certificate.extensions.subjectKeyIdentifier)?.keyIdentifier {
                        try writeExtension(&coder, [2, 5, 29, 35]) { coder in
                            try coder.appendConstructedNode(identifier: .sequence) { coder in
                                try ASN1OctetString(contentBytes: keyID).serialize(
                                    into: &coder, withIdentifier: ASN1Identifier(tagWithNumber: 0, tagClass: .contextSpecific))
                            }
                        }
                    }
                }
            }
        }
        let tbsBytes = tbs.serializedBytes
        let signature = try key.sign(bytes: tbsBytes, signatureAlgorithm: signatureAlgorithm)
        var list = DER.Serializer()
        try list.appendConstructedNode(identifier: .sequence) { coder in
            coder.serializeRawBytes(tbsBytes)
            try writeAlgorithm(&coder)
            try coder.serialize(ASN1BitString(bytes: ArraySlice(signature.rawRepresentation)))
        }
        return list.serializedBytes
    }

    /// RFC 5280 §4.1.2.5: UTCTime through 2049, GeneralizedTime after.
    private static func writeTime(_ date: Date, into coder: inout DER.Serializer) throws {
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = TimeZone(identifier: "UTC")!
        let c = calendar.dateComponents([.year, .month, .day, .hour, .minute, .second], from: date)
        if c.year! < 2050 {
            try coder.serialize(UTCTime(year: c.year!, month: c.month!, day: c.day!, hours: c.hour!, minutes: c.minute!, seconds: c.second!))
        } else {
            try coder.serialize(
                GeneralizedTime(year: c.year!, month: c.month!, day: c.day!, hours: c.hour!, minutes: c.minute!, seconds: c.second!, fractionalSeconds: 0))
        }
    }

    // MARK: - Serial numbers and names

    /// A serial number as stored and shown: lowercase hex, no separators, no leading zeros.
    public static func serialString(_ serial: Certificate.SerialNumber) -> String {
        normalizeSerial(serial.bytes.map { String(format: "%02x", $0) }.joined()) ?? "0"
    }

    /// Accepts `1A:2B:…`, `1a2b…`, `0x1a2b`; nil when it is not hex.
    public static func normalizeSerial(_ text: String) -> String? {
        var hex = text.lowercased().filter { $0 != ":" && !$0.isWhitespace }
        if hex.hasPrefix("0x") { hex.removeFirst(2) }
        guard !hex.isEmpty, hex.allSatisfy(\.isHexDigit) else { return nil }
        let trimmed = hex.drop { $0 == "0" }
        return trimmed.isEmpty ? "0" : String(trimmed)
    }

    static func serialBytes(_ serial: String) -> [UInt8] {
        var hex = serial
        if hex.count % 2 == 1 { hex = "0" + hex }
        var bytes: [UInt8] = []
        var index = hex.startIndex
        while index < hex.endIndex {
            let next = hex.index(index, offsetBy: 2)
            bytes.append(UInt8(hex[index..<next], radix: 16) ?? 0)
            index = next
        }
        return bytes
    }

    /// Parses `CN=Example Corp IM CA, O=Example Corp, C=CN` (RFC 4514 style; `\,` escapes a comma).
    public static func parseDistinguishedName(_ text: String) throws -> DistinguishedName {
        var parts: [String] = []
        var current = ""
        var escaped = false
        for character in text {
            if escaped {
                current.append(character)
                escaped = false
            } else if character == "\\" {
                escaped = true
            } else if character == "," {
                parts.append(current)
                current = ""
            } else {
                current.append(character)
            }
        }
        parts.append(current)
        var attributes: [RelativeDistinguishedName.Attribute] = []
        for part in parts {
            let pieces = part.split(separator: "=", maxSplits: 1)
            guard pieces.count == 2 else {
                throw ConfigurationError("--subject: '\(part)' is not TYPE=value (e.g. CN=Example Corp IM CA, O=Example Corp)")
            }
            let type = pieces[0].trimmingCharacters(in: .whitespaces).uppercased()
            let value = pieces[1].trimmingCharacters(in: .whitespaces)
            guard !value.isEmpty else { throw ConfigurationError("--subject: \(type) has an empty value") }
            let oid: ASN1ObjectIdentifier
            switch type {
            case "CN": oid = .RDNAttributeType.commonName
            case "O": oid = .RDNAttributeType.organizationName
            case "OU": oid = .RDNAttributeType.organizationalUnitName
            case "C": oid = .RDNAttributeType.countryName
            case "L": oid = .RDNAttributeType.localityName
            case "ST": oid = .RDNAttributeType.stateOrProvinceName
            default: throw ConfigurationError("--subject: unknown attribute type '\(type)' (use CN, O, OU, C, L or ST)")
            }
            if type == "C" {
                guard value.count == 2 else { throw ConfigurationError("--subject: C must be a two-letter country code") }
                attributes.append(try RelativeDistinguishedName.Attribute(type: oid, printableString: value))
            } else {
                attributes.append(RelativeDistinguishedName.Attribute(type: oid, utf8String: value))
            }
        }
        guard attributes.contains(where: { $0.type == .RDNAttributeType.commonName }) else {
            throw ConfigurationError("--subject needs a CN (common name), e.g. CN=Example Corp IM CA")
        }
        // RFC 4514 writes the most specific RDN first; the DER sequence starts with the least.
        return DistinguishedName(attributes.reversed().map { RelativeDistinguishedName($0) })
    }
}
