import Directory
import Foundation
import NIOConcurrencyHelpers
import Server
import Storage
import XMLStream
import XMPPCore

/// The organisation directory as the running server sees it: the current snapshot, kept in
/// step with the database, and what follows from each change (disabled users kicked, roster
/// pushes, presence between new colleagues).
///
/// Shared by the modules that show the directory (roster, presence, vCard, search), which
/// receive it at construction; `BuiltinModules.all` creates one per server.
public final class DirectoryRuntime: Sendable {
    public let configuration: ServerConfiguration.Directory
    private let current = NIOLockedValueBox(DirectorySnapshot.empty)
    private let refresher = Refresher()
    private let serviceBox = NIOLockedValueBox<DirectoryService?>(nil)

    public init(configuration: ServerConfiguration.Directory = .init()) {
        self.configuration = configuration
    }

    public var snapshot: DirectorySnapshot { current.withLockedValue { $0 } }

    /// Whether directory colleagues appear in rosters with shared presence.
    public var rosterEnabled: Bool { configuration.roster }

    /// The service for in-process changes; each change is applied to the running server at once.
    public var service: DirectoryService? { serviceBox.withLockedValue { $0 } }

    /// A deleted user's messages still in the message journal would be stored after the
    /// deletion (and outlive it): store them first, then delete.
    static func storeJournalBeforeDeletions(_ server: ServerContext) -> @Sendable ([DirectoryChange]) async -> Void {
        { [weak server] changes in
            guard let server, DirectoryService.deletesUsers(changes) else { return }
            await server.journal.applied()
        }
    }

    func start(_ server: ServerContext) async throws {
        var service = DirectoryService(store: server.stores.directory, accounts: server.stores.accounts, separator: configuration.groupSeparator)
        service.didChange = { [weak self, weak server] _ in
            guard let self, let server else { return }
            await self.refresh(server)
        }
        service.recorder = { [weak server] changes in
            // Looked up per call: the trail opens in the audit module's start, after this one.
            guard let trail = server?.modules.service(TrailService.self)?.trail else { return }
            await trail.directoryRecorder(actor: "server")(changes)
        }
        service.beforeApply = Self.storeJournalBeforeDeletions(server)
        serviceBox.withLockedValue { $0 = service }
        let snapshot = try await service.currentSnapshot()
        current.withLockedValue { $0 = snapshot }
        server.logger.info(
            "directory loaded",
            metadata: ["directory.version": "\(snapshot.version)", "directory.users": "\(snapshot.users.count)", "directory.units": "\(snapshot.units.count)"])
    }

    /// Loads the directory again if its version moved, and applies the consequences.
    public func refresh(_ server: ServerContext) async {
        await refresher.run { [self] in
            do {
                let version = try await server.stores.directory.directoryVersion()
                let old = snapshot
                guard version != old.version else { return }
                let new = DirectorySnapshot(try await server.stores.directory.loadDirectory(), separator: configuration.groupSeparator)
                current.withLockedValue { $0 = new }
                await DirectoryChanges(old: old, new: new, runtime: self, server: server).apply()
            } catch {
                server.logger.error("directory refresh failed", metadata: ["error": "\(error)"])
            }
        }
    }

    /// Creates or updates every unit's room once at start, in turn with the refreshes.
    func syncAllDepartmentRooms(_ server: ServerContext) async {
        await refresher.run { [self] in await syncDepartmentRooms(server, old: nil, new: snapshot) }
    }

    /// Runs refreshes one at a time, so changes are applied in version order. (An actor alone
    /// would not do: it is reentrant at every `await` inside the body.)
    private actor Refresher {
        private var busy = false
        private var waiters: [CheckedContinuation<Void, Never>] = []

        func run(_ body: @Sendable () async -> Void) async {
            if busy {
                await withCheckedContinuation { waiters.append($0) }
            }
            busy = true
            await body()
            if waiters.isEmpty {
                busy = false
            } else {
                waiters.removeFirst().resume()  // hand over: `busy` stays true
            }
        }
    }

    // MARK: - Roster content

    /// The user's roster: their own items merged with directory colleagues (groups = unit paths,
    /// subscription both, name from the directory unless they named the contact themselves).
    func mergedItems(_ personal: [RosterItem], user: String, server: ServerContext) -> [RosterItem] {
        guard rosterEnabled, let username = try? JID(user).localpart else { return personal.filter(\.inRoster) }
        let snapshot = self.snapshot
        var contacts = snapshot.contacts(of: username)
        var items: [RosterItem] = []
        items.reserveCapacity(personal.count + contacts.count)
        for item in personal where item.inRoster {
            guard let local = Self.localUsername(item.jid, server), let groups = contacts.removeValue(forKey: local) else {
                items.append(item)
                continue
            }
            items.append(Self.merged(item, groups: groups))
        }
        for (contact, groups) in contacts {
            items.append(directoryItem(contact, groups: groups, snapshot: snapshot, server: server))
        }
        return items
    }

    /// A directory colleague's roster item, merged with the user's own item for them if any.
    func item(for contact: String, groups: [String], personal: RosterItem?, snapshot: DirectorySnapshot, server: ServerContext) -> RosterItem {
        if let personal, personal.inRoster { return Self.merged(personal, groups: groups) }
        return directoryItem(contact, groups: groups, snapshot: snapshot, server: server)
    }

    private func directoryItem(_ contact: String, groups: [String], snapshot: DirectorySnapshot, server: ServerContext) -> RosterItem {
        RosterItem(
            jid: "\(contact)@\(server.domain)", name: snapshot.users[contact]?.displayName, subscription: .both,
            groups: groups.sorted())
    }

    private static func merged(_ item: RosterItem, groups: [String]) -> RosterItem {
        var merged = item
        merged.subscription = .both
        merged.askSubscribe = false
        for group in groups.sorted() where !merged.groups.contains(group) { merged.groups.append(group) }
        return merged
    }

    static func localUsername(_ jid: String, _ server: ServerContext) -> String? {
        guard let parsed = try? JID(jid), parsed.domainpart == server.domain, parsed.resourcepart == nil else { return nil }
        return parsed.localpart
    }

    // MARK: - Department rooms

    /// The room of a unit: `UNIT-ID@conference.DOMAIN`.
    public static func roomLocalpart(_ unitID: String) -> String { unitID.lowercased() }

    /// Keeps one members-only room per unit with the unit's active members (all units when
    /// `old` is nil, else those whose name or members changed), and removes rooms of deleted units.
    func syncDepartmentRooms(_ server: ServerContext, old: DirectorySnapshot?, new: DirectorySnapshot) async {
        guard configuration.departmentRooms, let muc = server.modules.service(MUCModule.self) else { return }
        func members(_ snapshot: DirectorySnapshot, _ unit: String) -> Set<String> {
            Set((snapshot.membersByUnit[unit] ?? []).filter { snapshot.isActive($0) })
        }
        var updated = 0
        for (id, _) in new.units {
            let current = members(new, id)
            if let old, old.units[id] != nil, old.paths[id] == new.paths[id], members(old, id) == current { continue }
            let jids = Set(current.compactMap { try? JID("\($0)@\(server.domain)") })
            do {
                try await muc.ensureDepartmentRoom(localpart: Self.roomLocalpart(id), name: new.paths[id] ?? id, members: jids)
                updated += 1
            } catch {
                server.logger.error("department room update failed", metadata: ["directory.unit": "\(id)", "error": "\(error)"])
            }
        }
        for id in old?.units.keys.filter({ new.units[$0] == nil }) ?? [] {
            try? await muc.removeDepartmentRoom(localpart: Self.roomLocalpart(id), reason: "the department was dissolved")
        }
        if updated > 0 { server.logger.info("department rooms updated", metadata: ["rooms": "\(updated)"]) }
    }

    /// The roster version clients see: the personal roster's and the directory's together.
    func rosterVersion(_ personal: Int64) -> String {
        rosterEnabled ? "\(personal)-\(snapshot.version)" : String(personal)
    }
}

/// What one directory change means for the users online now.
private struct DirectoryChanges {
    let old: DirectorySnapshot
    let new: DirectorySnapshot
    let runtime: DirectoryRuntime
    let server: ServerContext

    func apply() async {
        let gone = kickDisabled()
        await runtime.syncDepartmentRooms(server, old: old, new: new)
        guard runtime.rosterEnabled else { return }
        let affected = affectedUsers().subtracting(gone)
        var pushes = 0
        for username in affected {
            pushes += await updateRoster(of: username)
        }
        server.logger.info(
            "directory changed",
            metadata: [
                "directory.version": "\(new.version)", "directory.affected_online": "\(affected.count)", "directory.roster_pushes": "\(pushes)",
            ])
    }

    /// Disabled or deleted users lose their sessions at once (logins are refused by the account
    /// flag); their colleagues first see them go offline. Returns who went.
    private func kickDisabled() -> Set<String> {
        var gone = Set<String>()
        for (username, user) in old.users where user.status == .active && !new.isActive(username) { gone.insert(username) }
        // Also users created and disabled between two refreshes, who may have logged in meanwhile.
        for (username, user) in new.users where user.status == .disabled && old.users[username] == nil { gone.insert(username) }
        for username in gone {
            let sessions = server.router.sessions(of: "\(username)@\(server.domain)")
            if runtime.rosterEnabled { announceUnavailable(sessions, viewers: old.viewers(of: username)) }
            for session in sessions {
                session.close(StreamError(.notAuthorized, text: "the account was disabled"))
            }
            if !sessions.isEmpty {
                server.logger.notice("disabled user's sessions ended", metadata: ["xmpp.user": "\(username)", "sessions": "\(sessions.count)"])
            }
        }
        return gone
    }

    /// Unavailable presence from these sessions to the colleagues who saw them (the session-end
    /// broadcast that follows asks the new snapshot, where a disabled user has no colleagues).
    private func announceUnavailable(_ sessions: [SessionHandle], viewers: DirectorySnapshot.Viewers) {
        let available = sessions.filter { $0.presence.available }
        guard !available.isEmpty else { return }
        let targets: [SessionHandle]
        switch viewers {
        case .everyone:
            targets = server.router.allSessions().filter { $0.presence.available && $0.bareKey != available[0].bareKey }
        case .users(let users):
            targets = users.flatMap { server.router.availableSessions(of: "\($0)@\(server.domain)") }
        }
        for session in available {
            for target in targets {
                target.deliver(
                    XMLElement(
                        "presence", xmlns: NS.client,
                        ["type": "unavailable", "from": session.jid.description, "to": target.jid.description]))
            }
        }
    }

    /// Online users whose directory roster may differ between the snapshots.
    private func affectedUsers() -> Set<String> {
        var changedUnits = Set<String>()
        var everyone = false
        for id in Set(old.units.keys).union(new.units.keys) where signature(id, old) != signature(id, new) {
            changedUnits.insert(id)
            if old.units[id]?.alwaysVisible == true || new.units[id]?.alwaysVisible == true { everyone = true }
        }
        var online = Set<String>()
        for session in server.router.allSessions() where session.presence.interestedInRoster {
            if let local = session.jid.localpart { online.insert(local) }
        }
        if everyone { return online }
        var affected = Set<String>()
        for unit in changedUnits {
            for member in (old.membersByUnit[unit] ?? []) + (new.membersByUnit[unit] ?? []) where online.contains(member) {
                affected.insert(member)
            }
        }
        return affected
    }

    /// What a roster shows of a unit: its path and its members' names and states.
    private func signature(_ unit: String, _ snapshot: DirectorySnapshot) -> [String] {
        guard let info = snapshot.units[unit] else { return [] }
        var result = [snapshot.paths[unit] ?? "", info.alwaysVisible ? "v" : ""]
        for member in snapshot.membersByUnit[unit] ?? [] {
            let user = snapshot.users[member]
            result.append("\(member)\u{1F}\(user?.displayName ?? "")\u{1F}\(user?.status.rawValue ?? "")")
        }
        return result
    }

    /// Pushes the differences in one user's roster and exchanges presence with new colleagues.
    private func updateRoster(of username: String) async -> Int {
        let bare = "\(username)@\(server.domain)"
        let before = old.contacts(of: username)
        let after = new.contacts(of: username)
        var changed: [String] = []
        for (contact, groups) in after where before[contact].map({ $0.sorted() }) != groups.sorted()
            || old.users[contact]?.displayName != new.users[contact]?.displayName
        {
            changed.append(contact)
        }
        let removed = before.keys.filter { after[$0] == nil }
        guard !changed.isEmpty || !removed.isEmpty else { return 0 }
        guard let roster = try? await server.stores.rosters.roster(of: bare) else { return 0 }
        let personal = Dictionary(roster.items.map { ($0.jid, $0) }, uniquingKeysWith: { first, _ in first })
        let version = runtime.rosterVersion(roster.version)
        var pushes = 0
        for contact in changed {
            let jid = "\(contact)@\(server.domain)"
            let item = runtime.item(for: contact, groups: after[contact] ?? [], personal: personal[jid], snapshot: new, server: server)
            RosterPush.push(item, version: version, user: bare, server: server)
            pushes += 1
            if before[contact] == nil { exchangePresence(username, contact) }
        }
        for contact in removed {
            let jid = "\(contact)@\(server.domain)"
            if let own = personal[jid], own.inRoster {
                // Still in the user's own roster: show it without the directory's groups.
                RosterPush.push(own, version: version, user: bare, server: server)
            } else {
                RosterPush.push(RosterItem(jid: jid), removed: true, version: version, user: bare, server: server)
                sendUnavailable(from: contact, to: username)
            }
            pushes += 1
        }
        return pushes
    }

    /// A new colleague: each side gets the other's current presence.
    private func exchangePresence(_ username: String, _ contact: String) {
        let user = "\(username)@\(server.domain)"
        let other = "\(contact)@\(server.domain)"
        for session in server.router.availableSessions(of: other) {
            guard var presence = session.presence.presence, let to = try? JID(user) else { continue }
            presence[attribute: "to"] = user
            server.deliverPresence(presence, to: to)
        }
        for session in server.router.availableSessions(of: user) {
            guard var presence = session.presence.presence, let to = try? JID(other) else { continue }
            presence[attribute: "to"] = other
            server.deliverPresence(presence, to: to)
        }
    }

    private func sendUnavailable(from contact: String, to username: String) {
        let user = "\(username)@\(server.domain)"
        guard let to = try? JID(user) else { return }
        for session in server.router.availableSessions(of: "\(contact)@\(server.domain)") {
            server.deliverPresence(
                XMLElement("presence", xmlns: NS.client, ["type": "unavailable", "from": session.jid.description, "to": user]), to: to)
        }
    }
}

/// The directory for clients: XEP-0055 search, the tree browsing IQ (`urn:switchboard:org:0`),
/// and the background refresh that applies changes made by other processes.
public struct DirectoryModule: ServerModule {
    public let id = "directory"
    public static let namespace = "urn:switchboard:org:0"
    static let search = "jabber:iq:search"
    let runtime: DirectoryRuntime

    public init(runtime: DirectoryRuntime) {
        self.runtime = runtime
    }

    public func register(in registry: inout ModuleRegistry) {
        let runtime = self.runtime
        registry.provide(runtime)
        registry.onStart { server in try await runtime.start(server) }
        registry.addBackgroundTask { server in
            let interval = Duration.milliseconds(runtime.configuration.refreshIntervalMs)
            await runtime.syncAllDepartmentRooms(server)
            while !Task.isCancelled {
                try? await Task.sleep(for: interval)
                await runtime.refresh(server)
            }
        }
        registry.addServerFeature(Self.search)
        registry.addServerFeature(Self.namespace)
        registry.handleIQ(Self.search, target: .server) { request in
            try await DirectorySearch(runtime: runtime).handle(request)
        }
        registry.handleIQ(Self.namespace, target: .server) { request in
            try await DirectoryTree(runtime: runtime).handle(request)
        }
    }
}

/// XEP-0055 Jabber Search over the directory, with data forms (and the legacy fields).
struct DirectorySearch {
    let runtime: DirectoryRuntime

    static let fields: [(name: String, label: String, field: DirectorySearchIndex.Field)] = [
        ("q", "Anything", .any), ("name", "Name (汉字, pinyin or initials)", .name), ("department", "Department", .department),
        ("title", "Title", .title), ("phone", "Phone", .phone), ("email", "Email", .email),
    ]

    func handle(_ request: IQRequest) async throws -> XMLElement? {
        guard request.from.localpart != nil, request.server.isLocal(request.from) else { throw StanzaError.forbidden }
        guard request.payload.name == "query" else { throw StanzaError.badRequest }
        var query = XMLElement("query", xmlns: DirectoryModule.search)
        if !request.isSet {
            query.append(XMLElement("instructions", xmlns: DirectoryModule.search).withText(
                "Search the company directory: fill in any field. Chinese names match by characters, full pinyin and initials."))
            for legacy in ["first", "last", "nick", "email"] { query.append(XMLElement(legacy, xmlns: DirectoryModule.search)) }
            let form = DataForm(
                type: "form", formType: DirectoryModule.search, title: "Company directory",
                instructions: "Fill in any field; all given fields must match.",
                fields: Self.fields.map { DataForm.Field($0.name, type: "text-single", label: $0.label) })
            query.append(form.element)
            return query
        }
        var criteria: [(DirectorySearchIndex.Field, String)] = []
        var usedForm = false
        if let formElement = request.payload.child("x", namespace: NS.dataForms), let form = DataForm(formElement) {
            usedForm = true
            for spec in Self.fields {
                if let value = form.value(spec.name), !value.isEmpty { criteria.append((spec.field, value)) }
            }
        } else {
            for (legacy, field) in [("first", DirectorySearchIndex.Field.name), ("last", .name), ("nick", .name), ("email", .email)] {
                if let text = request.payload.child(legacy)?.text, !text.isEmpty { criteria.append((field, text)) }
            }
        }
        for (_, text) in criteria where text.utf8.count > 256 {
            throw StanzaError(.notAcceptable, text: "search terms are limited to 256 bytes")
        }
        guard !criteria.isEmpty else { throw StanzaError(.notAcceptable, text: "fill in at least one field") }
        let snapshot = runtime.snapshot
        let (usernames, more) = snapshot.search.search(criteria, limit: runtime.configuration.searchMaxResults)
        let domain = request.server.domain
        if usedForm {
            var form = DataForm(
                type: "result", formType: DirectoryModule.search,
                reported: [
                    DataForm.Field("jid", type: "jid-single", label: "JID"), DataForm.Field("name", label: "Name"),
                    DataForm.Field("department", label: "Department"), DataForm.Field("title", label: "Title"),
                    DataForm.Field("email", label: "Email"), DataForm.Field("phone", label: "Phone"),
                ])
            if more { form.instructions = "Showing the first \(usernames.count) matches; refine the search to see others." }
            for username in usernames {
                guard let user = snapshot.users[username] else { continue }
                form.items.append([
                    DataForm.Field("jid", value: "\(username)@\(domain)"), DataForm.Field("name", value: user.displayName),
                    DataForm.Field("department", value: snapshot.primaryUnit(of: username).flatMap { snapshot.paths[$0] } ?? ""),
                    DataForm.Field("title", value: user.title ?? ""), DataForm.Field("email", value: user.emails.first ?? ""),
                    DataForm.Field("phone", value: user.phones.first ?? user.mobile ?? ""),
                ])
            }
            query.append(form.element)
        } else {
            for username in usernames {
                guard let user = snapshot.users[username] else { continue }
                var item = XMLElement("item", xmlns: DirectoryModule.search, ["jid": "\(username)@\(domain)"])
                item.append(XMLElement("first", xmlns: DirectoryModule.search).withText(user.displayName))
                item.append(XMLElement("last", xmlns: DirectoryModule.search).withText(""))
                item.append(XMLElement("nick", xmlns: DirectoryModule.search).withText(username))
                item.append(XMLElement("email", xmlns: DirectoryModule.search).withText(user.emails.first ?? ""))
                query.append(item)
            }
        }
        return query
    }
}

/// Browsing the tree one level at a time, with versions for incremental updates:
///
///     <iq type='get' to='DOMAIN'><units xmlns='urn:switchboard:org:0' parent='UNIT-ID' since='VERSION'/></iq>
///
/// `parent` absent = top level. The result `<units version='V'>` lists `<unit id name position
/// members children [description]/>` and `<member jid name [title] [primary='true'] [status]/>`; with
/// `since`, only what changed under that parent after that version, plus `<removed unit='ID'/>` and
/// `<removed jid='JID'/>` for what left; `reset='true'` when `since` is too old (reload the level).
struct DirectoryTree {
    let runtime: DirectoryRuntime

    func handle(_ request: IQRequest) async throws -> XMLElement? {
        guard !request.isSet else { throw StanzaError(.notAllowed, text: "the directory is read-only for clients") }
        guard request.payload.name == "units" else { throw StanzaError.badRequest }
        guard request.from.localpart != nil, request.server.isLocal(request.from) else { throw StanzaError.forbidden }
        let snapshot = runtime.snapshot
        let parent = request.payload[attribute: "parent"]
        if let parent, snapshot.units[parent] == nil { throw StanzaError(.itemNotFound, text: "no unit \(parent)") }
        var result = XMLElement("units", xmlns: DirectoryModule.namespace, ["version": String(snapshot.version)])
        if let parent { result[attribute: "parent"] = parent }

        var since: Int64?
        if let text = request.payload[attribute: "since"] {
            guard let value = Int64(text), value >= 0 else { throw StanzaError(.badRequest, text: "since must be a version number") }
            since = value
        }
        let store = request.server.stores.directory
        if let known = since, known > snapshot.version {
            result[attribute: "reset"] = "true"
            since = nil
        } else if let known = since, known < (try await store.directoryLogHorizon()) {
            result[attribute: "reset"] = "true"
            since = nil
        }
        let unitIDs: [String]
        let memberIDs: [String]
        if let known = since {
            let log = try await store.directoryLog(parent: parent, since: known)
            let present = Set(snapshot.children[parent ?? ""] ?? [])
            let members = Set(parent.flatMap { snapshot.membersByUnit[$0] } ?? [])
            var units: [String] = []
            var people: [String] = []
            for entry in log {
                switch entry.kind {
                case .unit:
                    if present.contains(entry.id) {
                        units.append(entry.id)
                    } else {
                        result.append(XMLElement("removed", xmlns: DirectoryModule.namespace, ["unit": entry.id]))
                    }
                case .member:
                    if members.contains(entry.id), snapshot.isActive(entry.id) {
                        people.append(entry.id)
                    } else {
                        result.append(
                            XMLElement("removed", xmlns: DirectoryModule.namespace, ["jid": "\(entry.id)@\(request.server.domain)"]))
                    }
                }
            }
            unitIDs = units
            memberIDs = people
        } else {
            unitIDs = snapshot.children[parent ?? ""] ?? []
            memberIDs = (parent.flatMap { snapshot.membersByUnit[$0] } ?? []).filter { snapshot.isActive($0) }
        }
        for id in unitIDs {
            guard let unit = snapshot.units[id] else { continue }
            var element = XMLElement(
                "unit", xmlns: DirectoryModule.namespace,
                [
                    "id": unit.id, "name": unit.name, "position": String(unit.position),
                    "members": String(snapshot.memberCount(unit.id)), "children": String(snapshot.children[unit.id]?.count ?? 0),
                ])
            if let description = unit.description { element[attribute: "description"] = description }
            result.append(element)
        }
        for member in memberIDs {
            guard let user = snapshot.users[member] else { continue }
            var element = XMLElement(
                "member", xmlns: DirectoryModule.namespace, ["jid": "\(member)@\(request.server.domain)", "name": user.displayName])
            let membership = snapshot.membershipsByUser[member]?.first { $0.unitID == parent }
            if let title = membership?.title ?? user.title { element[attribute: "title"] = title }
            if membership?.isPrimary == true { element[attribute: "primary"] = "true" }
            result.append(element)
        }
        return result
    }
}

/// Fills a vCard (XEP-0054) with what the directory knows: name, title, unit, phones, email.
enum DirectoryVCard {
    static func merge(_ stored: XMLElement?, user: DirectoryUser, snapshot: DirectorySnapshot) -> XMLElement {
        var vcard = stored ?? XMLElement("vCard", xmlns: NS.vcard)
        let managed: Set<String> = ["FN", "TITLE", "ORG", "EMAIL", "TEL"]
        vcard.removeChildren { managed.contains($0.name) }
        func element(_ name: String, _ children: [XMLElement] = [], text: String? = nil) -> XMLElement {
            var element = XMLElement(name, xmlns: NS.vcard, children: children)
            if let text { element.append(text: text) }
            return element
        }
        vcard.append(element("FN", text: user.displayName))
        if let title = user.title, !title.isEmpty { vcard.append(element("TITLE", text: title)) }
        if let unit = snapshot.primaryUnit(of: user.username), let path = snapshot.paths[unit] {
            var names = path.split(separator: Character(snapshot.separator)).map(String.init)
            let organisation = names.removeFirst()
            var org = [element("ORGNAME", text: organisation)]
            if !names.isEmpty { org.append(element("ORGUNIT", text: names.joined(separator: snapshot.separator))) }
            vcard.append(element("ORG", org))
        }
        for email in user.emails {
            vcard.append(element("EMAIL", [element("INTERNET"), element("PREF"), element("USERID", text: email)]))
        }
        for phone in user.phones {
            vcard.append(element("TEL", [element("WORK"), element("VOICE"), element("NUMBER", text: phone)]))
        }
        if let mobile = user.mobile, !mobile.isEmpty {
            vcard.append(element("TEL", [element("CELL"), element("VOICE"), element("NUMBER", text: mobile)]))
        }
        return vcard
    }
}
