import Server
import Storage
import XMLStream
import XMPPCore

/// RFC 6121 §2 roster management, with roster versioning (XEP-0237).
///
/// With the directory's roster on, the user's colleagues (own units and always-visible units)
/// are merged in as server-managed items: groups named by unit path, subscription `both`.
public struct RosterModule: ServerModule {
    public let id = "roster"
    let directory: DirectoryRuntime

    public init(directory: DirectoryRuntime = DirectoryRuntime()) {
        self.directory = directory
    }

    public func register(in registry: inout ModuleRegistry) {
        registry.addStreamFeature(XMLElement("ver", xmlns: NS.rosterVersioning))
        registry.handleIQ(NS.roster, target: .account) { request in
            guard request.isToSelf else { throw StanzaError.forbidden }
            return request.isSet ? try await set(request) : try await get(request)
        }
    }

    private func get(_ request: IQRequest) async throws -> XMLElement? {
        let user = request.from.bare.description
        let roster = try await request.server.stores.rosters.roster(of: user)
        request.session?.updatePresence { $0.interestedInRoster = true }
        let version = directory.rosterVersion(roster.version)
        if let asked = request.payload[attribute: "ver"], asked == version {
            return nil
        }
        var query = XMLElement("query", xmlns: NS.roster, ["ver": version])
        for item in directory.mergedItems(roster.items, user: user, server: request.server) {
            query.append(RosterPush.element(for: item))
        }
        return query
    }

    private func set(_ request: IQRequest) async throws -> XMLElement? {
        let items = Array(request.payload.elements)
        guard items.count == 1, let element = items.first, element.name == "item",
            let jidString = element[attribute: "jid"]
        else {
            throw StanzaError(.badRequest, text: "a roster set carries exactly one item with a jid")
        }
        let contact: JID
        do {
            contact = try JID(jidString).bare
        } catch {
            throw StanzaError(.jidMalformed)
        }
        let server = request.server
        let user = request.from.bare
        let rosters = server.stores.rosters
        if element[attribute: "subscription"] == "remove" {
            guard let existing = try await rosters.item(of: user.description, contact: contact.description), existing.inRoster else {
                throw StanzaError.itemNotFound
            }
            if existing.subscription.userSeesContact || existing.askSubscribe {
                try await Subscriptions.process(.unsubscribe, from: user, to: contact, stanza: nil, server: server, directory: directory)
            }
            if existing.subscription.contactSeesUser || existing.pendingIn {
                try await Subscriptions.process(.unsubscribed, from: user, to: contact, stanza: nil, server: server, directory: directory)
            }
            let version = directory.rosterVersion(try await rosters.remove(contact.description, of: user.description))
            if let colleague = directoryGroups(of: contact, for: user, server: server) {
                // A directory colleague stays: only the user's own name and groups go.
                let item = directory.item(for: colleague.0, groups: colleague.1, personal: nil, snapshot: directory.snapshot, server: server)
                RosterPush.push(item, version: version, user: user.description, server: server)
            } else {
                RosterPush.push(RosterItem(jid: contact.description), removed: true, version: version, user: user.description, server: server)
            }
            return nil
        }
        var groups: [String] = []
        for group in element.elements where group.name == "group" {
            let name = group.text
            guard !name.isEmpty, name.utf8.count <= 1024 else { throw StanzaError(.notAcceptable, text: "empty or over-long group name") }
            guard !groups.contains(name) else { throw StanzaError(.badRequest, text: "duplicate group") }
            groups.append(name)
        }
        if let name = element[attribute: "name"], name.utf8.count > 1024 {
            throw StanzaError(.notAcceptable, text: "over-long name")
        }
        var item = try await rosters.item(of: user.description, contact: contact.description) ?? RosterItem(jid: contact.description)
        item.name = element[attribute: "name"]
        item.groups = groups
        item.inRoster = true
        let version = directory.rosterVersion(try await rosters.put(item, of: user.description))
        var shown = item
        if let colleague = directoryGroups(of: contact, for: user, server: server) {
            shown = directory.item(for: colleague.0, groups: colleague.1, personal: item, snapshot: directory.snapshot, server: server)
        }
        RosterPush.push(shown, version: version, user: user.description, server: server)
        return nil
    }

    /// The directory's groups for `contact` in `user`'s roster, if the contact is a colleague shown there.
    private func directoryGroups(of contact: JID, for user: JID, server: ServerContext) -> (String, [String])? {
        guard directory.rosterEnabled, server.isLocal(contact), let local = contact.localpart, let own = user.localpart else { return nil }
        guard let groups = directory.snapshot.contacts(of: own)[local] else { return nil }
        return (local, groups)
    }
}

/// Roster item serialisation and pushes to a user's interested resources.
enum RosterPush {
    static func element(for item: RosterItem, removed: Bool = false) -> XMLElement {
        var element = XMLElement("item", xmlns: NS.roster, ["jid": item.jid])
        if removed {
            element[attribute: "subscription"] = "remove"
            return element
        }
        element[attribute: "subscription"] = item.subscription.rawValue
        if let name = item.name { element[attribute: "name"] = name }
        if item.askSubscribe { element[attribute: "ask"] = "subscribe" }
        for group in item.groups {
            element.append(XMLElement("group", xmlns: NS.roster).withText(group))
        }
        return element
    }

    static func push(_ item: RosterItem, removed: Bool = false, version: String, user: String, server: ServerContext) {
        guard item.inRoster || removed else { return }
        var query = XMLElement("query", xmlns: NS.roster, ["ver": version])
        query.append(element(for: item, removed: removed))
        var iq = XMLElement("iq", xmlns: NS.client, ["type": "set", "id": "push-\(version)"])
        iq.append(query)
        server.deliverToInterested(iq, bare: user)
    }
}
