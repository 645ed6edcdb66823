import Foundation
import Storage
import XMPPCore

/// A directory operation that cannot be done, worded for the administrator.
public struct DirectoryError: Error, CustomStringConvertible, Sendable, Hashable {
    public enum Kind: Sendable, Hashable { case notFound, conflict, invalid }
    public let kind: Kind
    public let description: String

    public static func notFound(_ message: String) -> DirectoryError { DirectoryError(kind: .notFound, description: message) }
    public static func conflict(_ message: String) -> DirectoryError { DirectoryError(kind: .conflict, description: message) }
    public static func invalid(_ message: String) -> DirectoryError { DirectoryError(kind: .invalid, description: message) }
}

/// The directory's rules, shared by the CLI, the running server and the directory sync:
/// validation, id generation, ordering, and one atomic batch per operation.
public struct DirectoryService: Sendable {
    public let store: any DirectoryStore
    public let accounts: any AccountStore
    public let separator: String
    /// Called after every successful write with the new version (the server refreshes at once).
    public var didChange: (@Sendable (Int64) async -> Void)?
    /// Called with every applied batch (the audit trail records administrative changes).
    public var recorder: (@Sendable ([DirectoryChange]) async -> Void)?
    /// Called before a batch is applied (the server stores the messages it still holds for
    /// users about to be deleted, so that they are deleted with the rest).
    public var beforeApply: (@Sendable ([DirectoryChange]) async -> Void)?

    public init(store: any DirectoryStore, accounts: any AccountStore, separator: String = "/") {
        self.store = store
        self.accounts = accounts
        self.separator = separator
    }

    /// Whether a batch deletes a user.
    public static func deletesUsers(_ changes: [DirectoryChange]) -> Bool {
        changes.contains { if case .deleteUser = $0 { true } else { false } }
    }

    public func currentSnapshot(searchable: Bool = true) async throws -> DirectorySnapshot {
        DirectorySnapshot(try await store.loadDirectory(), separator: separator, searchable: searchable)
    }

    /// Applies a batch, translating store conflicts into directory errors.
    @discardableResult
    public func apply(_ changes: [DirectoryChange]) async throws -> Int64 {
        let version: Int64
        if !changes.isEmpty { await beforeApply?(changes) }
        do {
            version = try await store.applyDirectoryChanges(changes)
        } catch let error as StorageError where error.isConflict {
            throw DirectoryError.conflict(error.message)
        }
        if !changes.isEmpty {
            await recorder?(changes)
            await didChange?(version)  // the callback ignores an unchanged version
        }
        return version
    }

    // MARK: - Units

    public static func newUnitID() -> String {
        let alphabet = Array("abcdefghijkmnpqrstuvwxyz23456789")
        var generator = SystemRandomNumberGenerator()
        return "u" + String((0..<9).map { _ in alphabet[Int.random(in: 0..<alphabet.count, using: &generator)] })
    }

    public static func validateName(_ name: String, what: String) throws -> String {
        let trimmed = name.trimmingWhitespace()
        guard !trimmed.isEmpty else { throw DirectoryError.invalid("\(what) must not be empty") }
        guard trimmed.utf8.count <= 256 else { throw DirectoryError.invalid("\(what) is longer than 256 bytes") }
        guard !trimmed.unicodeScalars.contains(where: { $0.properties.generalCategory == .control }) else {
            throw DirectoryError.invalid("\(what) contains control characters")
        }
        return trimmed
    }

    public func unit(_ reference: String, in snapshot: DirectorySnapshot) throws -> OrgUnit {
        guard let unit = snapshot.unit(reference) else { throw DirectoryError.notFound("no unit '\(reference)' (give an id or a path such as A\(separator)B)") }
        return unit
    }

    /// Creates a unit under `parent` (a reference; nil = top level) at `position` (nil = last).
    @discardableResult
    public func createUnit(
        name: String, parent: String? = nil, position: Int? = nil, id: String? = nil, description: String? = nil,
        alwaysVisible: Bool = false
    ) async throws -> OrgUnit {
        let name = try Self.validateName(name, what: "a unit name")
        if name.contains(separator) { throw DirectoryError.invalid("a unit name must not contain '\(separator)'") }
        let snapshot = try await currentSnapshot()
        let parentID = try parent.map { try self.unit($0, in: snapshot).id }
        let unitID = try id.map { try Self.validateID($0) } ?? Self.newUnitID()
        if snapshot.units[unitID] != nil { throw DirectoryError.conflict("a unit with id '\(unitID)' exists") }
        let siblings = snapshot.children[parentID ?? ""] ?? []
        if siblings.contains(where: { snapshot.units[$0]?.name == name }) {
            throw DirectoryError.conflict("'\(name)' already exists there")
        }
        let unit = OrgUnit(id: unitID, parentID: parentID, name: name, description: description, alwaysVisible: alwaysVisible)
        try await apply(Self.placing(unit, at: position, among: siblings, snapshot))
        return unit
    }

    static func validateID(_ id: String) throws -> String {
        guard !id.isEmpty, id.utf8.count <= 64,
            id.unicodeScalars.allSatisfy({ $0.isASCII && ($0.properties.isAlphabetic || ("0"..."9").contains($0) || "-_.".unicodeScalars.contains($0)) })
        else { throw DirectoryError.invalid("a unit id is 1–64 ASCII letters, digits, '-', '_' or '.' (got '\(id)')") }
        return id
    }

    /// Puts `unit` at `position` among `siblings` (ids, in order, possibly including it) and
    /// renumbers them 0, 1, 2 … so the order is explicit and stable.
    static func placing(_ unit: OrgUnit, at position: Int?, among siblings: [String], _ snapshot: DirectorySnapshot) -> [DirectoryChange] {
        var order = siblings.filter { $0 != unit.id }
        let index = min(max(0, position ?? order.count), order.count)
        order.insert(unit.id, at: index)
        var changes: [DirectoryChange] = []
        for (offset, id) in order.enumerated() {
            if id == unit.id {
                var placed = unit
                placed.position = offset
                changes.append(.putUnit(placed))
            } else if var sibling = snapshot.units[id], sibling.position != offset {
                sibling.position = offset
                changes.append(.putUnit(sibling))
            }
        }
        return changes
    }

    public func renameUnit(_ reference: String, to name: String) async throws {
        let name = try Self.validateName(name, what: "a unit name")
        if name.contains(separator) { throw DirectoryError.invalid("a unit name must not contain '\(separator)'") }
        let snapshot = try await currentSnapshot()
        var unit = try self.unit(reference, in: snapshot)
        let siblings = snapshot.children[unit.parentID ?? ""] ?? []
        if siblings.contains(where: { $0 != unit.id && snapshot.units[$0]?.name == name }) {
            throw DirectoryError.conflict("'\(name)' already exists there")
        }
        unit.name = name
        try await apply([.putUnit(unit)])
    }

    /// Moves a unit (and its subtree) under `parent` (nil = top level) at `position` (nil = last).
    public func moveUnit(_ reference: String, to parent: String?, position: Int? = nil) async throws {
        let snapshot = try await currentSnapshot()
        var unit = try self.unit(reference, in: snapshot)
        let parentID = try parent.map { try self.unit($0, in: snapshot).id }
        if let parentID, snapshot.isDescendant(parentID, of: unit.id) {
            throw DirectoryError.conflict("cannot move '\(snapshot.paths[unit.id] ?? unit.id)' under itself")
        }
        let siblings = snapshot.children[parentID ?? ""] ?? []
        if siblings.contains(where: { $0 != unit.id && snapshot.units[$0]?.name == unit.name }) {
            throw DirectoryError.conflict("'\(unit.name)' already exists there")
        }
        let oldParent = unit.parentID
        unit.parentID = parentID
        var changes = Self.placing(unit, at: position, among: siblings, snapshot)
        if oldParent != parentID {
            // Close the gap left behind.
            let remaining = (snapshot.children[oldParent ?? ""] ?? []).filter { $0 != unit.id }
            for (offset, id) in remaining.enumerated() {
                if var sibling = snapshot.units[id], sibling.position != offset {
                    sibling.position = offset
                    changes.append(.putUnit(sibling))
                }
            }
        }
        try await apply(changes)
    }

    public func reorderUnit(_ reference: String, position: Int) async throws {
        let snapshot = try await currentSnapshot()
        let unit = try self.unit(reference, in: snapshot)
        try await apply(Self.placing(unit, at: position, among: snapshot.children[unit.parentID ?? ""] ?? [], snapshot))
    }

    public func updateUnit(_ reference: String, description: String?? = nil, alwaysVisible: Bool? = nil) async throws {
        let snapshot = try await currentSnapshot()
        var unit = try self.unit(reference, in: snapshot)
        if let description { unit.description = description }
        if let alwaysVisible { unit.alwaysVisible = alwaysVisible }
        try await apply([.putUnit(unit)])
    }

    /// Deletes an empty unit; a unit with members or child units is refused with a clear message.
    public func deleteUnit(_ reference: String) async throws {
        let snapshot = try await currentSnapshot()
        let unit = try self.unit(reference, in: snapshot)
        let path = snapshot.paths[unit.id] ?? unit.name
        if let members = snapshot.membersByUnit[unit.id], !members.isEmpty {
            throw DirectoryError.conflict(
                "unit '\(path)' still has \(members.count) member(s) (\(members.prefix(5).joined(separator: ", "))\(members.count > 5 ? " …" : "")); move or remove them first")
        }
        if let children = snapshot.children[unit.id], !children.isEmpty {
            throw DirectoryError.conflict("unit '\(path)' still has \(children.count) child unit(s); move or delete them first")
        }
        try await apply([.deleteUnit(id: unit.id)])
    }

    // MARK: - Users

    /// Normalises and checks a login name: it becomes the localpart of the user's address.
    public static func validateUsername(_ username: String) throws -> String {
        guard let jid = try? JID(localpart: username, domainpart: "example.com", resourcepart: nil),
            let local = jid.localpart, !local.isEmpty
        else { throw DirectoryError.invalid("'\(username)' is not a valid login name (it must be a valid XMPP localpart)") }
        return local
    }

    public func user(_ username: String, in snapshot: DirectorySnapshot) throws -> DirectoryUser {
        guard let user = snapshot.users[username] else { throw DirectoryError.notFound("no directory user '\(username)'") }
        return user
    }

    /// Adds a user to the directory (and the account, without a password unless `credentials`),
    /// optionally into `unit` as primary membership.
    public func createUser(_ user: DirectoryUser, credentials: StoredCredentials? = nil, unit reference: String? = nil, unitTitle: String? = nil) async throws {
        var user = user
        user.username = try Self.validateUsername(user.username)
        user.displayName = try Self.validateName(user.displayName, what: "a display name")
        let snapshot = try await currentSnapshot()
        if snapshot.users[user.username] != nil { throw DirectoryError.conflict("directory user '\(user.username)' exists") }
        let unitID = try reference.map { try self.unit($0, in: snapshot).id }
        if let credentials {
            if try await accounts.account(user.username) == nil {
                try await accounts.createAccount(
                    Account(username: user.username, credentials: credentials, disabled: user.status == .disabled, createdAt: Date().timeIntervalSince1970))
            } else {
                _ = try await accounts.setCredentials(user.username, credentials)
            }
        }
        var changes: [DirectoryChange] = [.putUser(user)]
        if let unitID { changes.append(.putMembership(Membership(username: user.username, unitID: unitID, isPrimary: true, title: unitTitle))) }
        try await apply(changes)
    }

    /// Changes a user's details with `body`; the login name cannot change.
    public func updateUser(_ username: String, _ body: (inout DirectoryUser) throws -> Void) async throws {
        let snapshot = try await currentSnapshot()
        var user = try self.user(username, in: snapshot)
        try body(&user)
        user.username = username
        user.displayName = try Self.validateName(user.displayName, what: "a display name")
        try await apply([.putUser(user)])
    }

    /// Disabling ends the user's sessions on the running server and refuses new logins.
    public func setStatus(_ username: String, _ status: UserStatus) async throws {
        try await updateUser(username) { $0.status = status }
    }

    public func deleteUser(_ username: String) async throws {
        let snapshot = try await currentSnapshot()
        _ = try self.user(username, in: snapshot)
        try await apply([.deleteUser(username: username)])
    }

    public func addMembership(_ username: String, unit reference: String, primary: Bool = false, title: String? = nil) async throws {
        let snapshot = try await currentSnapshot()
        _ = try self.user(username, in: snapshot)
        let unit = try self.unit(reference, in: snapshot)
        // The first membership is the primary one.
        let isPrimary = primary || (snapshot.membershipsByUser[username] ?? []).allSatisfy { $0.unitID == unit.id }
        try await apply([.putMembership(Membership(username: username, unitID: unit.id, isPrimary: isPrimary, title: title))])
    }

    public func removeMembership(_ username: String, unit reference: String) async throws {
        let snapshot = try await currentSnapshot()
        let unit = try self.unit(reference, in: snapshot)
        let memberships = snapshot.membershipsByUser[username] ?? []
        guard let removed = memberships.first(where: { $0.unitID == unit.id }) else {
            throw DirectoryError.notFound("'\(username)' is not a member of '\(snapshot.paths[unit.id] ?? unit.name)'")
        }
        var changes: [DirectoryChange] = [.deleteMembership(username: username, unitID: unit.id)]
        // Keep exactly one primary membership while any remain.
        if removed.isPrimary, var next = memberships.first(where: { $0.unitID != unit.id }) {
            next.isPrimary = true
            changes.append(.putMembership(next))
        }
        try await apply(changes)
    }

    // MARK: - Bulk import

    /// One row of a bulk import (HR export, CSV).
    public struct ImportRow: Sendable {
        public var user: DirectoryUser
        /// Unit path (created when missing), e.g. 研发中心/平台部.
        public var unitPath: String?
        public var credentials: StoredCredentials?

        public init(user: DirectoryUser, unitPath: String?, credentials: StoredCredentials?) {
            self.user = user
            self.unitPath = unitPath
            self.credentials = credentials
        }
    }

    /// Adds or updates many users in one transaction, creating their units by path; returns
    /// (created, updated). A row with an invalid name fails the whole import before anything changes.
    public func importUsers(_ rows: [ImportRow]) async throws -> (created: Int, updated: Int) {
        let snapshot = try await currentSnapshot(searchable: false)
        var changes: [DirectoryChange] = [.requireVersion(snapshot.version)]
        var unitsByPath: [String: String] = [:]
        for (id, path) in snapshot.paths { unitsByPath[path] = id }
        var newChildren: [String: Int] = [:]
        var created = 0
        var updated = 0
        for (index, row) in rows.enumerated() {
            var user = row.user
            do {
                user.username = try Self.validateUsername(user.username)
                user.displayName = try Self.validateName(user.displayName, what: "a display name")
            } catch let error as DirectoryError {
                throw DirectoryError.invalid("row \(index + 1): \(error.description)")
            }
            if let existing = snapshot.users[user.username] {
                user.version = existing.version
                if existing != user { changes.append(.putUser(user)); updated += 1 }
            } else {
                changes.append(.putUser(user))
                created += 1
            }
            if let path = row.unitPath?.trimmingWhitespace(), !path.isEmpty {
                var parent: String?
                var sofar = ""
                for name in path.split(separator: Character(separator)).map({ String($0).trimmingWhitespace() }) where !name.isEmpty {
                    sofar = sofar.isEmpty ? name : sofar + separator + name
                    if let id = unitsByPath[sofar] {
                        parent = id
                        continue
                    }
                    let id = Self.newUnitID()
                    let siblings = (snapshot.children[parent ?? ""]?.count ?? 0) + newChildren[parent ?? "", default: 0]
                    newChildren[parent ?? "", default: 0] += 1
                    changes.append(.putUnit(OrgUnit(id: id, parentID: parent, name: try Self.validateName(name, what: "a unit name"), position: siblings)))
                    unitsByPath[sofar] = id
                    parent = id
                }
                if let unit = parent, !(snapshot.membershipsByUser[user.username] ?? []).contains(where: { $0.unitID == unit }) {
                    let first = (snapshot.membershipsByUser[user.username] ?? []).isEmpty
                    changes.append(.putMembership(Membership(username: user.username, unitID: unit, isPrimary: first)))
                }
            }
        }
        // Accounts with passwords first (SCRAM keys), then the directory in one batch.
        for row in rows {
            guard let credentials = row.credentials, let username = try? Self.validateUsername(row.user.username) else { continue }
            if try await accounts.account(username) == nil {
                try await accounts.createAccount(
                    Account(username: username, credentials: credentials, disabled: row.user.status == .disabled, createdAt: Date().timeIntervalSince1970))
            } else {
                _ = try await accounts.setCredentials(username, credentials)
            }
        }
        try await apply(changes)
        return (created, updated)
    }

    // MARK: - Roles

    public func createRole(_ name: String, permissions: [String], description: String? = nil) async throws {
        let name = try Self.validateID(name)
        let snapshot = try await currentSnapshot()
        if snapshot.roles[name] != nil { throw DirectoryError.conflict("role '\(name)' exists") }
        try await apply([.putRole(Role(name: name, permissions: permissions, description: description))])
    }

    /// Roles one person may not combine (separation of duties): whoever reads messages must not
    /// approve their own access, administer the system, or manage keys and roles.
    public static let exclusiveRoles: [(String, String)] = [
        ("auditor", "approver"), ("auditor", "admin"), ("auditor", "security-admin"), ("approver", "security-admin"),
    ]

    public func grantRole(_ role: String, to username: String) async throws {
        let snapshot = try await currentSnapshot()
        _ = try self.user(username, in: snapshot)
        guard snapshot.roles[role] != nil else {
            throw DirectoryError.notFound("no role '\(role)' (known: \(snapshot.roles.keys.sorted().joined(separator: ", ")))")
        }
        let held = snapshot.rolesByUser[username] ?? []
        for (first, second) in Self.exclusiveRoles {
            let other = role == first ? second : (role == second ? first : nil)
            if let other, held.contains(other) {
                throw DirectoryError.conflict(
                    "'\(username)' holds \(other); \(role) and \(other) must be different people (separation of duties)")
            }
        }
        try await apply([.grantRole(RoleGrant(username: username, role: role))])
    }

    public func revokeRole(_ role: String, from username: String) async throws {
        let snapshot = try await currentSnapshot()
        guard snapshot.rolesByUser[username]?.contains(role) == true else {
            throw DirectoryError.notFound("'\(username)' does not hold role '\(role)'")
        }
        try await apply([.revokeRole(RoleGrant(username: username, role: role))])
    }
}
