import Server
import XMLStream
import XMPPCore

/// XEP-0280 message carbons: a user's other devices get copies of the chats it sends and
/// receives, so every device shows the whole conversation.
public struct CarbonsModule: ServerModule {
    public let id = "carbons"
    static let ns = "urn:xmpp:carbons:2"
    static let forward = "urn:xmpp:forward:0"
    public init() {}

    public func register(in registry: inout ModuleRegistry) {
        registry.addServerFeature(Self.ns)
        registry.handleIQ(Self.ns, target: .account) { request in
            guard request.isToSelf, request.isSet, let session = request.session else { throw StanzaError.badRequest }
            switch request.payload.name {
            case "enable": session.updatePresence { $0.carbons = true }
            case "disable": session.updatePresence { $0.carbons = false }
            default: throw StanzaError.badRequest
            }
            return nil
        }
        registry.onMessageRouted { event in
            let router = event.server.router
            // Who would get a carbon is looked at first: nobody, for a user with one session
            // (most messages), and then the message itself need not be examined.
            // Sent carbons: the sender's other devices see what it sent.
            let sentTo = event.sender.map { sender in router.sessions(of: sender.bareKey).filter { $0 != sender && $0.readPresence { $0.carbons } } } ?? []
            // Received carbons: the recipient's devices that did not get the message.
            let receivedBy =
                event.server.isLocal(event.to) && event.to.localpart != nil && !event.recipients.isEmpty
                ? router.sessions(of: event.toBareKey).filter {
                    $0.readPresence({ $0.carbons }) && !event.recipients.contains($0) && $0 != event.sender
                } : []
            guard !sentTo.isEmpty || !receivedBy.isEmpty, Self.eligible(event.stanza) else { return }
            if let sender = event.sender, !sentTo.isEmpty {
                // The sender's devices see the sender's own archive id, never the recipient's.
                var sent = event.stanza
                sent.removeChildren { $0.name == "stanza-id" && $0.namespace == "urn:xmpp:sid:0" }
                if let own = event.marks.senderArchiveID {
                    sent.append(XMLElement("stanza-id", xmlns: "urn:xmpp:sid:0", ["id": own, "by": sender.bareKey]))
                }
                for session in sentTo { session.deliver(Self.wrap(sent, "sent", for: session)) }
            }
            for session in receivedBy { session.deliver(Self.wrap(event.stanza, "received", for: session)) }
        }
    }

    /// Chats, and normal messages with a body; not private ones, errors or carbons themselves.
    static func eligible(_ stanza: XMLElement) -> Bool {
        let type = stanza.stanzaType ?? "normal"
        guard type == "chat" || (type == "normal" && stanza.child("body") != nil) else { return false }
        if stanza.child("private", namespace: ns) != nil || stanza.child("no-copy", namespace: "urn:xmpp:hints") != nil {
            return false
        }
        return stanza.child("sent", namespace: ns) == nil && stanza.child("received", namespace: ns) == nil
    }

    static func wrap(_ stanza: XMLElement, _ direction: String, for session: SessionHandle) -> XMLElement {
        var forwarded = XMLElement("forwarded", xmlns: forward)
        var original = stanza
        original.namespace = NS.client
        forwarded.append(original)
        var wrapper = XMLElement(direction, xmlns: ns)
        wrapper.append(forwarded)
        var message = XMLElement(
            "message", xmlns: NS.client,
            ["from": session.jid.bare.description, "to": session.jid.description, "type": stanza.stanzaType ?? "normal"])
        message.append(wrapper)
        return message
    }
}

/// XEP-0352 client state indication: an inactive (backgrounded) client gets presence updates
/// batched until it becomes active or something important arrives.
public struct ClientStateModule: ServerModule {
    public let id = "csi"
    static let ns = "urn:xmpp:csi:0"
    public init() {}

    public func register(in registry: inout ModuleRegistry) {
        registry.addStreamFeature(XMLElement("csi", xmlns: Self.ns))
        registry.handleNonza(Self.ns) { element, session in
            switch element.name {
            case "active": session.setClientActive(true)
            case "inactive": session.setClientActive(false)
            default: return false
            }
            return true
        }
    }
}
