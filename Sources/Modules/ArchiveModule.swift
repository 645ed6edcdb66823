import Foundation
import NIOConcurrencyHelpers
import Server
import Storage
import XMLStream
import XMPPCore

/// XEP-0313 message archive management with XEP-0059 paging, and XEP-0359 stanza ids.
///
/// Every chat message with content is archived for both parties. The copies go through the
/// server's `MessageJournal`: the hot path only appends to an in-memory batch; the journal makes
/// each batch durable with one fsync and applies it to the store in bulk. Stream-management
/// acknowledgements wait for the journal, archive queries for the store, so nothing is reported
/// safe before it is durable and no query misses a message accepted before it.
public struct ArchiveModule: ServerModule {
    public let id = "archive"
    static let ns = "urn:xmpp:mam:2"
    static let stanzaID = "urn:xmpp:sid:0"
    static let rsm = "http://jabber.org/protocol/rsm"
    private let ids = ArchiveIDGenerator.shared
    private let preferences = ArchivePreferenceTable()

    public init() {}

    public func register(in registry: inout ModuleRegistry) {
        registry.addAccountFeature(Self.ns)
        registry.addAccountFeature(Self.stanzaID)
        registry.addServerFeature(Self.stanzaID)
        let ids = self.ids
        let preferences = self.preferences
        registry.onStart { server in try await preferences.load(server) }
        registry.onSessionBound { session, server in try await preferences.refreshRoster(of: session.bareKey, server) }

        registry.onMessagePreparation { message, to, server in
            guard Self.archivable(message.stanza) else { return }
            // Positions are taken before delivery, so the archive order is the order in which
            // the server accepted the messages, whichever event loop finishes first.
            let incoming = ids.next()
            message.marks.incomingPosition = incoming
            message.marks.outgoingPosition = ids.next()
            guard server.isLocal(to), to.localpart != nil else { return }
            let by = message.toBareKey ?? to.bare.description
            // A stanza-id claiming to be ours but set by the sender is a forgery (XEP-0359 §3.3).
            message.stanza.removeChildren { $0.name == "stanza-id" && $0.namespace == Self.stanzaID && $0[attribute: "by"] == by }
            // The recipient's copy will be stored at `incoming`: its id is made from it.
            let uid = ArchiveIDGenerator.uid(position: incoming)
            message.marks.incomingArchiveID = uid
            message.stanza.append(
                XMLElement(name: "stanza-id", namespace: Self.stanzaID, attributes: [XMLAttribute(name: "by", value: by), XMLAttribute(name: "id", value: uid)]))
        }

        registry.onMessageRouted(.high) { event in
            let stanza = event.stanza
            // A local sender's JID is the `from` its session stamped: no need to parse it again.
            // (A position taken in preparation means the message was found archivable there.)
            guard event.marks.incomingPosition != nil || Self.archivable(stanza), let from = event.sender?.jid ?? stanza[attribute: "from"].flatMap({ try? JID($0) }) else { return }
            let server = event.server
            let now = Date().timeIntervalSince1970
            // Each bare JID as text once (a local session has its own already).
            let sender = event.sender?.bareKey ?? from.bare.description
            let recipient = event.toBareKey
            if server.isLocal(event.to), event.to.localpart != nil,
                preferences.archives(owner: recipient, peer: sender)
            {
                // The recipient's copy keeps the recipient's own stanza-id (it is the MAM id).
                let owner = recipient
                let position = event.marks.incomingPosition ?? ids.next()
                let uid = event.marks.incomingArchiveID
                    ?? stanza.firstElement { $0.name == "stanza-id" && $0.namespace == Self.stanzaID && $0[attribute: "by"] == owner }
                    .flatMap { $0[attribute: "id"] } ?? ArchiveIDGenerator.uid(position: position)
                event.journalEntries.append(
                    .archive(
                        ArchiveRecord(
                            id: position, uid: uid, owner: owner, peer: sender, outgoing: false, time: now,
                            stanza: event.text)))
            }
            if server.isLocal(from), from.localpart != nil, sender != recipient,
                preferences.archives(owner: sender, peer: recipient)
            {
                // The same text as the recipient's copy and the audit record, so that the store
                // keeps it once; the recipient's stanza-id is removed when the copy is read
                // (the sender's copy must not carry another archive's id, XEP-0313 §5.1).
                let position = event.marks.outgoingPosition ?? ids.next()
                let uid = ArchiveIDGenerator.uid(position: position)
                event.journalEntries.append(
                    .archive(
                        ArchiveRecord(
                            id: position, uid: uid, owner: sender, peer: recipient, outgoing: true,
                            time: now, stanza: event.text)))
                event.marks.senderArchiveID = uid
            }
        }

        registry.handleIQ(Self.ns, target: .account) { request in
            guard request.isToSelf else { throw StanzaError.forbidden }
            switch request.payload.name {
            case "query":
                guard request.isSet else { return Self.queryForm() }
                return try await Self.query(
                    request.payload, owner: request.from.bare.description, from: nil, to: request.from, server: request.server
                ) { request.session?.deliver($0) }
            case "prefs":
                let owner = request.from.bare.description
                guard request.isSet else { return preferences.preferences(of: owner).element }
                var chosen = try ArchivePreferences(request.payload)
                if chosen.default == .roster { chosen.rosterJIDs = try await ArchivePreferenceTable.rosterJIDs(owner, request.server) }
                try await request.server.stores.privateXML.setDocument(
                    chosen == ArchivePreferences() ? nil : XMLSerializer.string(chosen.element), of: owner, key: ArchivePreferences.storageKey)
                preferences.set(chosen, of: owner)
                return chosen.element
            default:
                throw StanzaError.featureNotImplemented
            }
        }
    }

    /// Namespaces whose presence makes a message worth keeping even without a body:
    /// end-to-end encrypted payloads, retractions (XEP-0424, the enterprise "recall"),
    /// delivery receipts (XEP-0184) and chat markers (XEP-0333).
    static let archivedPayloads: Set<String> = [
        "eu.siacs.conversations.axolotl", "urn:xmpp:message-retract:1", "urn:xmpp:receipts", "urn:xmpp:chat-markers:0",
    ]

    /// Chat and normal messages with content; not errors, headlines or chat states alone.
    static func archivable(_ stanza: XMLElement) -> Bool {
        guard stanza.name == "message" else { return false }
        let type = stanza.stanzaType ?? "normal"
        guard type == "chat" || type == "normal" else { return false }
        return stanza.containsElement { $0.name == "body" || archivedPayloads.contains($0.namespace) }
    }

    /// Answers a XEP-0313 query on `owner`'s archive (a user's, or a room's): the results go
    /// to `to` through `deliver` (from `from`, when set), the returned `<fin/>` ends the IQ.
    static func query(
        _ payload: XMLElement, owner: String, from: String?, to: JID, server: ServerContext,
        deliver: (XMLElement) -> Void
    ) async throws -> XMLElement {
        var query = ArchiveQuery(owner: owner)
        if let form = payload.child("x", namespace: NS.dataForms) {
            for field in form.elements where field.name == "field" {
                let value = field.child("value")?.text ?? ""
                switch field[attribute: "var"] {
                case "with":
                    guard let jid = try? JID(value) else { throw StanzaError(.badRequest, text: "invalid 'with'") }
                    query.with = jid.bare.description
                case "start":
                    guard let date = Self.parseDate(value) else { throw StanzaError(.badRequest, text: "invalid 'start'") }
                    query.start = date
                case "end":
                    guard let date = Self.parseDate(value) else { throw StanzaError(.badRequest, text: "invalid 'end'") }
                    query.end = date
                case "FORM_TYPE", nil:
                    break
                default:
                    throw StanzaError(.featureNotImplemented, text: "unsupported field")
                }
            }
        }
        if let set = payload.child("set", namespace: Self.rsm) {
            if let max = set.child("max")?.text {
                guard let value = Int(max), value >= 0 else { throw StanzaError(.badRequest, text: "invalid <max/>") }
                query.limit = min(value, 250)
            }
            if let after = set.child("after") { query.after = after.text }
            if let before = set.child("before") {
                if before.text.isEmpty {
                    query.fromEnd = true
                } else {
                    query.before = before.text
                }
            }
        }
        // Make the user's own recent messages visible before answering.
        await server.journal.applied()
        guard let page = try await server.stores.archive.query(query) else {
            throw StanzaError(.itemNotFound, text: "no such archive id")
        }
        let queryID = payload[attribute: "queryid"]
        for record in page.records {
            guard var original = try? XMLElement.parse(record.stanza) else { continue }
            // A sent message is stored as routed, with the recipient's archive id (XEP-0313 §5.1).
            if record.outgoing { original.removeChildren { $0.name == "stanza-id" && $0.namespace == Self.stanzaID } }
            var forwarded = XMLElement("forwarded", xmlns: "urn:xmpp:forward:0")
            forwarded.append(
                XMLElement("delay", xmlns: NS.delay, ["stamp": Timestamp.string(Date(timeIntervalSince1970: record.time))]))
            forwarded.append(original)
            var result = XMLElement("result", xmlns: Self.ns, ["id": record.uid])
            if let queryID { result[attribute: "queryid"] = queryID }
            result.append(forwarded)
            var message = XMLElement("message", xmlns: NS.client, ["to": to.description])
            if let from { message[attribute: "from"] = from }
            message.append(result)
            deliver(message)
        }
        var fin = XMLElement("fin", xmlns: Self.ns)
        if page.complete { fin[attribute: "complete"] = "true" }
        var set = XMLElement("set", xmlns: Self.rsm)
        if let first = page.records.first, let last = page.records.last {
            set.append(XMLElement("first", xmlns: Self.rsm).withText(first.uid))
            set.append(XMLElement("last", xmlns: Self.rsm).withText(last.uid))
        }
        fin.append(set)
        return fin
    }

    /// The fields a query form may use (XEP-0313 §4.1.1).
    static func queryForm() -> XMLElement {
        var form = XMLElement("x", xmlns: NS.dataForms, ["type": "form"])
        var formType = XMLElement("field", xmlns: NS.dataForms, ["var": "FORM_TYPE", "type": "hidden"])
        formType.append(XMLElement("value", xmlns: NS.dataForms).withText(ns))
        form.append(formType)
        for (name, type) in [("with", "jid-single"), ("start", "text-single"), ("end", "text-single")] {
            form.append(XMLElement("field", xmlns: NS.dataForms, ["var": name, "type": type]))
        }
        var query = XMLElement("query", xmlns: ns)
        query.append(form)
        return query
    }

    static func parseDate(_ text: String) -> Double? {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        if let date = try? Date(trimmed, strategy: .iso8601) { return date.timeIntervalSince1970 }
        let fractional = Date.ISO8601FormatStyle(includingFractionalSeconds: true)
        return (try? fractional.parse(trimmed))?.timeIntervalSince1970
    }
}
