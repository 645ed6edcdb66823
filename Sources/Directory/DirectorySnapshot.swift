import Storage

/// The whole directory at one version, indexed for the questions the server asks on the hot
/// path: who is in my roster, who sees my presence, what is this unit's path, who matches "zw".
///
/// Immutable and shared: the running server swaps in a new snapshot when the version moves.
public final class DirectorySnapshot: Sendable {
    public let version: Int64
    public let units: [String: OrgUnit]
    public let users: [String: DirectoryUser]
    /// Child unit ids per parent id ("" for the top level), in display order.
    public let children: [String: [String]]
    /// Memberships per username.
    public let membershipsByUser: [String: [Membership]]
    /// Member usernames per unit id, in display order (primary members first, then by name).
    public let membersByUnit: [String: [String]]
    public let roles: [String: Role]
    public let rolesByUser: [String: Set<String>]
    /// Units shown in every employee's roster.
    public let alwaysVisibleUnits: [String]
    /// Full paths ("研发中心/平台部/存储组") per unit id.
    public let paths: [String: String]
    public let search: DirectorySearchIndex
    public let separator: String

    public static let empty = DirectorySnapshot(DirectoryData())

    /// - Parameter searchable: build the search index (the server needs it; the sync does not).
    public init(_ data: DirectoryData, separator: String = "/", searchable: Bool = true) {
        version = data.version
        self.separator = separator
        var units: [String: OrgUnit] = [:]
        for unit in data.units { units[unit.id] = unit }
        self.units = units
        var users: [String: DirectoryUser] = [:]
        for user in data.users { users[user.username] = user }
        self.users = users

        var children: [String: [OrgUnit]] = [:]
        for unit in data.units {
            // A parent that no longer exists would orphan the subtree: show it at the top.
            let parent = unit.parentID.flatMap { units[$0] == nil ? nil : $0 } ?? ""
            children[parent, default: []].append(unit)
        }
        self.children = children.mapValues { siblings in
            siblings.sorted { ($0.position, $0.name, $0.id) < ($1.position, $1.name, $1.id) }.map(\.id)
        }

        var byUser: [String: [Membership]] = [:]
        var byUnit: [String: [Membership]] = [:]
        for membership in data.memberships where users[membership.username] != nil && units[membership.unitID] != nil {
            byUser[membership.username, default: []].append(membership)
            byUnit[membership.unitID, default: []].append(membership)
        }
        membershipsByUser = byUser.mapValues { $0.sorted { ($0.isPrimary ? 0 : 1, $0.unitID) < ($1.isPrimary ? 0 : 1, $1.unitID) } }
        // Sort keys computed once per member (not per comparison: 50,000 users copy structs otherwise).
        membersByUnit = byUnit.mapValues { members in
            members.map { (users[$0.username]?.displayName ?? $0.username, $0.username) }
                .sorted { $0 < $1 }
                .map(\.1)
        }
        var roles: [String: Role] = [:]
        for role in data.roles { roles[role.name] = role }
        self.roles = roles
        var rolesByUser: [String: Set<String>] = [:]
        for grant in data.grants { rolesByUser[grant.username, default: []].insert(grant.role) }
        self.rolesByUser = rolesByUser
        alwaysVisibleUnits = data.units.filter(\.alwaysVisible).map(\.id).sorted()

        var paths: [String: String] = [:]
        func path(_ id: String, depth: Int) -> String {
            if let known = paths[id] { return known }
            guard let unit = units[id] else { return "" }
            // Depth bound: a cycle written behind our back must not hang the server.
            let result: String
            if let parent = unit.parentID, units[parent] != nil, depth < 64 {
                result = path(parent, depth: depth + 1) + separator + unit.name
            } else {
                result = unit.name
            }
            paths[id] = result
            return result
        }
        for id in units.keys { _ = path(id, depth: 0) }
        self.paths = paths
        search = searchable
            ? DirectorySearchIndex(users: data.users, memberships: byUser, paths: paths)
            : DirectorySearchIndex(users: [], memberships: [:], paths: [:])
    }

    // MARK: - Questions

    public func isActive(_ username: String) -> Bool { users[username]?.status == .active }

    /// Whether `unit` is `ancestor` or lies below it.
    public func isDescendant(_ unit: String, of ancestor: String) -> Bool {
        var current: String? = unit
        var steps = 0
        while let id = current, steps < 64 {
            if id == ancestor { return true }
            current = units[id]?.parentID
            steps += 1
        }
        return false
    }

    /// The units whose members appear in `username`'s roster: their own and the always-visible ones.
    public func rosterUnits(of username: String) -> [String] {
        guard isActive(username) else { return [] }
        var result = (membershipsByUser[username] ?? []).map(\.unitID)
        for unit in alwaysVisibleUnits where !result.contains(unit) { result.append(unit) }
        return result
    }

    /// Directory contacts of a user: username → roster groups (unit paths). Active users only.
    public func contacts(of username: String) -> [String: [String]] {
        var result: [String: [String]] = [:]
        for unit in rosterUnits(of: username) {
            guard let group = paths[unit] else { continue }
            for member in membersByUnit[unit] ?? [] where member != username && isActive(member) {
                result[member, default: []].append(group)
            }
        }
        return result
    }

    /// Who has `username` in their roster: everyone when the user sits in an always-visible unit.
    public enum Viewers: Sendable {
        case everyone
        case users(Set<String>)
    }

    public func viewers(of username: String) -> Viewers {
        guard isActive(username) else { return .users([]) }
        let units = (membershipsByUser[username] ?? []).map(\.unitID)
        if units.contains(where: { self.units[$0]?.alwaysVisible == true }) { return .everyone }
        var result = Set<String>()
        for unit in units {
            for member in membersByUnit[unit] ?? [] where member != username && isActive(member) { result.insert(member) }
        }
        return .users(result)
    }

    /// Whether `viewer` has `username` in their directory roster.
    public func sees(_ viewer: String, _ username: String) -> Bool {
        guard viewer != username, isActive(viewer), isActive(username) else { return false }
        let units = Set((membershipsByUser[username] ?? []).map(\.unitID))
        return rosterUnits(of: viewer).contains(where: units.contains)
    }

    public func primaryUnit(of username: String) -> String? {
        membershipsByUser[username]?.first(where: \.isPrimary)?.unitID ?? membershipsByUser[username]?.first?.unitID
    }

    public func permissions(of username: String) -> Set<String> {
        var result = Set<String>()
        for role in rolesByUser[username] ?? [] { result.formUnion(roles[role]?.permissions ?? []) }
        return result
    }

    /// Resolves a unit reference: an id, or a path of names ("研发中心/平台部").
    public func unit(_ reference: String) -> OrgUnit? {
        if let unit = units[reference] { return unit }
        let names = reference.split(separator: Character(separator), omittingEmptySubsequences: true).map(String.init)
        guard !names.isEmpty else { return nil }
        var parent = ""
        var found: OrgUnit?
        for name in names {
            guard let match = (children[parent] ?? []).compactMap({ units[$0] }).first(where: { $0.name == name }) else { return nil }
            found = match
            parent = match.id
        }
        return found
    }

    /// Number of direct members of a unit.
    public func memberCount(_ unit: String) -> Int {
        (membersByUnit[unit]?.count ?? 0)
    }
}
