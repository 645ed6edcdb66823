import Foundation

extension ServerConfiguration {
    /// The company directory (LDAP: OpenLDAP, Active Directory …) as the source of units, users
    /// and roles, and of passwords for the users it provides. See docs/directory.md.
    public struct LDAP: Sendable, Codable, Hashable {
        public var enabled: Bool = false
        /// ldap://host:389 (use `start_tls`) or ldaps://host:636.
        public var url: String = "ldap://127.0.0.1:389"
        /// Upgrade ldap:// connections with StartTLS (required unless `allow_plaintext`).
        public var startTLS: Bool = true
        /// Permit ldap:// without StartTLS (passwords cross the network in clear): test set-ups only.
        public var allowPlaintext: Bool = false
        /// PEM file of the CA(s) that sign the directory's certificate; default: the system's roots.
        public var caFile: String?
        /// Check the certificate's host name against the URL's host.
        public var verifyHostname: Bool = true
        /// The service account the server binds as to read the directory (read-only is enough).
        public var bindDN: String?
        /// Its password; prefer `bind_password_file` so the secret is not in the configuration.
        public var bindPassword: String?
        /// A file whose first line is the service account's password (mode 0600).
        public var bindPasswordFile: String?
        /// Each connect and each operation gives up after this long (the directory is down or hung).
        public var timeoutMs: Int = 10_000
        /// Entries per page for full searches (RFC 2696).
        public var pageSize: Int = 500
        /// Attribute and filter defaults: `openldap` (inetOrgPerson) or `active_directory`.
        public var schema: String = "openldap"
        /// Base of the organisation tree: the organizational units below it become units.
        public var unitBase: String?
        public var unitFilter: String?
        /// Where units come from: `tree` (the OU tree, a user's unit is the OU holding the entry) or
        /// `attribute` (the `department` attribute holds a path such as 研发中心/平台部).
        public var unitFrom: String = "tree"
        /// Subtrees to read users from (partial sync: list only the ones you want); default `unit_base`.
        public var userBases: [String] = []
        public var userFilter: String?
        /// Attribute names; unset ones take the schema's defaults.
        public var attributes: Attributes = Attributes()
        /// A user is disabled when this attribute holds one of `disabled_values` …
        public var disabledAttribute: String?
        public var disabledValues: [String] = []
        /// … or, with a bitmask, when `attribute & bitmask != 0` (AD userAccountControl: 2).
        public var disabledBitmask: Int = 0
        /// Groups whose members get roles.
        public var groupBase: String?
        public var groupFilter: String?
        public var groupMemberAttribute: String?
        /// Group name (its cn) → role, e.g. {im-admins: admin, auditors: auditor}.
        public var groupRoles: [String: String] = [:]
        /// Full sync every so many minutes (0: only on demand or at start).
        public var syncIntervalMinutes: Int = 1440
        /// Incremental sync every so many seconds (0: off).
        public var incrementalIntervalSeconds: Int = 300
        /// `content_sync` (RFC 4533, OpenLDAP syncprov) or `timestamp` (modifyTimestamp/whenChanged
        /// plus a listing of ids to find deletions; works everywhere).
        public var incrementalMethod: String?
        /// A sync that would disable more than this share of the directory's users is refused.
        public var maxDisablePercent: Int = 10
        /// Users from the directory log in with their directory password (SASL PLAIN over TLS, checked by LDAP bind).
        public var login: Bool = true

        public init() {}

        public struct Attributes: Sendable, Codable, Hashable {
            public var uuid: String?
            public var username: String?
            public var displayName: String?
            public var title: String?
            public var employeeNumber: String?
            public var email: String?
            public var phone: String?
            public var mobile: String?
            public var department: String?
            /// DNs of further units the user belongs to (OpenLDAP default: seeAlso).
            public var secondaryUnits: String?
            public var modifyTimestamp: String?
            public init() {}

            enum CodingKeys: String, CodingKey, CaseIterable {
                case uuid, username, displayName = "display_name", title, employeeNumber = "employee_number", email, phone, mobile
                case department, secondaryUnits = "secondary_units", modifyTimestamp = "modify_timestamp"
            }
        }

        enum CodingKeys: String, CodingKey, CaseIterable {
            case enabled, url, startTLS = "start_tls", allowPlaintext = "allow_plaintext", caFile = "ca_file"
            case verifyHostname = "verify_hostname", bindDN = "bind_dn", bindPassword = "bind_password"
            case bindPasswordFile = "bind_password_file", timeoutMs = "timeout_ms", pageSize = "page_size", schema
            case unitBase = "unit_base", unitFilter = "unit_filter", unitFrom = "unit_from", userBases = "user_bases"
            case userFilter = "user_filter", attributes, disabledAttribute = "disabled_attribute"
            case disabledValues = "disabled_values", disabledBitmask = "disabled_bitmask", groupBase = "group_base"
            case groupFilter = "group_filter", groupMemberAttribute = "group_member_attribute", groupRoles = "group_roles"
            case syncIntervalMinutes = "sync_interval_minutes", incrementalIntervalSeconds = "incremental_interval_seconds"
            case incrementalMethod = "incremental_method", maxDisablePercent = "max_disable_percent", login
        }

        public init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            let d = Self()
            enabled = try c.decodeIfPresent(Bool.self, forKey: .enabled) ?? d.enabled
            url = try c.decodeIfPresent(String.self, forKey: .url) ?? d.url
            startTLS = try c.decodeIfPresent(Bool.self, forKey: .startTLS) ?? d.startTLS
            allowPlaintext = try c.decodeIfPresent(Bool.self, forKey: .allowPlaintext) ?? d.allowPlaintext
            caFile = try c.decodeIfPresent(String.self, forKey: .caFile)
            verifyHostname = try c.decodeIfPresent(Bool.self, forKey: .verifyHostname) ?? d.verifyHostname
            bindDN = try c.decodeIfPresent(String.self, forKey: .bindDN)
            bindPassword = try c.decodeIfPresent(String.self, forKey: .bindPassword)
            bindPasswordFile = try c.decodeIfPresent(String.self, forKey: .bindPasswordFile)
            timeoutMs = try c.decodeIfPresent(Int.self, forKey: .timeoutMs) ?? d.timeoutMs
            pageSize = try c.decodeIfPresent(Int.self, forKey: .pageSize) ?? d.pageSize
            schema = try c.decodeIfPresent(String.self, forKey: .schema) ?? d.schema
            unitBase = try c.decodeIfPresent(String.self, forKey: .unitBase)
            unitFilter = try c.decodeIfPresent(String.self, forKey: .unitFilter)
            unitFrom = try c.decodeIfPresent(String.self, forKey: .unitFrom) ?? d.unitFrom
            userBases = try c.decodeIfPresent([String].self, forKey: .userBases) ?? d.userBases
            userFilter = try c.decodeIfPresent(String.self, forKey: .userFilter)
            attributes = try c.decodeIfPresent(Attributes.self, forKey: .attributes) ?? d.attributes
            disabledAttribute = try c.decodeIfPresent(String.self, forKey: .disabledAttribute)
            disabledValues = try c.decodeIfPresent([String].self, forKey: .disabledValues) ?? d.disabledValues
            disabledBitmask = try c.decodeIfPresent(Int.self, forKey: .disabledBitmask) ?? d.disabledBitmask
            groupBase = try c.decodeIfPresent(String.self, forKey: .groupBase)
            groupFilter = try c.decodeIfPresent(String.self, forKey: .groupFilter)
            groupMemberAttribute = try c.decodeIfPresent(String.self, forKey: .groupMemberAttribute)
            groupRoles = try c.decodeIfPresent([String: String].self, forKey: .groupRoles) ?? d.groupRoles
            syncIntervalMinutes = try c.decodeIfPresent(Int.self, forKey: .syncIntervalMinutes) ?? d.syncIntervalMinutes
            incrementalIntervalSeconds =
                try c.decodeIfPresent(Int.self, forKey: .incrementalIntervalSeconds) ?? d.incrementalIntervalSeconds
            incrementalMethod = try c.decodeIfPresent(String.self, forKey: .incrementalMethod)
            maxDisablePercent = try c.decodeIfPresent(Int.self, forKey: .maxDisablePercent) ?? d.maxDisablePercent
            login = try c.decodeIfPresent(Bool.self, forKey: .login) ?? d.login
        }

        // MARK: - Effective values (schema defaults under explicit settings)

        var isActiveDirectory: Bool { schema == "active_directory" }

        public var effectiveUnitFilter: String { unitFilter ?? "(objectClass=organizationalUnit)" }
        public var effectiveUserFilter: String {
            userFilter ?? (isActiveDirectory ? "(&(objectCategory=person)(objectClass=user))" : "(objectClass=inetOrgPerson)")
        }
        public var effectiveGroupFilter: String {
            groupFilter ?? (isActiveDirectory ? "(objectClass=group)" : "(|(objectClass=groupOfNames)(objectClass=groupOfUniqueNames))")
        }
        public var effectiveGroupMemberAttribute: String { groupMemberAttribute ?? "member" }
        public var effectiveUserBases: [String] { userBases.isEmpty ? [unitBase].compactMap { $0 } : userBases }
        public var effectiveIncrementalMethod: String { incrementalMethod ?? (isActiveDirectory ? "timestamp" : "content_sync") }
        public var effectiveDisabledAttribute: String? {
            disabledAttribute ?? (isActiveDirectory ? "userAccountControl" : nil)
        }
        public var effectiveDisabledBitmask: Int { disabledBitmask != 0 ? disabledBitmask : (isActiveDirectory && disabledAttribute == nil ? 2 : 0) }

        /// The attribute names in use.
        public var effectiveAttributes: Attributes {
            var a = attributes
            let ad = isActiveDirectory
            a.uuid = a.uuid ?? (ad ? "objectGUID" : "entryUUID")
            a.username = a.username ?? (ad ? "sAMAccountName" : "uid")
            a.displayName = a.displayName ?? "displayName"
            a.title = a.title ?? "title"
            a.employeeNumber = a.employeeNumber ?? (ad ? "employeeID" : "employeeNumber")
            a.email = a.email ?? "mail"
            a.phone = a.phone ?? "telephoneNumber"
            a.mobile = a.mobile ?? "mobile"
            a.department = a.department ?? "department"
            a.secondaryUnits = a.secondaryUnits ?? (ad ? nil : "seeAlso")
            a.modifyTimestamp = a.modifyTimestamp ?? (ad ? "whenChanged" : "modifyTimestamp")
            return a
        }

        /// The service account's password from `bind_password_file` or `bind_password`.
        public func serviceBindPassword() throws -> String? {
            if let path = bindPasswordFile {
                let text: String
                do {
                    text = try String(contentsOfFile: path, encoding: .utf8)
                } catch {
                    throw ConfigurationError("ldap.bind_password_file: cannot read \(path): \(error.localizedDescription)")
                }
                return text.split(whereSeparator: \.isNewline).first.map(String.init) ?? ""
            }
            return bindPassword
        }

        func validate(_ fail: (String, String) -> ConfigurationError) throws {
            guard enabled else { return }
            if !(url.hasPrefix("ldap://") || url.hasPrefix("ldaps://")) {
                throw fail("ldap.url", "must start with ldap:// or ldaps:// (got '\(url)')")
            }
            if url.hasPrefix("ldap://"), !startTLS, !allowPlaintext {
                throw fail("ldap.start_tls", "is off for an ldap:// URL: passwords would cross the network in clear; use ldaps://, start_tls: true, or allow_plaintext: true for a test set-up")
            }
            if !["openldap", "active_directory"].contains(schema) {
                throw fail("ldap.schema", "must be openldap or active_directory (got '\(schema)')")
            }
            if !["tree", "attribute"].contains(unitFrom) { throw fail("ldap.unit_from", "must be tree or attribute (got '\(unitFrom)')") }
            if unitFrom == "tree", unitBase == nil { throw fail("ldap.unit_base", "is required with unit_from: tree") }
            if effectiveUserBases.isEmpty { throw fail("ldap.user_bases", "must name at least one subtree (or set unit_base)") }
            if !["content_sync", "timestamp"].contains(effectiveIncrementalMethod) {
                throw fail("ldap.incremental_method", "must be content_sync or timestamp (got '\(effectiveIncrementalMethod)')")
            }
            if !(100...600_000).contains(timeoutMs) { throw fail("ldap.timeout_ms", "must be between 100 and 600000 (got \(timeoutMs))") }
            if !(1...10_000).contains(pageSize) { throw fail("ldap.page_size", "must be between 1 and 10000 (got \(pageSize))") }
            if !(0...100).contains(maxDisablePercent) {
                throw fail("ldap.max_disable_percent", "must be between 0 and 100 (got \(maxDisablePercent))")
            }
            if syncIntervalMinutes < 0 { throw fail("ldap.sync_interval_minutes", "must be 0 (off) or more") }
            if incrementalIntervalSeconds < 0 { throw fail("ldap.incremental_interval_seconds", "must be 0 (off) or more") }
            if bindPassword != nil, bindPasswordFile != nil {
                throw fail("ldap.bind_password", "and bind_password_file exclude each other")
            }
            if bindDN == nil, bindPassword != nil || bindPasswordFile != nil {
                throw fail("ldap.bind_dn", "is required with a bind password")
            }
        }
    }
}
