import NIOConcurrencyHelpers
import Server
import XMLStream
import XMPPCore

/// XEP-0357 push notifications: a mobile app registers its app server; when a message arrives
/// while the app sleeps (session detached, or no session at all), the server publishes a
/// summary to the app server, which wakes the phone. Bodies are not sent: the summary names
/// only the sender and a count, so message content never leaves the company.
public struct PushModule: ServerModule {
    public let id = "push"
    static let ns = "urn:xmpp:push:0"
    static let storageKey = "push:registrations"

    /// Notable messages pushed per user since they were last online (the summary's message-count).
    let pending = NIOLockedValueBox<[String: Int]>([:])

    public init() {}

    public func register(in registry: inout ModuleRegistry) {
        registry.addAccountFeature(Self.ns)
        registry.handleIQ(Self.ns, target: .account) { request in
            guard request.isToSelf, request.isSet else { throw StanzaError.badRequest }
            let store = request.server.stores.privateXML
            let user = request.from.bare.description
            var registrations = try await Self.registrations(of: user, server: request.server)
            guard let jidValue = request.payload[attribute: "jid"], let jid = try? JID(jidValue) else {
                throw StanzaError(.badRequest, text: "a jid is required")
            }
            let node = request.payload[attribute: "node"]
            switch request.payload.name {
            case "enable":
                guard let node, !node.isEmpty else { throw StanzaError(.badRequest, text: "a node is required") }
                registrations.removeAll { $0[attribute: "jid"] == jid.description && $0[attribute: "node"] == node }
                var entry = XMLElement("enable", xmlns: Self.ns, ["jid": jid.description, "node": node])
                if let form = request.payload.child("x", namespace: NS.dataForms) { entry.append(form) }
                registrations.append(entry)
            case "disable":
                registrations.removeAll { $0[attribute: "jid"] == jid.description && (node == nil || $0[attribute: "node"] == node) }
            default:
                throw StanzaError.badRequest
            }
            var document = XMLElement("registrations", xmlns: Self.ns)
            for entry in registrations { document.append(entry) }
            try await store.setDocument(registrations.isEmpty ? nil : XMLSerializer.string(document), of: user, key: Self.storageKey)
            return nil
        }
        let pending = self.pending
        // Back online: nothing is waiting any more.
        registry.onSessionBound { session, _ in pending.withLockedValue { _ = $0.removeValue(forKey: session.bareKey) } }
        registry.onSessionAvailable { session, _ in pending.withLockedValue { _ = $0.removeValue(forKey: session.bareKey) } }
        registry.onMessageRouted { event in
            let server = event.server
            // Push when nobody got it live: stored offline, or only detached sessions took it
            // (looked at first: a message delivered live needs no further look).
            guard event.recipients.allSatisfy({ $0.readPresence { $0.detached } }) else { return }
            guard server.isLocal(event.to), event.to.localpart != nil, Self.notable(event.stanza) else { return }
            let sender = event.stanza[attribute: "from"].flatMap { try? JID($0) }?.bare.description ?? ""
            let user = event.to.bare
            // XEP-0357 §5: the number of messages waiting since the user was last online.
            let count = pending.withLockedValue { counts -> Int in
                counts[user.description, default: 0] += 1
                return counts[user.description] ?? 1
            }
            server.track {
                guard let registrations = try? await Self.registrations(of: user.description, server: server) else { return }
                for registration in registrations {
                    Self.publish(registration, for: user, sender: sender, count: count, server: server)
                }
            }
        }
    }

    /// Messages a person would want to be woken for: chats and normal messages with a body.
    static func notable(_ stanza: XMLElement) -> Bool {
        let type = stanza.stanzaType ?? "normal"
        return (type == "chat" || type == "normal") && stanza.child("body") != nil
    }

    static func registrations(of user: String, server: ServerContext) async throws -> [XMLElement] {
        guard let stored = try await server.stores.privateXML.document(of: user, key: storageKey),
            let document = try? XMLElement.parse(stored)
        else { return [] }
        return Array(document.elements)
    }

    private static func publish(_ registration: XMLElement, for user: JID, sender: String, count: Int, server: ServerContext) {
        guard let target = registration[attribute: "jid"].flatMap({ try? JID($0) }), let node = registration[attribute: "node"] else { return }
        var summary = XMLElement("x", xmlns: NS.dataForms, ["type": "submit"])
        for (name, value) in [("FORM_TYPE", "urn:xmpp:push:summary"), ("message-count", String(count)), ("last-message-sender", sender)] {
            var field = XMLElement("field", xmlns: NS.dataForms, ["var": name])
            field.append(XMLElement("value", xmlns: NS.dataForms).withText(value))
            summary.append(field)
        }
        var notification = XMLElement("notification", xmlns: ns)
        notification.append(summary)
        var item = XMLElement("item", xmlns: "http://jabber.org/protocol/pubsub")
        item.append(notification)
        var publish = XMLElement("publish", xmlns: "http://jabber.org/protocol/pubsub", ["node": node])
        publish.append(item)
        var pubsub = XMLElement("pubsub", xmlns: "http://jabber.org/protocol/pubsub")
        pubsub.append(publish)
        if let options = registration.child("x", namespace: NS.dataForms) {
            var publishOptions = XMLElement("publish-options", xmlns: "http://jabber.org/protocol/pubsub")
            publishOptions.append(options)
            pubsub.append(publishOptions)
        }
        var iq = XMLElement(
            "iq", xmlns: NS.client,
            ["type": "set", "id": "push-\(UInt32.random(in: .min ... .max))", "from": user.description, "to": target.description])
        iq.append(pubsub)
        if server.isLocal(target) {
            if target.resourcepart != nil {
                server.router.session(target)?.deliver(iq)
            } else {
                for session in server.router.availableSessions(of: target.bare.description) { session.deliver(iq) }
            }
        } else {
            server.logger.notice("push app server is on another domain; server-to-server is not available yet",
                metadata: ["push.jid": "\(target)"])
        }
    }
}
