/// A client certificate the company CA issued (`switchboard ca issue`), for SASL EXTERNAL login.
public struct IssuedCertificate: Sendable, Hashable {
    /// Serial number in lowercase hex without separators, as `openssl x509 -serial` prints it (case aside).
    public var serial: String
    /// The account (JID localpart) the certificate names.
    public var username: String
    /// Seconds since 1970.
    public var issuedAt: Double
    public var notBefore: Double
    public var notAfter: Double
    /// Set once revoked; a revoked certificate never logs in again.
    public var revokedAt: Double?
    /// Why, in the administrator's words (also the CRL reason when it is one of RFC 5280's).
    public var revocationReason: String?

    public init(
        serial: String, username: String, issuedAt: Double, notBefore: Double, notAfter: Double,
        revokedAt: Double? = nil, revocationReason: String? = nil
    ) {
        self.serial = serial
        self.username = username
        self.issuedAt = issuedAt
        self.notBefore = notBefore
        self.notAfter = notAfter
        self.revokedAt = revokedAt
        self.revocationReason = revocationReason
    }

    public var isRevoked: Bool { revokedAt != nil }
}

/// Every client certificate issued by the company CA, and which were revoked.
public protocol CertificateStore: Sendable {
    /// Records a newly issued certificate; a serial already recorded is a conflict.
    func recordCertificate(_ certificate: IssuedCertificate) async throws
    func certificate(serial: String) async throws -> IssuedCertificate?
    /// Certificates of one user, or of everyone when `username` is nil, oldest first.
    func certificates(of username: String?) async throws -> [IssuedCertificate]
    /// Certificates revoked at or after `time`, for ending the sessions that use them.
    func revocations(since time: Double) async throws -> [IssuedCertificate]
    /// Marks a certificate revoked; false when the serial is unknown or already revoked.
    func revokeCertificate(serial: String, at time: Double, reason: String?) async throws -> Bool
}
