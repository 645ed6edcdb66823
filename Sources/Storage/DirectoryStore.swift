/// The organisation directory: a tree of units, the people in it, their memberships and roles.
///
/// Every write is a batch of `DirectoryChange`s applied in one transaction that bumps one
/// global version; readers (the running server, the tree IQ) compare versions to see what moved.

/// A department, team or any other node of the organisation tree.
public struct OrgUnit: Sendable, Hashable, Codable {
    /// Stable identifier (never reused, survives renames and moves).
    public var id: String
    /// nil for a top-level unit.
    public var parentID: String?
    public var name: String
    /// Order among siblings, ascending.
    public var position: Int
    public var description: String?
    /// Shown in every employee's roster (e.g. the board, the help desk).
    public var alwaysVisible: Bool
    /// Where the unit comes from: "local", or "ldap" for units the directory sync owns.
    public var source: String
    /// The source's own identifier (LDAP entryUUID / objectGUID), for matching across renames.
    public var externalID: String?
    /// The entry's DN in the source directory (normalised), for placing entries below it.
    public var externalDN: String?
    /// The version that last changed this unit (set by the store).
    public var version: Int64

    public init(
        id: String, parentID: String? = nil, name: String, position: Int = 0, description: String? = nil,
        alwaysVisible: Bool = false, source: String = "local", externalID: String? = nil, externalDN: String? = nil,
        version: Int64 = 0
    ) {
        self.externalDN = externalDN
        self.id = id
        self.parentID = parentID
        self.name = name
        self.position = position
        self.description = description
        self.alwaysVisible = alwaysVisible
        self.source = source
        self.externalID = externalID
        self.version = version
    }
}

public enum UserStatus: String, Sendable, Hashable, Codable {
    case active, disabled
}

/// An employee. `username` is the account's localpart; the store keeps the account's
/// `disabled` flag equal to `status`.
public struct DirectoryUser: Sendable, Hashable, Codable {
    public var username: String
    public var displayName: String
    public var title: String?
    public var employeeNumber: String?
    public var emails: [String]
    public var phones: [String]
    public var mobile: String?
    public var status: UserStatus
    /// "local" (password kept here, SCRAM) or "ldap" (authenticated by LDAP bind, kept in sync; an
    /// account taken over by the sync loses its local password).
    public var source: String
    public var externalID: String?
    /// The entry's DN in the source directory, for LDAP bind.
    public var externalDN: String?
    public var version: Int64

    public init(
        username: String, displayName: String, title: String? = nil, employeeNumber: String? = nil, emails: [String] = [],
        phones: [String] = [], mobile: String? = nil, status: UserStatus = .active, source: String = "local",
        externalID: String? = nil, externalDN: String? = nil, version: Int64 = 0
    ) {
        self.username = username
        self.displayName = displayName
        self.title = title
        self.employeeNumber = employeeNumber
        self.emails = emails
        self.phones = phones
        self.mobile = mobile
        self.status = status
        self.source = source
        self.externalID = externalID
        self.externalDN = externalDN
        self.version = version
    }
}

/// A user's seat in a unit; a user has at most one primary membership.
public struct Membership: Sendable, Hashable, Codable {
    public var username: String
    public var unitID: String
    public var isPrimary: Bool
    /// Position held in this unit (may differ from the user's main title).
    public var title: String?

    public init(username: String, unitID: String, isPrimary: Bool = false, title: String? = nil) {
        self.username = username
        self.unitID = unitID
        self.isPrimary = isPrimary
        self.title = title
    }
}

/// A named set of permissions (admin, auditor, approver, sms-sender …).
public struct Role: Sendable, Hashable, Codable {
    public var name: String
    public var permissions: [String]
    public var description: String?

    public init(name: String, permissions: [String], description: String? = nil) {
        self.name = name
        self.permissions = permissions
        self.description = description
    }
}

/// Everything in the directory at one version.
public struct DirectoryData: Sendable {
    public var version: Int64
    public var units: [OrgUnit]
    public var users: [DirectoryUser]
    public var memberships: [Membership]
    public var roles: [Role]
    /// (username, role name)
    public var grants: [RoleGrant]

    public init(
        version: Int64 = 0, units: [OrgUnit] = [], users: [DirectoryUser] = [], memberships: [Membership] = [],
        roles: [Role] = [], grants: [RoleGrant] = []
    ) {
        self.version = version
        self.units = units
        self.users = users
        self.memberships = memberships
        self.roles = roles
        self.grants = grants
    }
}

public struct RoleGrant: Sendable, Hashable, Codable {
    public var username: String
    public var role: String

    public init(username: String, role: String) {
        self.username = username
        self.role = role
    }
}

/// One write to the directory. A batch is atomic.
public enum DirectoryChange: Sendable, Hashable {
    case putUnit(OrgUnit)
    /// Refused (conflict) while the unit has members or child units.
    case deleteUnit(id: String)
    /// Creates the account too when there is none (without local credentials).
    case putUser(DirectoryUser)
    /// Deletes the user, their memberships, grants and account with everything stored for it.
    case deleteUser(username: String)
    case putMembership(Membership)
    case deleteMembership(username: String, unitID: String)
    case putRole(Role)
    case deleteRole(name: String)
    case grantRole(RoleGrant)
    case revokeRole(RoleGrant)
    /// Small state of the directory's owners (e.g. the LDAP sync cookie), versioned with the data.
    case setState(key: String, value: String?)
    /// Fails the batch (conflict) unless the directory is still at this version: for writers that
    /// planned from a snapshot (the directory sync) and must not overwrite a newer change.
    case requireVersion(Int64)
}

/// What changed under one parent since a version: ids to re-read (still there) or drop (gone).
public struct DirectoryLogEntry: Sendable, Hashable {
    public enum Kind: String, Sendable { case unit, member }
    public var kind: Kind
    public var id: String

    public init(kind: Kind, id: String) {
        self.kind = kind
        self.id = id
    }
}

/// A record of one directory synchronisation run.
public struct SyncRun: Sendable, Hashable, Codable {
    public var id: Int64
    public var startedAt: Double
    public var finishedAt: Double
    /// "full", "incremental", "dry-run" …
    public var mode: String
    /// "ok", "aborted", "refused" …
    public var outcome: String
    public var added: Int
    public var updated: Int
    public var moved: Int
    public var disabled: Int
    public var errors: Int
    public var message: String

    public init(
        id: Int64 = 0, startedAt: Double, finishedAt: Double, mode: String, outcome: String, added: Int = 0, updated: Int = 0,
        moved: Int = 0, disabled: Int = 0, errors: Int = 0, message: String = ""
    ) {
        self.id = id
        self.startedAt = startedAt
        self.finishedAt = finishedAt
        self.mode = mode
        self.outcome = outcome
        self.added = added
        self.updated = updated
        self.moved = moved
        self.disabled = disabled
        self.errors = errors
        self.message = message
    }
}

public protocol DirectoryStore: Sendable {
    /// The current version (0 for an empty directory). Cheap: the server polls it.
    func directoryVersion() async throws -> Int64
    /// Everything, for the in-memory snapshot.
    func loadDirectory() async throws -> DirectoryData
    /// Applies the batch in one transaction and returns the new version; on error nothing changed.
    /// An empty batch changes nothing and returns the current version.
    @discardableResult
    func applyDirectoryChanges(_ changes: [DirectoryChange]) async throws -> Int64
    /// Units and members under `parent` (nil = top level) touched after `version`.
    func directoryLog(parent: String?, since version: Int64) async throws -> [DirectoryLogEntry]
    /// The oldest version the log can answer from (older clients must reload).
    func directoryLogHorizon() async throws -> Int64
    func directoryState(_ key: String) async throws -> String?
    func recordSyncRun(_ run: SyncRun) async throws
    func syncRuns(limit: Int) async throws -> [SyncRun]
}
