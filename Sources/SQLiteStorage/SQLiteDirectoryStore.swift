import Foundation
import Storage

extension SQLiteStores: DirectoryStore {
    public func directoryVersion() async throws -> Int64 {
        try await database.run { db in try Self.stateInt(db, "version") }
    }

    public func loadDirectory() async throws -> DirectoryData {
        try await database.transaction { db in
            var data = DirectoryData(version: try Self.stateInt(db, "version"))
            data.units = try db.query(
                "SELECT id, parent, name, position, description, always_visible, source, external_id, version, external_dn FROM org_units"
            ) { Self.unit($0) }
            // Columns, not JSON: 50,000 users load in tens of milliseconds.
            data.users = try db.query(
                """
                SELECT username, display_name, title, employee_number, emails, phones, mobile, status, source, external_id,
                    external_dn, version FROM directory_users
                """
            ) { row in
                DirectoryUser(
                    username: row.text(0) ?? "", displayName: row.text(1) ?? "", title: row.text(2), employeeNumber: row.text(3),
                    emails: Self.lines(row.text(4)), phones: Self.lines(row.text(5)), mobile: row.text(6),
                    status: UserStatus(rawValue: row.text(7) ?? "") ?? .disabled, source: row.text(8) ?? "local",
                    externalID: row.text(9), externalDN: row.text(10), version: row.int(11))
            }
            data.memberships = try db.query("SELECT username, unit, is_primary, title FROM memberships") {
                Membership(username: $0.text(0) ?? "", unitID: $0.text(1) ?? "", isPrimary: $0.int(2) != 0, title: $0.text(3))
            }
            data.roles = try db.query("SELECT name, permissions, description FROM roles ORDER BY name") {
                Role(name: $0.text(0) ?? "", permissions: Self.split($0.text(1)), description: $0.text(2))
            }
            data.grants = try db.query("SELECT username, role FROM role_grants ORDER BY username, role") {
                RoleGrant(username: $0.text(0) ?? "", role: $0.text(1) ?? "")
            }
            return data
        }
    }

    public func applyDirectoryChanges(_ changes: [DirectoryChange]) async throws -> Int64 {
        try await database.transaction { db in
            let current = try Self.stateInt(db, "version")
            guard !changes.isEmpty else { return current }
            // Bookkeeping alone (a sync cookie that moved) is not a new directory version:
            // clients' roster versions stay valid.
            let changesData = changes.contains {
                switch $0 {
                case .setState, .requireVersion: return false
                default: return true
                }
            }
            let version = changesData ? current + 1 : current
            var log = Set<[String]>()
            for change in changes {
                if case .requireVersion(let expected) = change, expected != current {
                    throw StorageError.conflict("the directory changed while this run was planned (version \(expected) → \(current)); run it again")
                }
                try Self.apply(change, version: version, db: db, log: &log)
            }
            for entry in log {
                try db.run(
                    "INSERT INTO directory_log (version, parent, kind, id) VALUES (?, ?, ?, ?)",
                    [.int(version), .text(entry[0]), .text(entry[1]), .text(entry[2])])
            }
            if changesData { try Self.setState(db, "version", String(version)) }
            return version
        }
    }

    public func directoryLog(parent: String?, since version: Int64) async throws -> [DirectoryLogEntry] {
        try await database.run { db in
            try db.query(
                "SELECT DISTINCT kind, id FROM directory_log WHERE parent = ? AND version > ? ORDER BY kind, id",
                [.text(parent ?? ""), .int(version)]
            ) { DirectoryLogEntry(kind: DirectoryLogEntry.Kind(rawValue: $0.text(0) ?? "") ?? .member, id: $0.text(1) ?? "") }
        }
    }

    public func directoryLogHorizon() async throws -> Int64 {
        try await database.run { db in try Self.stateInt(db, "log_horizon") }
    }

    public func directoryState(_ key: String) async throws -> String? {
        try await database.run { db in
            try db.query("SELECT value FROM directory_state WHERE key = ?", [.text("x." + key)]) { $0.text(0) }.first ?? nil
        }
    }

    public func recordSyncRun(_ run: SyncRun) async throws {
        let blob = try encode(run)
        try await database.run { db in
            try db.run("INSERT INTO sync_runs (record) VALUES (?)", [.blob(blob)])
            // Keep a year of hourly runs.
            try db.run("DELETE FROM sync_runs WHERE id <= (SELECT max(id) FROM sync_runs) - 10000")
        }
    }

    public func syncRuns(limit: Int) async throws -> [SyncRun] {
        try await database.run { db in
            try db.query("SELECT id, record FROM sync_runs ORDER BY id DESC LIMIT ?", [.int(Int64(limit))]) { row in
                var run = try decode(SyncRun.self, row.blob(1))
                run.id = row.int(0)
                return run
            }
        }
    }

    // MARK: - Inside a transaction

    private static func unit(_ row: Statement) -> OrgUnit {
        OrgUnit(
            id: row.text(0) ?? "", parentID: row.text(1), name: row.text(2) ?? "", position: Int(row.int(3)),
            description: row.text(4), alwaysVisible: row.int(5) != 0, source: row.text(6) ?? "local",
            externalID: row.text(7), externalDN: row.text(9), version: row.int(8))
    }

    /// Lists (emails, phones) as newline-separated text; values never hold a newline.
    private static func lines(_ text: String?) -> [String] {
        (text ?? "").split(separator: "\n").map(String.init)
    }

    private static func joinLines(_ values: [String]) -> String {
        values.map { $0.replacingOccurrences(of: "\n", with: " ").replacingOccurrences(of: "\r", with: " ") }.filter { !$0.isEmpty }
            .joined(separator: "\n")
    }

    private static func split(_ text: String?) -> [String] {
        (text ?? "").split(separator: ",").map(String.init)
    }

    static func stateInt(_ db: Connection, _ key: String) throws -> Int64 {
        Int64(try db.query("SELECT value FROM directory_state WHERE key = ?", [.text(key)]) { $0.text(0) }.first.flatMap { $0 } ?? "0")
            ?? 0
    }

    private static func setState(_ db: Connection, _ key: String, _ value: String?) throws {
        if let value {
            try db.run(
                "INSERT INTO directory_state (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [.text(key), .text(value)])
        } else {
            try db.run("DELETE FROM directory_state WHERE key = ?", [.text(key)])
        }
    }

    private static func unitParent(_ db: Connection, _ id: String) throws -> String?? {
        try db.query("SELECT parent FROM org_units WHERE id = ?", [.text(id)]) { $0.text(0) }.first
    }

    private static func unitsOf(_ db: Connection, _ username: String) throws -> [String] {
        try db.query("SELECT unit FROM memberships WHERE username = ?", [.text(username)]) { $0.text(0) ?? "" }
    }

    private static func userExists(_ db: Connection, _ username: String) throws -> Bool {
        try !db.query("SELECT 1 FROM directory_users WHERE username = ?", [.text(username)]) { _ in true }.isEmpty
    }

    /// Removes a user from the directory (memberships, grants), logging it; the account stays.
    static func removeFromDirectory(_ username: String, _ db: Connection) throws {
        guard try userExists(db, username) else { return }
        let version = try stateInt(db, "version") + 1
        var log = Set<[String]>()
        try removeUser(username, db: db, log: &log)
        for entry in log {
            try db.run(
                "INSERT INTO directory_log (version, parent, kind, id) VALUES (?, ?, ?, ?)",
                [.int(version), .text(entry[0]), .text(entry[1]), .text(entry[2])])
        }
        try setState(db, "version", String(version))
    }

    private static func removeUser(_ username: String, db: Connection, log: inout Set<[String]>) throws {
        for unit in try unitsOf(db, username) { log.insert([unit, "member", username]) }
        try db.run("DELETE FROM memberships WHERE username = ?", [.text(username)])
        try db.run("DELETE FROM role_grants WHERE username = ?", [.text(username)])
        try db.run("DELETE FROM directory_users WHERE username = ?", [.text(username)])
    }

    private static func apply(_ change: DirectoryChange, version: Int64, db: Connection, log: inout Set<[String]>) throws {
        switch change {
        case .putUnit(let unit):
            if let parent = unit.parentID {
                guard parent != unit.id else { throw StorageError.conflict("unit \(unit.id) cannot be its own parent") }
                guard try unitParent(db, parent) != nil else { throw StorageError.conflict("no unit \(parent)") }
            }
            if let old = try unitParent(db, unit.id) { log.insert([old ?? "", "unit", unit.id]) }
            log.insert([unit.parentID ?? "", "unit", unit.id])
            try db.run(
                """
                INSERT INTO org_units (id, parent, name, position, description, always_visible, source, external_id, version, external_dn)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT (id) DO UPDATE SET parent = excluded.parent, name = excluded.name, position = excluded.position,
                    description = excluded.description, always_visible = excluded.always_visible, source = excluded.source,
                    external_id = excluded.external_id, version = excluded.version, external_dn = excluded.external_dn
                """,
                [
                    .text(unit.id), .optional(unit.parentID), .text(unit.name), .int(Int64(unit.position)),
                    .optional(unit.description), .int(unit.alwaysVisible ? 1 : 0), .text(unit.source),
                    .optional(unit.externalID), .int(version), .optional(unit.externalDN),
                ])
        case .deleteUnit(let id):
            guard let parent = try unitParent(db, id) else { return }
            let members = try db.query("SELECT count(*) FROM memberships WHERE unit = ?", [.text(id)]) { $0.int(0) }.first ?? 0
            if members > 0 {
                throw StorageError.conflict("unit \(id) still has \(members) member(s); move or remove them first")
            }
            let children = try db.query("SELECT count(*) FROM org_units WHERE parent = ?", [.text(id)]) { $0.int(0) }.first ?? 0
            if children > 0 {
                throw StorageError.conflict("unit \(id) still has \(children) child unit(s); move or delete them first")
            }
            try db.run("DELETE FROM org_units WHERE id = ?", [.text(id)])
            log.insert([parent ?? "", "unit", id])
        case .putUser(let user):
            try db.run(
                """
                INSERT INTO directory_users (username, display_name, title, employee_number, emails, phones, mobile, status, source,
                    external_id, external_dn, version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT (username) DO UPDATE SET display_name = excluded.display_name, title = excluded.title,
                    employee_number = excluded.employee_number, emails = excluded.emails, phones = excluded.phones,
                    mobile = excluded.mobile, status = excluded.status, source = excluded.source, external_id = excluded.external_id,
                    external_dn = excluded.external_dn, version = excluded.version
                """,
                [
                    .text(user.username), .text(user.displayName), .optional(user.title), .optional(user.employeeNumber),
                    .text(Self.joinLines(user.emails)), .text(Self.joinLines(user.phones)), .optional(user.mobile),
                    .text(user.status.rawValue), .text(user.source), .optional(user.externalID), .optional(user.externalDN),
                    .int(version),
                ])
            try db.run(
                """
                INSERT INTO accounts (username, credentials, disabled, created_at) VALUES (?, x'', ?, ?)
                ON CONFLICT (username) DO UPDATE SET disabled = excluded.disabled,
                    credentials = CASE WHEN ?4 = 'ldap' THEN x'' ELSE credentials END
                """,
                [.text(user.username), .int(user.status == .disabled ? 1 : 0), .double(Date().timeIntervalSince1970), .text(user.source)])
            for unit in try unitsOf(db, user.username) { log.insert([unit, "member", user.username]) }
        case .deleteUser(let username):
            try removeUser(username, db: db, log: &log)
            _ = try deleteAccount(username, db)
        case .putMembership(let membership):
            guard try unitParent(db, membership.unitID) != nil else {
                throw StorageError.conflict("no unit \(membership.unitID)")
            }
            guard try userExists(db, membership.username) else {
                throw StorageError.conflict("no directory user \(membership.username)")
            }
            if membership.isPrimary {
                try db.run(
                    "UPDATE memberships SET is_primary = 0 WHERE username = ? AND unit <> ? AND is_primary = 1",
                    [.text(membership.username), .text(membership.unitID)])
            }
            try db.run(
                """
                INSERT INTO memberships (username, unit, is_primary, title) VALUES (?, ?, ?, ?)
                ON CONFLICT (username, unit) DO UPDATE SET is_primary = excluded.is_primary, title = excluded.title
                """,
                [.text(membership.username), .text(membership.unitID), .int(membership.isPrimary ? 1 : 0), .optional(membership.title)])
            for unit in try unitsOf(db, membership.username) { log.insert([unit, "member", membership.username]) }
        case .deleteMembership(let username, let unitID):
            if try db.run("DELETE FROM memberships WHERE username = ? AND unit = ?", [.text(username), .text(unitID)]) > 0 {
                log.insert([unitID, "member", username])
            }
        case .putRole(let role):
            try db.run(
                """
                INSERT INTO roles (name, permissions, description) VALUES (?, ?, ?)
                ON CONFLICT (name) DO UPDATE SET permissions = excluded.permissions, description = excluded.description
                """,
                [.text(role.name), .text(role.permissions.joined(separator: ",")), .optional(role.description)])
        case .deleteRole(let name):
            let holders = try db.query("SELECT count(*) FROM role_grants WHERE role = ?", [.text(name)]) { $0.int(0) }.first ?? 0
            if holders > 0 { throw StorageError.conflict("role \(name) is still granted to \(holders) user(s)") }
            try db.run("DELETE FROM roles WHERE name = ?", [.text(name)])
        case .grantRole(let grant):
            guard try !db.query("SELECT 1 FROM roles WHERE name = ?", [.text(grant.role)], { _ in true }).isEmpty else {
                throw StorageError.conflict("no role \(grant.role)")
            }
            guard try userExists(db, grant.username) else { throw StorageError.conflict("no directory user \(grant.username)") }
            try db.run(
                "INSERT INTO role_grants (username, role) VALUES (?, ?) ON CONFLICT DO NOTHING",
                [.text(grant.username), .text(grant.role)])
        case .revokeRole(let grant):
            try db.run("DELETE FROM role_grants WHERE username = ? AND role = ?", [.text(grant.username), .text(grant.role)])
        case .setState(let key, let value):
            try setState(db, "x." + key, value)
        case .requireVersion:
            break
        }
    }
}
