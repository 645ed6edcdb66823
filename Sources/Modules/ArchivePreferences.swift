import NIOConcurrencyHelpers
import Server
import Storage
import XMLStream
import XMPPCore

/// XEP-0313 §6 archiving preferences, per user: a default (always, never, roster) and JIDs always
/// or never archived. They govern only the user's own history: the audit record (docs/audit.md)
/// keeps every message whatever a user chooses.
///
/// The archive decides on the hot path, so every user's non-default preferences live in memory
/// (loaded at start, updated on set); for `roster`, the user's roster JIDs are taken when the
/// preferences are set and at each login.
struct ArchivePreferences: Sendable, Hashable {
    enum Default: String, Sendable { case always, never, roster }
    var `default`: Default = .always
    var always: Set<String> = []
    var never: Set<String> = []
    /// For `roster`: the contacts at the time of the last refresh.
    var rosterJIDs: Set<String> = []

    static let storageKey = "urn:xmpp:mam:2#prefs"
    static let maxJIDs = 1000

    func archives(peer: String) -> Bool {
        if never.contains(peer) { return false }
        if always.contains(peer) { return true }
        switch self.default {
        case .always: return true
        case .never: return false
        case .roster: return rosterJIDs.contains(peer)
        }
    }

    var element: XMLElement {
        var prefs = XMLElement("prefs", xmlns: ArchiveModule.ns, ["default": self.default.rawValue])
        for (name, jids) in [("always", always), ("never", never)] {
            var list = XMLElement(name, xmlns: ArchiveModule.ns)
            for jid in jids.sorted() { list.append(XMLElement("jid", xmlns: ArchiveModule.ns).withText(jid)) }
            prefs.append(list)
        }
        return prefs
    }

    /// Parses a `<prefs/>` element (stanza errors for bad input).
    init(_ element: XMLElement) throws(StanzaError) {
        guard let value = element[attribute: "default"], let parsed = Default(rawValue: value) else {
            throw StanzaError(.badRequest, text: "default must be always, never or roster")
        }
        self.default = parsed
        for list in element.elements where list.name == "always" || list.name == "never" {
            var jids = Set<String>()
            for item in list.elements where item.name == "jid" {
                guard let jid = try? JID(item.text.trimmingCharacters(in: .whitespaces)) else {
                    throw StanzaError(.jidMalformed, text: "'\(item.text)' is not a JID")
                }
                jids.insert(jid.bare.description)
            }
            if list.name == "always" { always = jids } else { never = jids }
        }
        guard always.count + never.count <= Self.maxJIDs else {
            throw StanzaError(.notAcceptable, text: "at most \(Self.maxJIDs) JIDs in archiving preferences")
        }
        never.subtract(always.intersection(never))  // a JID in both lists: 'always' wins
    }

    init() {}
}

/// Every user's preferences, in memory.
final class ArchivePreferenceTable: Sendable {
    private let table = NIOLockedValueBox<[String: ArchivePreferences]>([:])

    func archives(owner: String, peer: String) -> Bool {
        // Decided under the lock (no copy of the preferences); nobody has any, usually.
        table.withLockedValue { $0.isEmpty ? true : $0[owner]?.archives(peer: peer) ?? true }
    }

    func preferences(of owner: String) -> ArchivePreferences {
        table.withLockedValue { $0[owner] } ?? ArchivePreferences()
    }

    func set(_ preferences: ArchivePreferences, of owner: String) {
        table.withLockedValue { $0[owner] = preferences == ArchivePreferences() ? nil : preferences }
    }

    func load(_ server: ServerContext) async throws {
        for (user, xml) in try await server.stores.privateXML.documents(key: ArchivePreferences.storageKey) {
            guard let element = try? XMLElement.parse(xml), var preferences = try? ArchivePreferences(element) else { continue }
            if preferences.default == .roster { preferences.rosterJIDs = try await Self.rosterJIDs(user, server) }
            set(preferences, of: user)
        }
    }

    /// Refreshes the roster snapshot of a user whose default is `roster`.
    func refreshRoster(of owner: String, _ server: ServerContext) async throws {
        guard preferences(of: owner).default == .roster else { return }
        let jids = try await Self.rosterJIDs(owner, server)
        table.withLockedValue { $0[owner]?.rosterJIDs = jids }
    }

    static func rosterJIDs(_ owner: String, _ server: ServerContext) async throws -> Set<String> {
        Set(try await server.stores.rosters.roster(of: owner).items.filter(\.inRoster).map(\.jid))
    }
}
