import Foundation

extension ServerConfiguration {
    /// Encryption at rest and the audit record (docs/security-audit.md).
    public struct Security: Sendable, Codable, Hashable {
        /// Seal message bodies (archives, offline messages, the audit record) with AES-256-GCM.
        public var encryption: Bool = true
        /// The master key file (32 random bytes, base64, 0600), created on first start when
        /// missing. Keep it off the database's disk (a separate volume, a USB key) for real
        /// protection. Default: DATA_DIR/keys/master.key.
        public var masterKeyFile: String?
        /// Derive the master key from a passphrase in this environment variable instead of a file
        /// (asked of the operator at start; never stored).
        public var masterKeyPassphraseEnv: String?
        /// Record every routed message in the audit record, independent of users' archives.
        public var audit: Bool = true
        /// Days audit records are kept (0: forever); a job deletes older ones hourly and logs it.
        public var auditRetentionDays: Int = 0
        /// Per unit (id): days for messages sent by its members, e.g. {legal: 3650, interns: 90}.
        public var auditRetentionByUnit: [String: Int] = [:]
        /// Hours an approved access request stays valid.
        public var grantHours: Int = 72
        /// Largest time range one access request may cover, in days.
        public var maxRequestDays: Int = 366
        public init() {}

        enum CodingKeys: String, CodingKey, CaseIterable {
            case encryption, masterKeyFile = "master_key_file", masterKeyPassphraseEnv = "master_key_passphrase_env", audit
            case auditRetentionDays = "audit_retention_days", auditRetentionByUnit = "audit_retention_by_unit"
            case grantHours = "grant_hours", maxRequestDays = "max_request_days"
        }

        public init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            let d = Self()
            encryption = try c.decodeIfPresent(Bool.self, forKey: .encryption) ?? d.encryption
            masterKeyFile = try c.decodeIfPresent(String.self, forKey: .masterKeyFile)
            masterKeyPassphraseEnv = try c.decodeIfPresent(String.self, forKey: .masterKeyPassphraseEnv)
            audit = try c.decodeIfPresent(Bool.self, forKey: .audit) ?? d.audit
            auditRetentionDays = try c.decodeIfPresent(Int.self, forKey: .auditRetentionDays) ?? d.auditRetentionDays
            auditRetentionByUnit = try c.decodeIfPresent([String: Int].self, forKey: .auditRetentionByUnit) ?? d.auditRetentionByUnit
            grantHours = try c.decodeIfPresent(Int.self, forKey: .grantHours) ?? d.grantHours
            maxRequestDays = try c.decodeIfPresent(Int.self, forKey: .maxRequestDays) ?? d.maxRequestDays
        }

        func validate(_ fail: (String, String) -> ConfigurationError) throws {
            if masterKeyFile != nil, masterKeyPassphraseEnv != nil {
                throw fail("security.master_key_file", "and master_key_passphrase_env exclude each other")
            }
            if auditRetentionDays < 0 { throw fail("security.audit_retention_days", "must be 0 (keep) or more days") }
            for (unit, days) in auditRetentionByUnit where days < 1 {
                throw fail("security.audit_retention_by_unit", "must give at least 1 day (unit \(unit): \(days))")
            }
            if !(1...8760).contains(grantHours) { throw fail("security.grant_hours", "must be between 1 and 8760 (got \(grantHours))") }
            if !(1...3660).contains(maxRequestDays) {
                throw fail("security.max_request_days", "must be between 1 and 3660 (got \(maxRequestDays))")
            }
        }
    }

    /// Where the keys live: DATA_DIR/keys.
    public var keysDirectory: String { dataDir + "/keys" }
    public var effectiveMasterKeyFile: String { security.masterKeyFile ?? keysDirectory + "/master.key" }
    /// The trail's anchors, for operators to ship elsewhere.
    public var trailAnchorsFile: String { dataDir + "/trail-anchors.log" }
}
