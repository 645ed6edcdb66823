import Server
import Storage
import XMLStream
import XMPPCore

/// RFC 6121 §3 presence subscriptions between local users: both sides' roster state,
/// roster pushes, delivery of the subscription stanza and the presence that follows.
enum Subscriptions {
    enum Kind: String {
        case subscribe, subscribed, unsubscribe, unsubscribed
    }

    /// Pure state transitions (RFC 6121 Appendix A), separated for unit tests.
    enum Rules {
        /// Outbound `subscribe` from the user: ask unless already subscribed.
        static func outboundSubscribe(_ item: RosterItem) -> RosterItem {
            var item = item
            item.inRoster = true
            if !item.subscription.userSeesContact { item.askSubscribe = true }
            return item
        }

        /// Inbound `subscribed` at the user who asked: none→to, from→both.
        static func inboundSubscribed(_ item: RosterItem) -> RosterItem? {
            guard item.askSubscribe else { return nil }
            var item = item
            item.askSubscribe = false
            item.subscription = item.subscription == .from ? .both : (item.subscription == .none ? .to : item.subscription)
            return item
        }

        /// Outbound `subscribed` from the contact who was asked: none→from, to→both.
        static func outboundSubscribed(_ item: RosterItem) -> RosterItem? {
            guard item.pendingIn else { return nil }
            var item = item
            item.pendingIn = false
            item.pendingInStanza = nil
            item.inRoster = true
            item.subscription = item.subscription == .to ? .both : (item.subscription == .none ? .from : item.subscription)
            return item
        }

        /// The user stops receiving the contact's presence: to→none, both→from.
        static func dropTo(_ item: RosterItem) -> RosterItem {
            var item = item
            item.askSubscribe = false
            item.subscription = item.subscription == .both ? .from : (item.subscription == .to ? .none : item.subscription)
            return item
        }

        /// The contact stops receiving the user's presence: from→none, both→to.
        static func dropFrom(_ item: RosterItem) -> RosterItem {
            var item = item
            item.pendingIn = false
            item.pendingInStanza = nil
            item.subscription = item.subscription == .both ? .to : (item.subscription == .from ? .none : item.subscription)
            return item
        }
    }

    /// Processes a subscription stanza sent by `user` (bare) to `contact` (bare), for both sides.
    static func process(
        _ kind: Kind, from user: JID, to contact: JID, stanza: XMLElement?, server: ServerContext, directory: DirectoryRuntime
    ) async throws {
        var outbound = stanza ?? XMLElement("presence", xmlns: NS.client)
        outbound[attribute: "type"] = kind.rawValue
        outbound[attribute: "from"] = user.description
        outbound[attribute: "to"] = contact.description
        let rosters = server.stores.rosters
        let userKey = user.description
        let contactKey = contact.description

        // The sender's side.
        let existing = try await rosters.item(of: userKey, contact: contactKey)
        switch kind {
        case .subscribe:
            let updated = Rules.outboundSubscribe(existing ?? RosterItem(jid: contactKey))
            if updated != existing { try await store(updated, of: userKey, server: server, directory: directory) }
        case .unsubscribe:
            if let existing {
                let updated = Rules.dropTo(existing)
                if updated != existing { try await store(updated, of: userKey, server: server, directory: directory) }
            }
        case .subscribed:
            guard let existing, let updated = Rules.outboundSubscribed(existing) else { return }  // no request: ignore
            try await store(updated, of: userKey, server: server, directory: directory)
        case .unsubscribed:
            if let existing {
                let updated = Rules.dropFrom(existing)
                if !updated.inRoster && updated.subscription == .none && !updated.askSubscribe {
                    _ = try await rosters.remove(contactKey, of: userKey)
                } else if updated != existing {
                    try await store(updated, of: userKey, server: server, directory: directory)
                }
            }
            sendUnavailable(of: user, to: contact, server: server, directory: directory)
        }

        // The contact's side (local contacts only: no server-to-server yet).
        guard server.isLocal(contact), try await server.accountExists(contact) else {
            if kind == .subscribe, server.isLocal(contact) {
                // RFC 6121 §3.1.3: a subscription request to a non-existent user is refused.
                try await process(.unsubscribed, from: contact, to: user, stanza: nil, server: server, directory: directory)
            }
            return
        }
        let theirs = try await rosters.item(of: contactKey, contact: userKey)
        switch kind {
        case .subscribe:
            if let theirs, theirs.subscription.contactSeesUser {
                // Already approved: answer on the contact's behalf.
                try await process(.subscribed, from: contact, to: user, stanza: nil, server: server, directory: directory)
                return
            }
            var pending = theirs ?? RosterItem(jid: userKey, inRoster: false)
            pending.pendingIn = true
            pending.pendingInStanza = XMLSerializer.string(outbound)
            // Pending-in is server bookkeeping, not visible roster state: no push (RFC 6121 §3.1.3).
            _ = try await rosters.put(pending, of: contactKey)
            server.deliverPresence(outbound, to: contact)
        case .subscribed:
            guard let theirs, let updated = Rules.inboundSubscribed(theirs) else { return }
            try await store(updated, of: contactKey, server: server, directory: directory)
            server.deliverPresence(outbound, to: contact)
            // The contact now sees the user's available resources.
            for session in server.router.availableSessions(of: userKey) {
                if var presence = session.presence.presence {
                    presence[attribute: "to"] = contactKey
                    server.deliverPresence(presence, to: contact)
                }
            }
        case .unsubscribe:
            if let theirs {
                let updated = Rules.dropFrom(theirs)
                if !updated.inRoster {
                    _ = try await rosters.remove(userKey, of: contactKey)
                } else if updated != theirs {
                    try await store(updated, of: contactKey, server: server, directory: directory)
                }
            }
            server.deliverPresence(outbound, to: contact)
            sendUnavailable(of: contact, to: user, server: server, directory: directory)
        case .unsubscribed:
            if let theirs, theirs.askSubscribe || theirs.subscription.userSeesContact {
                try await store(Rules.dropTo(theirs), of: contactKey, server: server, directory: directory)
                server.deliverPresence(outbound, to: contact)
            }
        }
    }

    private static func store(_ item: RosterItem, of user: String, server: ServerContext, directory: DirectoryRuntime) async throws {
        let version = directory.rosterVersion(try await server.stores.rosters.put(item, of: user))
        var shown = item
        if let owner = DirectoryRuntime.localUsername(user, server), let contact = DirectoryRuntime.localUsername(item.jid, server),
            let groups = directory.rosterEnabled ? directory.snapshot.contacts(of: owner)[contact] : nil
        {
            shown = directory.item(for: contact, groups: groups, personal: item, snapshot: directory.snapshot, server: server)
        }
        RosterPush.push(shown, version: version, user: user, server: server)
    }

    /// Every available resource of `owner` tells `viewer`'s resources it is gone (unless the
    /// directory shares their presence anyway).
    private static func sendUnavailable(of owner: JID, to viewer: JID, server: ServerContext, directory: DirectoryRuntime) {
        if directory.rosterEnabled, let ownerName = owner.localpart, let viewerName = viewer.localpart,
            directory.snapshot.sees(viewerName, ownerName)
        {
            return
        }
        for session in server.router.availableSessions(of: owner.description) {
            let unavailable = XMLElement(
                "presence", xmlns: NS.client,
                ["type": "unavailable", "from": session.jid.description, "to": viewer.description])
            server.deliverPresence(unavailable, to: viewer)
        }
    }
}
