import Directory
import Foundation
import LDAP
import Server
import Storage

/// Distinguished names compared the way directories compare them for our purposes:
/// components split on unescaped commas, spaces around them and around '=' dropped, ASCII
/// case folded. Works on UTF-8 bytes: a sync normalises every DN it reads (50,000+ per run).
enum DN {
    private static let comma = UInt8(ascii: ","), backslash = UInt8(ascii: "\\"), equals = UInt8(ascii: "=")
    private static let space = UInt8(ascii: " ")

    /// Byte ranges of the components (unescaped commas split; escapes kept as written).
    private static func componentRanges(_ bytes: [UInt8]) -> [Range<Int>] {
        var ranges: [Range<Int>] = []
        var start = 0
        var index = 0
        while index < bytes.count {
            if bytes[index] == backslash {
                index += 2
                continue
            }
            if bytes[index] == comma {
                ranges.append(start..<index)
                start = index + 1
            }
            index += 1
        }
        ranges.append(start..<min(index, bytes.count))
        return ranges.map { trim($0, bytes) }.filter { !$0.isEmpty }
    }

    private static func trim(_ range: Range<Int>, _ bytes: [UInt8]) -> Range<Int> {
        var lower = range.lowerBound
        var upper = range.upperBound
        while lower < upper, bytes[lower] == space { lower += 1 }
        // A trailing escaped space ("\\ ") is part of the value.
        while upper > lower, bytes[upper - 1] == space, !(upper - 2 >= lower && bytes[upper - 2] == backslash) { upper -= 1 }
        return lower..<upper
    }

    private static func lowercaseASCII(_ byte: UInt8) -> UInt8 {
        (65...90).contains(byte) ? byte + 32 : byte
    }

    static func components(_ dn: String) -> [String] {
        let bytes = Array(dn.utf8)
        return componentRanges(bytes).map { String(decoding: bytes[$0], as: UTF8.self) }
    }

    static func normalize(_ dn: String) -> String {
        let bytes = Array(dn.utf8)
        var output: [UInt8] = []
        output.reserveCapacity(bytes.count)
        for range in componentRanges(bytes) {
            if !output.isEmpty { output.append(comma) }
            guard let equalsIndex = bytes[range].firstIndex(of: equals) else {
                output.append(contentsOf: bytes[range].map(lowercaseASCII))
                continue
            }
            let type = trim(range.lowerBound..<equalsIndex, bytes)
            let value = trim((equalsIndex + 1)..<range.upperBound, bytes)
            output.append(contentsOf: bytes[type].map(lowercaseASCII))
            output.append(equals)
            output.append(contentsOf: bytes[value].map(lowercaseASCII))
        }
        return String(decoding: output, as: UTF8.self)
    }

    static func parent(_ dn: String) -> String {
        let normalized = normalize(dn)
        let bytes = Array(normalized.utf8)
        let ranges = componentRanges(bytes)
        guard ranges.count > 1 else { return "" }
        return String(decoding: bytes[ranges[1].lowerBound...], as: UTF8.self)
    }

    /// The value of the first RDN, unescaped ("ou=平台部,…" → "平台部").
    static func firstValue(_ dn: String) -> String {
        let bytes = Array(dn.utf8)
        guard let first = componentRanges(bytes).first, let equalsIndex = bytes[first].firstIndex(of: equals) else { return dn }
        let value = trim((equalsIndex + 1)..<first.upperBound, bytes)
        var output: [UInt8] = []
        var index = value.lowerBound
        while index < value.upperBound {
            let byte = bytes[index]
            if byte == backslash, index + 1 < value.upperBound {
                // \XX hex pair or an escaped character.
                if index + 2 < value.upperBound, let high = hex(bytes[index + 1]), let low = hex(bytes[index + 2]) {
                    output.append(high << 4 | low)
                    index += 3
                } else {
                    output.append(bytes[index + 1])
                    index += 2
                }
                continue
            }
            output.append(byte)
            index += 1
        }
        return String(decoding: output, as: UTF8.self)
    }

    private static func hex(_ byte: UInt8) -> UInt8? {
        switch byte {
        case 48...57: return byte - 48
        case 65...70: return byte - 55
        case 97...102: return byte - 87
        default: return nil
        }
    }

    static func firstComponent(_ dn: String) -> String { components(normalize(dn)).first ?? "" }

    static func isWithin(_ dn: String, _ base: String) -> Bool {
        let entry = normalize(dn)
        let root = normalize(base)
        return entry == root || entry.hasSuffix("," + root)
    }
}

/// What a sync found in the directory server.
struct SyncInput: Sendable {
    /// Unit entries: everything (full) or what changed (incremental); nil = not read.
    var units: [LDAPEntry]?
    var unitsComplete: Bool
    var users: [LDAPEntry]
    /// `users` is every user in scope: users missing from it are disabled.
    var usersComplete: Bool
    /// entryUUIDs the server reported deleted (incremental).
    var deleted: Set<String> = []
    /// Every mapped group (always read in full); nil = not configured.
    var groups: [LDAPEntry]?
}

/// What a sync run would do, counted for the summary and listed for dry runs.
public struct SyncPlan: Sendable {
    public var changes: [DirectoryChange] = []
    public var added = 0
    public var updated = 0
    public var moved = 0
    public var disabled = 0
    public var enabled = 0
    public var unitsAdded = 0
    public var unitsChanged = 0
    public var unitsRemoved = 0
    public var rolesGranted = 0
    public var rolesRevoked = 0
    /// Entries skipped, each with the reason.
    public var errors: [String] = []
    /// One line per change, for `--dry-run`.
    public var lines: [String] = []

    public var summary: String {
        "added \(added), updated \(updated), moved \(moved), disabled \(disabled), re-enabled \(enabled); "
            + "units added \(unitsAdded), changed \(unitsChanged), removed \(unitsRemoved); "
            + "roles granted \(rolesGranted), revoked \(rolesRevoked); errors \(errors.count)"
    }
}

/// Turns what the directory server holds into directory changes: pure, so every rule is unit
/// tested without a server, and a dry run shows exactly what a real run would do.
struct DirectorySyncPlanner {
    let configuration: ServerConfiguration.LDAP
    let attributes: ServerConfiguration.LDAP.Attributes
    let snapshot: DirectorySnapshot
    let separator: String

    /// The user bases, normalised once.
    let userBases: [String]

    init(configuration: ServerConfiguration.LDAP, snapshot: DirectorySnapshot) {
        self.configuration = configuration
        self.attributes = configuration.effectiveAttributes
        self.snapshot = snapshot
        self.separator = snapshot.separator
        self.userBases = configuration.effectiveUserBases.map(DN.normalize)
    }

    /// The attributes to request for users.
    var userAttributes: [String] {
        let a = attributes
        return [
            a.uuid, a.username, a.displayName, "cn", a.title, a.employeeNumber, a.email, a.phone, a.mobile, a.secondaryUnits,
            configuration.unitFrom == "attribute" ? a.department : nil, configuration.effectiveDisabledAttribute,
        ].compactMap { $0 }
    }

    var unitAttributes: [String] { [attributes.uuid ?? "entryUUID", "ou", "description"] }

    /// A stable entry id: entryUUID as text, AD's binary objectGUID as hex.
    func uuid(of entry: LDAPEntry) -> String? {
        let name = attributes.uuid ?? "entryUUID"
        if name.lowercased() == "objectguid" {
            guard let bytes = entry.firstValue(name), bytes.count == 16 else { return nil }
            return bytes.map { String($0, radix: 16).leftPadded(2) }.joined()
        }
        return entry.first(name)?.lowercased()
    }

    static func unitID(uuid: String) -> String {
        "l" + String(uuid.filter { $0 != "-" }.prefix(40))
    }

    /// Units named by path (unit_from: attribute) get ids from the path.
    static func unitID(path: String) -> String {
        func fnv(_ seed: UInt64) -> UInt64 {
            var hash = seed
            for byte in path.utf8 {
                hash ^= UInt64(byte)
                hash = hash &* 0x100_0000_01b3
            }
            return hash
        }
        return "p" + String(fnv(0xcbf2_9ce4_8422_2325), radix: 16).leftPadded(16) + String(fnv(0x84222325cbf29ce4), radix: 16).leftPadded(16)
    }

    // MARK: - Planning

    func plan(_ input: SyncInput, force: Bool) -> SyncPlan {
        var plan = SyncPlan()
        var units = planUnits(input, &plan)
        let userChanges = planUsers(input, units: &units, &plan)
        // Order: units first (parents before children), users and memberships, then empty units go.
        plan.changes = units.puts + userChanges + units.deletes(afterMemberships: userChanges, snapshot: snapshot, &plan)
        if let groups = input.groups { planRoles(groups, usersByDN: usersByDN(input), &plan) }
        guardMassDisable(&plan, force: force, input: input)
        return plan
    }

    /// LDAP-managed units after this run.
    struct UnitState {
        var byID: [String: OrgUnit]
        var idByDN: [String: String]
        var puts: [DirectoryChange] = []
        var removed: [String] = []

        /// Deletions of units that are gone from the directory and empty once the users moved.
        func deletes(afterMemberships changes: [DirectoryChange], snapshot: DirectorySnapshot, _ plan: inout SyncPlan) -> [DirectoryChange] {
            var members: [String: Set<String>] = [:]
            for (unit, list) in snapshot.membersByUnit { members[unit] = Set(list) }
            for change in changes {
                switch change {
                case .putMembership(let membership): members[membership.unitID, default: []].insert(membership.username)
                case .deleteMembership(let username, let unit): members[unit]?.remove(username)
                default: break
                }
            }
            let removedSet = Set(removed)
            var result: [DirectoryChange] = []
            // Children before parents: deepest first.
            func depth(_ id: String) -> Int {
                var depth = 0
                var current = snapshot.units[id]?.parentID
                while let parent = current, depth < 64 { depth += 1; current = snapshot.units[parent]?.parentID }
                return depth
            }
            for id in removed.sorted(by: { depth($0) > depth($1) }) {
                let path = snapshot.paths[id] ?? id
                if let remaining = members[id], !remaining.isEmpty {
                    plan.errors.append("unit \(path) is gone from the directory but still has members (\(remaining.sorted().prefix(5).joined(separator: ", "))); kept")
                    continue
                }
                let children = (snapshot.children[id] ?? []).filter { !removedSet.contains($0) }
                    + byID.values.filter { $0.parentID == id }.map(\.id)
                if !children.isEmpty {
                    plan.errors.append("unit \(path) is gone from the directory but still has child units; kept")
                    continue
                }
                result.append(.deleteUnit(id: id))
                plan.unitsRemoved += 1
                plan.lines.append("remove unit \(path)")
            }
            return result
        }
    }

    private func planUnits(_ input: SyncInput, _ plan: inout SyncPlan) -> UnitState {
        let existing = snapshot.units.values.filter { $0.source == "ldap" }
        var state = UnitState(byID: [:], idByDN: [:])
        for unit in existing {
            state.byID[unit.id] = unit
            if let dn = unit.externalDN { state.idByDN[dn] = unit.id }
        }
        guard configuration.unitFrom == "tree", let base = configuration.unitBase else { return state }
        let baseDN = DN.normalize(base)
        guard let entries = input.units else { return state }

        var desired: [String: (entry: LDAPEntry, uuid: String)] = [:]
        var seen = Set<String>()
        for entry in entries {
            let dn = DN.normalize(entry.dn)
            guard dn != baseDN, DN.isWithin(dn, baseDN) else { continue }
            guard let uuid = uuid(of: entry) else {
                plan.errors.append("unit \(entry.dn) has no \(attributes.uuid ?? "entryUUID"); skipped")
                continue
            }
            let id = Self.unitID(uuid: uuid)
            desired[id] = (entry, uuid)
            seen.insert(id)
        }
        // New DNs of changed units, so children find their parents below them.
        for (id, item) in desired { state.idByDN[DN.normalize(item.entry.dn)] = id }
        for (dn, id) in state.idByDN where desired[id] != nil && DN.normalize(desired[id]?.entry.dn ?? "") != dn {
            state.idByDN[dn] = nil
        }
        // Units removed from the directory.
        var removed = Set<String>()
        if input.unitsComplete {
            for unit in existing where !seen.contains(unit.id) { removed.insert(unit.id) }
        }
        for unit in existing where unit.externalID.map({ input.deleted.contains($0) }) == true { removed.insert(unit.id) }

        // Parents first: sort by DN depth.
        let ordered = desired.sorted { DN.components($0.value.entry.dn).count < DN.components($1.value.entry.dn).count }
        var positions: [String: Int] = [:]
        for (parent, ids) in snapshot.children { positions[parent] = ids.count }
        for (id, item) in ordered {
            let dn = DN.normalize(item.entry.dn)
            let parentDN = DN.parent(dn)
            let parentID: String? = parentDN == baseDN ? nil : state.idByDN[parentDN]
            if parentDN != baseDN, parentID == nil {
                plan.errors.append("unit \(item.entry.dn): parent not found in the unit tree; skipped")
                continue
            }
            let name = item.entry.first("ou") ?? DN.firstValue(item.entry.dn)
            var unit = state.byID[id] ?? OrgUnit(id: id, name: name, source: "ldap")
            let before = state.byID[id]
            unit.name = name
            unit.parentID = parentID
            unit.description = item.entry.first("description")
            unit.externalID = item.uuid
            unit.externalDN = dn
            unit.source = "ldap"
            if before == nil {
                let key = parentID ?? ""
                unit.position = positions[key, default: 0]
                positions[key, default: 0] += 1
            }
            var comparable = before
            comparable?.version = unit.version
            if comparable != unit {
                state.puts.append(.putUnit(unit))
                if before == nil {
                    plan.unitsAdded += 1
                    plan.lines.append("add unit \(name) [\(id)]")
                } else {
                    plan.unitsChanged += 1
                    plan.lines.append("update unit \(name) [\(id)]")
                }
            }
            state.byID[id] = unit
            removed.remove(id)
        }
        for id in removed { state.byID[id] = nil }
        state.removed = Array(removed)
        // A renamed or moved unit moves its subtree: recompute the DNs below it.
        func depth(_ unit: OrgUnit) -> Int {
            var depth = 0
            var current = unit.parentID
            while let parent = current, depth < 64 { depth += 1; current = state.byID[parent]?.parentID }
            return depth
        }
        var dnByID: [String: String] = [:]
        for unit in state.byID.values.sorted(by: { depth($0) < depth($1) }) {
            guard let stored = unit.externalDN else { continue }
            let parentDN = unit.parentID.flatMap { dnByID[$0] } ?? baseDN
            let dn = DN.firstComponent(stored) + "," + parentDN
            dnByID[unit.id] = dn
            if dn != stored, desired[unit.id] == nil {
                var moved = unit
                moved.externalDN = dn
                state.byID[unit.id] = moved
                state.puts.append(.putUnit(moved))
            }
        }
        state.idByDN = [:]
        for (id, dn) in dnByID { state.idByDN[dn] = id }
        return state
    }

    /// Disabled by the configured attribute (values or bitmask)?
    func isDisabled(_ entry: LDAPEntry) -> Bool {
        guard let attribute = configuration.effectiveDisabledAttribute else { return false }
        let values = entry.values(attribute).map { String(decoding: $0, as: UTF8.self) }
        let mask = configuration.effectiveDisabledBitmask
        if mask != 0 {
            return values.contains { (Int($0) ?? 0) & mask != 0 }
        }
        let disabled = Set(configuration.disabledValues.map { $0.lowercased() })
        return values.contains { disabled.contains($0.lowercased()) }
    }

    private func inScope(_ dn: String) -> Bool { inScope(normalized: DN.normalize(dn)) }

    /// For DNs stored normalised (no second normalisation of 50,000 DNs per run).
    private func inScope(normalized dn: String) -> Bool {
        userBases.contains { dn == $0 || dn.hasSuffix("," + $0) }
    }

    /// Unit of a path (unit_from: attribute), created on the way when missing.
    private func unitForPath(_ path: String, state: inout UnitState, _ plan: inout SyncPlan) -> String? {
        let names = path.split(separator: Character(separator)).map { String($0).trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        guard !names.isEmpty else { return nil }
        var parent: String?
        var sofar = ""
        for name in names {
            sofar = sofar.isEmpty ? name : sofar + separator + name
            let id = Self.unitID(path: sofar)
            if state.byID[id] == nil {
                let siblings = state.byID.values.filter { $0.parentID == parent }.count
                let unit = OrgUnit(id: id, parentID: parent, name: name, position: siblings, source: "ldap", externalID: nil)
                state.byID[id] = unit
                state.puts.append(.putUnit(unit))
                plan.unitsAdded += 1
                plan.lines.append("add unit \(sofar) [\(id)]")
            }
            parent = id
        }
        return parent
    }

    private func planUsers(_ input: SyncInput, units: inout UnitState, _ plan: inout SyncPlan) -> [DirectoryChange] {
        var changes: [DirectoryChange] = []
        let a = attributes
        var byExternal: [String: DirectoryUser] = [:]
        for user in snapshot.users.values { if let id = user.externalID { byExternal[id] = user } }
        var seenUsers = Set<String>()
        var claimed: [String: String] = [:]  // username → dn, duplicates in one run

        for entry in input.users {
            guard inScope(entry.dn) else { continue }
            guard let uuid = uuid(of: entry) else {
                plan.errors.append("user \(entry.dn) has no \(a.uuid ?? "entryUUID"); skipped")
                continue
            }
            guard let rawName = entry.first(a.username ?? "uid"), let username = try? DirectoryService.validateUsername(rawName) else {
                plan.errors.append("user \(entry.dn): missing or invalid \(a.username ?? "uid"); skipped")
                continue
            }
            if let other = claimed[username] {
                plan.errors.append("user \(entry.dn): login name \(username) also used by \(other); skipped")
                continue
            }
            claimed[username] = entry.dn
            var existing = snapshot.users[username]
            if let byID = byExternal[uuid], byID.username != username {
                plan.errors.append("user \(entry.dn): login name changed from \(byID.username) to \(username); not supported, skipped")
                seenUsers.insert(byID.username)
                continue
            }
            if let current = existing, let known = current.externalID, known != uuid {
                plan.errors.append("user \(entry.dn): login name \(username) belongs to another directory entry; skipped")
                continue
            }
            if existing?.source == "local" {
                plan.lines.append("take over local user \(username)")
            }
            seenUsers.insert(username)
            var user = existing ?? DirectoryUser(username: username, displayName: username)
            let displayName = entry.first(a.displayName ?? "displayName") ?? entry.first("cn") ?? username
            user.displayName = (try? DirectoryService.validateName(displayName, what: "name")) ?? username
            user.title = a.title.flatMap { entry.first($0) }
            user.employeeNumber = a.employeeNumber.flatMap { entry.first($0) }
            user.emails = a.email.map { entry.values($0).map { String(decoding: $0, as: UTF8.self) } } ?? []
            user.phones = a.phone.map { entry.values($0).map { String(decoding: $0, as: UTF8.self) } } ?? []
            user.mobile = a.mobile.flatMap { entry.first($0) }
            user.status = isDisabled(entry) ? .disabled : .active
            user.source = "ldap"
            user.externalID = uuid
            user.externalDN = DN.normalize(entry.dn)
            existing?.version = user.version
            if existing != user {
                changes.append(.putUser(user))
                if existing == nil {
                    plan.added += 1
                    plan.lines.append("add user \(username) (\(user.displayName))\(user.status == .disabled ? " disabled" : "")")
                } else if existing?.status == .active && user.status == .disabled {
                    plan.disabled += 1
                    plan.lines.append("disable user \(username): disabled in the directory")
                } else {
                    if existing?.status == .disabled && user.status == .active { plan.enabled += 1 }
                    plan.updated += 1
                    plan.lines.append("update user \(username)")
                }
            }

            // Units: primary from the entry's place (or department attribute), more from secondary_units.
            var desired: [(unit: String, primary: Bool)] = []
            if configuration.unitFrom == "tree" {
                if let primary = units.idByDN[DN.parent(entry.dn)] { desired.append((primary, true)) }
                for other in a.secondaryUnits.map({ entry.values($0).map { String(decoding: $0, as: UTF8.self) } }) ?? [] {
                    if let id = units.idByDN[DN.normalize(other)], !desired.contains(where: { $0.unit == id }) { desired.append((id, false)) }
                }
            } else {
                let paths = entry.values(a.department ?? "department").map { String(decoding: $0, as: UTF8.self) }
                for (index, path) in paths.enumerated() {
                    if let id = unitForPath(path, state: &units, &plan), !desired.contains(where: { $0.unit == id }) {
                        desired.append((id, index == 0))
                    }
                }
            }
            let managed = (snapshot.membershipsByUser[username] ?? []).filter { snapshot.units[$0.unitID]?.source == "ldap" || units.byID[$0.unitID] != nil }
            let oldPrimary = managed.first(where: \.isPrimary)?.unitID
            for membership in managed where !desired.contains(where: { $0.unit == membership.unitID }) {
                changes.append(.deleteMembership(username: username, unitID: membership.unitID))
            }
            for (unit, primary) in desired {
                let current = managed.first { $0.unitID == unit }
                if current == nil || current?.isPrimary != primary {
                    changes.append(.putMembership(Membership(username: username, unitID: unit, isPrimary: primary, title: current?.title)))
                }
            }
            let newPrimary = desired.first(where: \.primary)?.unit
            if existing != nil, oldPrimary != newPrimary {
                plan.moved += 1
                plan.lines.append("move user \(username) to \(newPrimary.flatMap { units.byID[$0]?.name } ?? "no unit")")
            }
        }

        // Users gone from the directory are disabled, never deleted: their history stays for audit.
        for user in snapshot.users.values where user.source == "ldap" && user.status == .active && !seenUsers.contains(user.username) {
            let deleted = user.externalID.map { input.deleted.contains($0) } ?? false
            let missing = input.usersComplete && (user.externalDN.map { inScope(normalized: $0) } ?? false)
            guard deleted || missing else { continue }
            var disabled = user
            disabled.status = .disabled
            changes.append(.putUser(disabled))
            plan.disabled += 1
            plan.lines.append("disable user \(user.username): \(deleted ? "deleted" : "no longer") in the directory")
        }
        return changes
    }

    /// DN → username for this run's users and the ones already known.
    private func usersByDN(_ input: SyncInput) -> [String: String] {
        var result: [String: String] = [:]
        for user in snapshot.users.values where user.source == "ldap" {
            if let dn = user.externalDN { result[dn] = user.username }
        }
        for entry in input.users {
            if let name = entry.first(attributes.username ?? "uid"), let username = try? DirectoryService.validateUsername(name) {
                result[DN.normalize(entry.dn)] = username
            }
        }
        return result
    }

    private func planRoles(_ groups: [LDAPEntry], usersByDN: [String: String], _ plan: inout SyncPlan) {
        guard !configuration.groupRoles.isEmpty else { return }
        var desired: [String: Set<String>] = [:]
        for role in configuration.groupRoles.values { desired[role] = [] }
        let usernameAttribute = (attributes.username ?? "uid").lowercased()
        for group in groups {
            let name = group.first("cn") ?? DN.firstValue(group.dn)
            guard let role = configuration.groupRoles[name] else { continue }
            for member in group.values(configuration.effectiveGroupMemberAttribute).map({ String(decoding: $0, as: UTF8.self) }) {
                let dn = DN.normalize(member)
                if let username = usersByDN[dn] {
                    desired[role, default: []].insert(username)
                } else if let first = DN.components(dn).first, first.hasPrefix(usernameAttribute + "="),
                    let username = try? DirectoryService.validateUsername(DN.firstValue(member)), snapshot.users[username] != nil
                {
                    desired[role, default: []].insert(username)
                }
            }
        }
        for (role, members) in desired.sorted(by: { $0.key < $1.key }) {
            guard snapshot.roles[role] != nil else {
                plan.errors.append("ldap.group_roles maps to role \(role), which does not exist; create it with 'switchboard org role add'")
                continue
            }
            let holders = Set(snapshot.rolesByUser.filter { $0.value.contains(role) && snapshot.users[$0.key]?.source == "ldap" }.keys)
            for username in members.subtracting(holders).sorted() {
                plan.changes.append(.grantRole(RoleGrant(username: username, role: role)))
                plan.rolesGranted += 1
                plan.lines.append("grant \(role) to \(username)")
            }
            for username in holders.subtracting(members).sorted() {
                plan.changes.append(.revokeRole(RoleGrant(username: username, role: role)))
                plan.rolesRevoked += 1
                plan.lines.append("revoke \(role) from \(username)")
            }
        }
    }

    /// An empty or truncated search (wrong filter, outage, ACL change) must not wipe the company.
    private func guardMassDisable(_ plan: inout SyncPlan, force: Bool, input: SyncInput) {
        let active = snapshot.users.values.filter { $0.source == "ldap" && $0.status == .active }.count
        guard plan.disabled > 0, active > 0, !force else { return }
        let allowed = active * configuration.maxDisablePercent / 100
        if plan.disabled > allowed {
            plan.errors.append(
                "refused: this run would disable \(plan.disabled) of \(active) directory users, more than ldap.max_disable_percent (\(configuration.maxDisablePercent)%); check the filters and the directory, then run 'switchboard ldap sync --force' if it is intended"
            )
            plan.changes = []
        }
    }
}

extension SyncPlan {
    /// True when the mass-disable guard stopped the run.
    public var refused: Bool { errors.contains { $0.hasPrefix("refused:") } }
}

extension String {
    func leftPadded(_ width: Int) -> String {
        count >= width ? self : String(repeating: "0", count: width - count) + self
    }
}
