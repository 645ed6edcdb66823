import NIOConcurrencyHelpers
import Server
import Storage
import XMLStream
import XMPPCore

/// XEP-0191 blocking command: a user blocks addresses; nothing from them reaches the user,
/// and the user cannot accidentally write to them.
///
/// Every non-empty blocklist is kept in memory (loaded at start-up, updated on every change;
/// people block few addresses), so the per-stanza check on the hot path is a set lookup and
/// holds for offline users too.
public struct BlockingModule: ServerModule {
    public let id = "blocking"
    static let ns = "urn:xmpp:blocking"
    static let errors = "urn:xmpp:blocking:errors"
    private let cache = BlocklistCache()

    public init() {}

    public func register(in registry: inout ModuleRegistry) {
        registry.addServerFeature(Self.ns)
        let cache = self.cache
        registry.handleIQ(Self.ns, target: .account) { request in
            guard request.isToSelf else { throw StanzaError.forbidden }
            let user = request.from.bare.description
            let store = request.server.stores.blocklists
            switch (request.isSet, request.payload.name) {
            case (false, "blocklist"):
                let list = try await store.blocklist(of: user)
                cache.set(user, Set(list))
                var result = XMLElement("blocklist", xmlns: Self.ns)
                for jid in list { result.append(XMLElement("item", xmlns: Self.ns, ["jid": jid])) }
                return result
            case (true, "block"), (true, "unblock"):
                let blocking = request.payload.name == "block"
                var jids: [String] = []
                for item in request.payload.elements where item.name == "item" {
                    guard let value = item[attribute: "jid"], let jid = try? JID(value) else { throw StanzaError(.jidMalformed) }
                    jids.append(jid.description)
                }
                if blocking {
                    guard !jids.isEmpty else { throw StanzaError(.badRequest, text: "block at least one address") }
                    try await store.block(jids, for: user)
                } else {
                    try await store.unblock(jids.isEmpty ? nil : jids, for: user)
                }
                cache.set(user, Set(try await store.blocklist(of: user)))
                Self.push(request.payload, to: user, server: request.server)
                if blocking { Self.disappear(request.from.bare, from: jids, server: request.server) }
                return nil
            default:
                throw StanzaError.badRequest
            }
        }
        registry.onStart { server in
            for (user, list) in try await server.stores.blocklists.allBlocklists() { cache.set(user, Set(list)) }
        }
        registry.onDeliveryFilter { stanza, from, to in
            // Most deployments block nobody: no bare JID made as text for every stanza then.
            guard !cache.isEmpty else { return .allow }
            let type = stanza.stanzaType
            if let list = cache.list(to.bare.description), Self.matches(list, from) {
                // Inbound from a blocked address: messages and requests bounce, the rest vanishes.
                if stanza.name == "message" && type != "error" || stanza.name == "iq" && (type == "get" || type == "set") {
                    return .reject(.serviceUnavailable)
                }
                return .drop
            }
            if let list = cache.list(from.bare.description), Self.matches(list, to) {
                if stanza.name == "presence" && stanza[attribute: "to"] == nil { return .drop }
                if type == "error" || type == "result" { return .drop }
                return .reject(StanzaError(.notAcceptable, applicationCondition: XMLElement("blocked", xmlns: Self.errors)))
            }
            return .allow
        }
    }

    /// A list entry matches a full JID, its bare JID or its domain (XEP-0191 §3.4).
    static func matches(_ list: Set<String>, _ jid: JID) -> Bool {
        if list.contains(jid.description) || list.contains(jid.domainpart) { return true }
        return jid.resourcepart != nil && list.contains(jid.bare.description)
    }

    /// Tells every session of the user about the change (XEP-0191 §3.3 push).
    static func push(_ change: XMLElement, to user: String, server: ServerContext) {
        for session in server.router.sessions(of: user) {
            var iq = XMLElement("iq", xmlns: NS.client, ["type": "set", "id": "block-push", "to": session.jid.description])
            iq.append(change)
            session.deliver(iq)
        }
    }

    /// Newly blocked local contacts see the user go offline.
    static func disappear(_ user: JID, from jids: [String], server: ServerContext) {
        let sessions = server.router.availableSessions(of: user.description)
        for value in jids {
            guard let jid = try? JID(value), server.isLocal(jid) else { continue }
            for session in sessions {
                let presence = XMLElement(
                    "presence", xmlns: NS.client, ["type": "unavailable", "from": session.jid.description, "to": value])
                let targets = jid.resourcepart == nil
                    ? server.router.availableSessions(of: jid.description) : server.router.session(jid).map { [$0] } ?? []
                for target in targets { target.deliver(presence) }
            }
        }
    }
}

/// In-memory blocklists of users with sessions.
final class BlocklistCache: Sendable {
    private let lists = NIOLockedValueBox<[String: Set<String>]>([:])

    func list(_ user: String) -> Set<String>? {
        lists.withLockedValue { $0[user] }
    }

    /// Whether no user with a session blocks anyone.
    var isEmpty: Bool { lists.withLockedValue { $0.isEmpty } }

    func set(_ user: String, _ list: Set<String>) {
        lists.withLockedValue { $0[user] = list.isEmpty ? nil : list }
    }
}
