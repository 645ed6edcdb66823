import Foundation
import SQLiteStorage
import Server
import Storage
import Testing

@Suite struct CertificateStoreTests {
    @Test func recordListRevoke() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("sb-certstore-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let stores = try SQLiteStores(directory: directory)
        let first = IssuedCertificate(serial: "1a2b", username: "alice", issuedAt: 10, notBefore: 10, notAfter: 1000)
        let second = IssuedCertificate(serial: "3c4d", username: "alice", issuedAt: 20, notBefore: 20, notAfter: 2000)
        let other = IssuedCertificate(serial: "5e6f", username: "bob", issuedAt: 30, notBefore: 30, notAfter: 3000)
        for certificate in [first, second, other] { try await stores.recordCertificate(certificate) }
        await #expect(throws: StorageError.self) { try await stores.recordCertificate(first) }

        #expect(try await stores.certificates(of: "alice").map(\.serial) == ["1a2b", "3c4d"])
        #expect(try await stores.certificates(of: nil).count == 3)
        #expect(try await stores.certificate(serial: "5e6f") == other)
        #expect(try await stores.certificate(serial: "ffff") == nil)

        #expect(try await stores.revokeCertificate(serial: "1a2b", at: 500, reason: "keyCompromise"))
        #expect(try await !stores.revokeCertificate(serial: "1a2b", at: 600, reason: nil))  // once only
        #expect(try await !stores.revokeCertificate(serial: "ffff", at: 600, reason: nil))
        let revoked = try #require(try await stores.certificate(serial: "1a2b"))
        #expect(revoked.revokedAt == 500)
        #expect(revoked.revocationReason == "keyCompromise")
        #expect(try await stores.certificate(serial: "3c4d")?.isRevoked == false)
    }

    @Test func serialsAreNormalised() {
        #expect(CertificateAuthority.normalizeSerial("00:1A:2b") == "1a2b")
        #expect(CertificateAuthority.normalizeSerial("0x001a2b") == "1a2b")
        #expect(CertificateAuthority.normalizeSerial("alice") == nil)
        #expect(CertificateAuthority.normalizeSerial("") == nil)
    }
}
