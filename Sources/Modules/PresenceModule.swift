import Server
import Storage
import XMLStream
import XMPPCore

/// RFC 6121 §4 presence: broadcast to subscribers, probes at login, directed presence,
/// unavailable on logout, and subscription stanzas (delegated to `Subscriptions`).
///
/// Directory colleagues (see `DirectoryRuntime`) share presence as if subscribed both ways.
public struct PresenceModule: ServerModule {
    public let id = "presence"
    let directory: DirectoryRuntime

    public init(directory: DirectoryRuntime = DirectoryRuntime()) {
        self.directory = directory
    }

    public func register(in registry: inout ModuleRegistry) {
        registry.addAccountFeature("http://jabber.org/protocol/disco#info")
        let directory = self.directory
        registry.onPresence { context in
            guard let session = context.session else { return .pass }
            try await handle(context.stanza, to: context.to, session: session, server: context.server)
            return .handled
        }
        registry.onSessionEnd { session, server in
            let state = session.presence
            guard state.available || !state.directedTo.isEmpty else { return }
            let unavailable = XMLElement(
                "presence", xmlns: NS.client, ["type": "unavailable", "from": session.jid.description])
            try await Self.broadcast(unavailable, available: false, session: session, server: server, directory: directory)
        }
    }

    private func handle(_ stanza: XMLElement, to: JID?, session: SessionHandle, server: ServerContext) async throws {
        let type = stanza.stanzaType
        switch type {
        case nil, "unavailable":
            if let to {
                try directed(stanza, to: to, available: type == nil, session: session, server: server)
            } else {
                try await Self.broadcast(stanza, available: type == nil, session: session, server: server, directory: directory)
            }
        case "subscribe", "subscribed", "unsubscribe", "unsubscribed":
            guard let to, let kind = Subscriptions.Kind(rawValue: type ?? "") else {
                throw StanzaError(.badRequest, text: "subscription requests need a 'to'")
            }
            try await Subscriptions.process(
                kind, from: session.jid.bare, to: to.bare, stanza: stanza, server: server, directory: directory)
        case "probe":
            break  // Probes are the server's business (RFC 6121 §4.3).
        case "error":
            if let to { server.deliverPresence(stanza, to: to) }
        default:
            throw StanzaError(.badRequest, text: "unknown presence type")
        }
    }

    private func directed(_ stanza: XMLElement, to: JID, available: Bool, session: SessionHandle, server: ServerContext) throws {
        guard server.isLocal(to) else {
            // No server-to-server link yet: say so instead of leaving the client waiting (e.g. a room join).
            throw StanzaError(.remoteServerNotFound)
        }
        session.updatePresence {
            if available {
                $0.directedTo.insert(to.description)
            } else {
                $0.directedTo.remove(to.description)
            }
        }
        server.deliverPresence(stanza, to: to)
    }

    static func broadcast(
        _ stanza: XMLElement, available: Bool, session: SessionHandle, server: ServerContext, directory: DirectoryRuntime
    ) async throws {
        let priority = min(127, max(-128, Int(stanza.child("priority")?.text.trimmingCharacters(in: .whitespaces) ?? "") ?? 0))
        let (wasAvailable, directed) = session.updatePresence { state -> (Bool, Set<String>) in
            let was = state.available
            state.available = available
            state.priority = priority
            state.presence = available ? stanza : nil
            var directed: Set<String> = []
            if !available {
                directed = state.directedTo
                state.directedTo = []
            }
            return (was, directed)
        }
        let user = session.bareKey
        let roster = try await server.stores.rosters.roster(of: user)
        // Subscribers and the user's own available resources (including this one) see it.
        var sentTo: Set<String> = []
        for item in roster.items where item.inRoster && item.subscription.contactSeesUser {
            guard let contact = try? JID(item.jid) else { continue }
            var copy = stanza
            copy[attribute: "to"] = item.jid
            server.deliverPresence(copy, to: contact)
            sentTo.insert(item.jid)
        }
        // Directory colleagues see it without a subscription.
        let username = session.jid.localpart ?? ""
        if directory.rosterEnabled {
            switch directory.snapshot.viewers(of: username) {
            case .users(let viewers):
                for viewer in viewers {
                    let bare = "\(viewer)@\(server.domain)"
                    guard !sentTo.contains(bare) else { continue }
                    let targets = server.router.availableSessions(of: bare)
                    guard !targets.isEmpty, let jid = try? JID(bare) else { continue }
                    var copy = stanza
                    copy[attribute: "to"] = bare
                    server.deliverPresence(copy, to: jid)
                    sentTo.insert(bare)
                }
            case .everyone:
                for target in server.router.allSessions() where target.bareKey != user && !sentTo.contains(target.bareKey) {
                    guard target.readPresence({ $0.available }) else { continue }
                    var copy = stanza
                    copy[attribute: "to"] = target.jid.description
                    server.deliverPresence(copy, to: target.jid)
                }
            }
        }
        for own in server.router.availableSessions(of: user) + (available ? [] : [session]) {
            var copy = stanza
            copy[attribute: "to"] = own.jid.description
            own.deliver(copy)
        }
        for target in directed where !sentTo.contains(target) && !sentTo.contains((try? JID(target).bare.description) ?? target) {
            guard let jid = try? JID(target) else { continue }
            var copy = stanza
            copy[attribute: "to"] = target
            server.deliverPresence(copy, to: jid)
        }
        guard available, !wasAvailable else { return }

        // Initial presence: probe the contacts the user is subscribed to (all local).
        for item in roster.items where item.inRoster && item.subscription.userSeesContact {
            for contactSession in server.router.availableSessions(of: item.jid) {
                if var presence = contactSession.presence.presence {
                    presence[attribute: "to"] = session.jid.description
                    session.deliver(presence)
                }
            }
        }
        if directory.rosterEnabled {
            let probed = Set(roster.items.filter { $0.inRoster && $0.subscription.userSeesContact }.map(\.jid))
            for contact in directory.snapshot.contacts(of: username).keys {
                let bare = "\(contact)@\(server.domain)"
                guard !probed.contains(bare) else { continue }
                for contactSession in server.router.availableSessions(of: bare) {
                    if var presence = contactSession.presence.presence {
                        presence[attribute: "to"] = session.jid.description
                        session.deliver(presence)
                    }
                }
            }
        }
        for own in server.router.availableSessions(of: user) where own != session {
            if var presence = own.presence.presence {
                presence[attribute: "to"] = session.jid.description
                session.deliver(presence)
            }
        }
        // Subscription requests that arrived while the user was offline.
        for item in roster.items where item.pendingIn {
            var request = (item.pendingInStanza.flatMap { try? XMLElement.parse($0) })
                ?? XMLElement("presence", xmlns: NS.client, ["type": "subscribe", "from": item.jid])
            request[attribute: "to"] = session.jid.description
            session.deliver(request)
        }
        await server.sessionBecameAvailable(session)
    }
}
