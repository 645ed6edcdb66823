import Foundation
import Server
import Storage
import XMLStream
import XMPPCore

/// XEP-0163 personal eventing: every account is a small publish-subscribe service on its bare
/// JID. Clients keep their avatar (XEP-0084), bookmarks (XEP-0402), OMEMO device lists and
/// bundles (XEP-0384) and private data (XEP-0223) there; the server stores, guards by access
/// model and pushes new items to the owner's and contacts' online sessions. Contacts also get
/// the last item of each node when they come online (auto-subscription).
public struct PEPModule: ServerModule {
    public let id = "pep"
    static let ns = "http://jabber.org/protocol/pubsub"
    static let owner = "http://jabber.org/protocol/pubsub#owner"
    static let event = "http://jabber.org/protocol/pubsub#event"
    /// Keep at most this many items in a node that asks for "max".
    static let maxItemsCap = 1000

    public init() {}

    public func register(in registry: inout ModuleRegistry) {
        registry.addAccountIdentity(category: "pubsub", type: "pep")
        for feature in ["publish", "auto-create", "publish-options", "last-published", "retrieve-items", "retract-items", "delete-nodes", "access-presence", "access-open", "access-whitelist"] {
            registry.addAccountFeature(Self.ns + "#" + feature)
            registry.addServerFeature(Self.ns + "#" + feature)
        }
        registry.handleIQ(Self.ns, target: .account) { request in try await Self.handle(request) }
        registry.handleIQ(Self.owner, target: .account) { request in
            guard request.isToSelf, request.isSet, let delete = request.payload.child("delete", namespace: Self.owner),
                let name = delete[attribute: "node"]
            else { throw StanzaError.featureNotImplemented }
            guard try await request.server.stores.pubsub.deleteNode(owner: request.from.bare.description, name: name) else {
                throw StanzaError.itemNotFound
            }
            return nil
        }
        registry.onSessionAvailable { session, server in
            try await Self.sendLastItems(to: session, server: server)
        }
    }

    private static func handle(_ request: IQRequest) async throws -> XMLElement? {
        let owner = request.to.bare.description
        let store = request.server.stores.pubsub
        if request.isSet {
            guard request.isToSelf else { throw StanzaError.forbidden }
            if let publish = request.payload.child("publish", namespace: ns) {
                return try await self.publish(publish, options: request.payload.child("publish-options", namespace: ns), request: request)
            }
            if let retract = request.payload.child("retract", namespace: ns), let name = retract[attribute: "node"] {
                let ids = retract.elements.compactMap { $0.name == "item" ? $0[attribute: "id"] : nil }
                guard let itemID = ids.first, ids.count == 1 else { throw StanzaError(.badRequest, text: "retract one item") }
                guard let node = try await store.node(owner: owner, name: name) else { throw StanzaError.itemNotFound }
                guard try await store.retract(owner: owner, node: name, id: itemID) else { throw StanzaError.itemNotFound }
                var items = XMLElement("items", xmlns: event, ["node": name])
                items.append(XMLElement("retract", xmlns: event, ["id": itemID]))
                try await notify(items, node: node, server: request.server)
                return nil
            }
            throw StanzaError.featureNotImplemented
        }
        guard let itemsRequest = request.payload.child("items", namespace: ns), let name = itemsRequest[attribute: "node"] else {
            throw StanzaError.featureNotImplemented
        }
        guard let node = try await store.node(owner: owner, name: name) else { throw StanzaError.itemNotFound }
        guard try await mayRead(node, reader: request.from, server: request.server) else {
            // XEP-0060 §6.5.9: the access model's own error.
            let errors = "http://jabber.org/protocol/pubsub#errors"
            if node.accessModel == .presence {
                throw StanzaError(
                    .notAuthorized, text: "only contacts who receive the owner's presence may read this node",
                    applicationCondition: XMLElement("presence-subscription-required", xmlns: errors))
            }
            throw StanzaError(.notAllowed, text: "this node is closed", applicationCondition: XMLElement("closed-node", xmlns: errors))
        }
        let ids = itemsRequest.elements.compactMap { $0.name == "item" ? $0[attribute: "id"] : nil }
        let limit = itemsRequest[attribute: "max_items"].flatMap(Int.init)
        var items = XMLElement("items", xmlns: ns, ["node": name])
        for item in try await store.items(owner: owner, node: name, ids: ids, limit: limit) {
            items.append(element(for: item, namespace: ns))
        }
        var pubsub = XMLElement("pubsub", xmlns: ns)
        pubsub.append(items)
        return pubsub
    }

    private static func publish(_ publish: XMLElement, options: XMLElement?, request: IQRequest) async throws -> XMLElement {
        guard let name = publish[attribute: "node"], !name.isEmpty else { throw StanzaError(.badRequest, text: "a node is required") }
        let items = Array(publish.elements.filter { $0.name == "item" })
        guard items.count == 1, let item = items.first else { throw StanzaError(.badRequest, text: "publish one item") }
        let payloads = Array(item.elements)
        guard payloads.count == 1, let payload = payloads.first else { throw StanzaError(.badRequest, text: "an item carries one payload") }
        let owner = request.from.bare.description
        let store = request.server.stores.pubsub
        let existing = try await store.node(owner: owner, name: name)
        var node = existing ?? PubSubNode(owner: owner, name: name)
        let isNew = existing == nil
        // publish-options: applied to a new node; for an existing node they are preconditions.
        let fields: [XMLElement] = options?.child("x", namespace: NS.dataForms).map { Array($0.elements) } ?? []
        for field in fields where field.name == "field" {
            let value = field.child("value")?.text ?? ""
            switch field[attribute: "var"] {
            case "pubsub#access_model":
                guard let model = AccessModel(rawValue: value) else { throw preconditionNotMet("unsupported access model") }
                if isNew { node.accessModel = model } else if node.accessModel != model { throw preconditionNotMet("access model differs") }
            case "pubsub#max_items":
                let max = value == "max" ? maxItemsCap : min(maxItemsCap, Int(value) ?? 1)
                node.maxItems = max
            default:
                break
            }
        }
        if node != existing { try await store.saveNode(node) }
        let itemID = item[attribute: "id"] ?? UUID().uuidString.lowercased()
        let stored = PubSubItem(id: itemID, payload: XMLSerializer.string(payload), time: Date().timeIntervalSince1970)
        try await store.publish(stored, to: node)
        var notification = XMLElement("items", xmlns: event, ["node": name])
        notification.append(element(for: stored, namespace: event))
        try await notify(notification, node: node, server: request.server)
        var result = XMLElement("publish", xmlns: ns, ["node": name])
        result.append(XMLElement("item", xmlns: ns, ["id": itemID]))
        var pubsub = XMLElement("pubsub", xmlns: ns)
        pubsub.append(result)
        return pubsub
    }

    private static func preconditionNotMet(_ text: String) -> StanzaError {
        StanzaError(.conflict, text: text, applicationCondition: XMLElement("precondition-not-met", xmlns: "http://jabber.org/protocol/pubsub#errors"))
    }

    private static func element(for item: PubSubItem, namespace: String) -> XMLElement {
        var element = XMLElement("item", xmlns: namespace, ["id": item.id])
        if let payload = try? XMLElement.parse(item.payload) { element.append(payload) }
        return element
    }

    /// Owner always; `open`: anyone; `presence`: contacts the owner shares presence with.
    static func mayRead(_ node: PubSubNode, reader: JID, server: ServerContext) async throws -> Bool {
        if reader.bare.description == node.owner { return true }
        switch node.accessModel {
        case .open: return true
        case .whitelist: return false
        case .presence:
            // Directory colleagues share presence without subscriptions, so they read too.
            if let directory = server.modules.service(DirectoryRuntime.self), directory.rosterEnabled,
                let ownerName = try? JID(node.owner).localpart, let readerName = reader.localpart, server.isLocal(reader),
                directory.snapshot.sees(readerName, ownerName)
            {
                return true
            }
            return try await server.stores.rosters.item(of: node.owner, contact: reader.bare.description)?.subscription.contactSeesUser ?? false
        }
    }

    /// Sends an event to the owner's sessions and to the online sessions of everyone who may read it
    /// and shares presence with the owner.
    static func notify(_ items: XMLElement, node: PubSubNode, server: ServerContext) async throws {
        var recipients = server.router.sessions(of: node.owner)
        if node.accessModel != .whitelist {
            var seen = Set<String>()
            for item in try await server.stores.rosters.roster(of: node.owner).items where item.subscription.contactSeesUser {
                seen.insert(item.jid)
                recipients += server.router.availableSessions(of: item.jid)
            }
            if let directory = server.modules.service(DirectoryRuntime.self), directory.rosterEnabled,
                let ownerName = try? JID(node.owner).localpart
            {
                switch directory.snapshot.viewers(of: ownerName) {
                case .users(let users):
                    for user in users where !seen.contains("\(user)@\(server.domain)") {
                        recipients += server.router.availableSessions(of: "\(user)@\(server.domain)")
                    }
                case .everyone:
                    recipients += server.router.allSessions().filter {
                        $0.readPresence({ $0.available }) && $0.bareKey != node.owner && !seen.contains($0.bareKey)
                    }
                }
            }
        }
        for session in recipients {
            session.deliver(message(items, from: node.owner, to: session.jid))
        }
    }

    static func message(_ items: XMLElement, from owner: String, to: JID) -> XMLElement {
        var eventElement = XMLElement("event", xmlns: event)
        eventElement.append(items)
        var message = XMLElement("message", xmlns: NS.client, ["from": owner, "to": to.description, "type": "headline"])
        message.append(eventElement)
        return message
    }

    /// At initial presence: the last item of each readable node of the user and of the contacts
    /// whose presence the user receives.
    static func sendLastItems(to session: SessionHandle, server: ServerContext) async throws {
        let user = session.bareKey
        let roster = try await server.stores.rosters.roster(of: user)
        var owners = [user] + roster.items.filter { $0.subscription.userSeesContact }.map(\.jid)
        if let directory = server.modules.service(DirectoryRuntime.self), directory.rosterEnabled, let name = session.jid.localpart {
            let known = Set(owners)
            owners += directory.snapshot.contacts(of: name).keys.map { "\($0)@\(server.domain)" }.filter { !known.contains($0) }
        }
        let store = server.stores.pubsub
        for node in try await store.nodes(owners: owners) {
            guard try await mayRead(node, reader: session.jid, server: server),
                let last = try await store.items(owner: node.owner, node: node.name, ids: [], limit: 1).first
            else { continue }
            var items = XMLElement("items", xmlns: event, ["node": node.name])
            items.append(element(for: last, namespace: event))
            session.deliver(message(items, from: node.owner, to: session.jid))
        }
    }
}
