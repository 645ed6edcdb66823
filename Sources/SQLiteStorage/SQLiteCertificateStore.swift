import Storage

extension SQLiteStores: CertificateStore {
    private static let columns = "serial, username, issued_at, not_before, not_after, revoked_at, revocation_reason"

    private static func row(_ statement: Statement) -> IssuedCertificate {
        IssuedCertificate(
            serial: statement.text(0) ?? "", username: statement.text(1) ?? "", issuedAt: statement.double(2),
            notBefore: statement.double(3), notAfter: statement.double(4),
            revokedAt: statement.isNull(5) ? nil : statement.double(5), revocationReason: statement.text(6))
    }

    public func recordCertificate(_ certificate: IssuedCertificate) async throws {
        try await database.run { db in
            do {
                try db.run(
                    "INSERT INTO issued_certificates (\(Self.columns)) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [
                        .text(certificate.serial), .text(certificate.username), .double(certificate.issuedAt),
                        .double(certificate.notBefore), .double(certificate.notAfter),
                        certificate.revokedAt.map(SQLValue.double) ?? .null,
                        certificate.revocationReason.map(SQLValue.text) ?? .null,
                    ])
            } catch let error as StorageError where error.isConflict {
                throw StorageError.conflict("certificate serial \(certificate.serial) is already recorded")
            }
        }
    }

    public func certificate(serial: String) async throws -> IssuedCertificate? {
        try await database.run { db in
            try db.query("SELECT \(Self.columns) FROM issued_certificates WHERE serial = ?", [.text(serial)], Self.row).first
        }
    }

    public func certificates(of username: String?) async throws -> [IssuedCertificate] {
        try await database.run { db in
            if let username {
                return try db.query(
                    "SELECT \(Self.columns) FROM issued_certificates WHERE username = ? ORDER BY issued_at, serial",
                    [.text(username)], Self.row)
            }
            return try db.query("SELECT \(Self.columns) FROM issued_certificates ORDER BY issued_at, serial", [], Self.row)
        }
    }

    public func revocations(since time: Double) async throws -> [IssuedCertificate] {
        try await database.run { db in
            try db.query(
                "SELECT \(Self.columns) FROM issued_certificates WHERE revoked_at >= ? ORDER BY revoked_at", [.double(time)], Self.row)
        }
    }

    public func revokeCertificate(serial: String, at time: Double, reason: String?) async throws -> Bool {
        try await database.run { db in
            try db.run(
                "UPDATE issued_certificates SET revoked_at = ?, revocation_reason = ? WHERE serial = ? AND revoked_at IS NULL",
                [.double(time), reason.map(SQLValue.text) ?? .null, .text(serial)]) > 0
        }
    }
}
