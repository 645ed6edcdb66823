import Foundation
import Server
import Storage
import XMLStream
import XMPPCore

/// XEP-0160 offline messages: stored durably when no session takes them, delivered with a
/// XEP-0203 delay stamp at the next available presence, removed only after delivery.
public struct OfflineModule: ServerModule {
    public let id = "offline"
    /// Beyond this many stored messages a user's new messages bounce (`service-unavailable`).
    public var maxMessagesPerUser: Int

    public init(maxMessagesPerUser: Int = 10_000) {
        self.maxMessagesPerUser = maxMessagesPerUser
    }

    public func register(in registry: inout ModuleRegistry) {
        registry.addServerFeature("msgoffline")
        let limit = maxMessagesPerUser
        registry.onUndeliverableMessage { context in
            guard let to = context.to, Self.worthStoring(context.stanza) else { return .pass }
            let offline = context.server.stores.offline
            let user = to.bare.description
            guard try await offline.count(for: user) < limit else { return .pass }
            var stanza = context.stanza
            let now = Date()
            stanza.append(
                XMLElement("delay", xmlns: NS.delay, ["from": context.server.domain, "stamp": Timestamp.string(now)]))
            try await offline.store(XMLSerializer.string(stanza), for: user, at: now.timeIntervalSince1970)
            context.server.metrics.countOfflineStored()
            return .handled
        }
        registry.onSessionAvailable { session, server in
            guard session.presence.priority >= 0 else { return }
            let user = session.bareKey
            let messages = try await server.stores.offline.messages(for: user)
            guard !messages.isEmpty else { return }
            var delivered: [Int64] = []
            for message in messages {
                guard var stanza = try? XMLElement.parse(message.stanza) else {
                    server.logger.error("dropping unreadable offline message", metadata: ["offline.id": "\(message.id)"])
                    delivered.append(message.id)
                    continue
                }
                stanza[attribute: "to"] = session.jid.description
                session.deliver(stanza)
                delivered.append(message.id)
            }
            try await server.stores.offline.remove(ids: delivered, for: user)
        }
    }

    /// Chat and normal messages with content; not chat-state-only notifications.
    static func worthStoring(_ stanza: XMLElement) -> Bool {
        let type = stanza.stanzaType ?? "normal"
        guard type == "chat" || type == "normal" else { return false }
        return stanza.elements.contains { element in
            element.namespace != "http://jabber.org/protocol/chatstates"
        }
    }
}

/// XEP-0082 date-time strings.
enum Timestamp {
    static func string(_ date: Date) -> String {
        date.formatted(.iso8601.year().month().day().dateSeparator(.dash).time(includingFractionalSeconds: true).timeSeparator(.colon).timeZone(separator: .omitted))
    }
}
