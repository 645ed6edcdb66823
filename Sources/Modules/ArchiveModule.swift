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
    /// Annotation keys (see `MessageEvent.annotations`).
    static let incomingPosition = "archive.position.in"
    /// Annotation: the routed message serialised (for the audit record).
    public static let routedText = "archive.routedText"
    static let outgoingPosition = "archive.position.out"
    public static let senderArchiveID = "archive.sender-id"
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
            message.annotations[Self.incomingPosition] = String(ids.next())
            message.annotations[Self.outgoingPosition] = String(ids.next())
            guard server.isLocal(to), to.localpart != nil else { return }
            let by = to.bare.description
            // A stanza-id claiming to be ours but set by the sender is a forgery (XEP-0359 §3.3).
            message.stanza.removeChildren { $0.name == "stanza-id" && $0.namespace == Self.stanzaID && $0[attribute: "by"] == by }
            message.stanza.append(XMLElement("stanza-id", xmlns: Self.stanzaID, ["id": ArchiveIDGenerator.uid(), "by": by]))
        }

        registry.onMessageRouted(.high) { event in
            let stanza = event.stanza
            guard Self.archivable(stanza), let from = stanza[attribute: "from"].flatMap({ try? JID($0) }) else { return }
            let server = event.server
            let now = Date().timeIntervalSince1970
            var records: [ArchiveRecord] = []
            if server.isLocal(event.to), event.to.localpart != nil,
                preferences.archives(owner: event.to.bare.description, peer: from.bare.description)
            {
                // The recipient's copy keeps the recipient's own stanza-id (it is the MAM id).
                let owner = event.to.bare.description
                let uid = stanza.elements.first { $0.name == "stanza-id" && $0.namespace == Self.stanzaID && $0[attribute: "by"] == owner }
                    .flatMap { $0[attribute: "id"] } ?? ArchiveIDGenerator.uid()
                let position = event.annotations[Self.incomingPosition].flatMap(Int64.init) ?? ids.next()
                let serialized = XMLSerializer.string(stanza)
                // The audit record stores the message as routed: the same text.
                event.annotations[Self.routedText] = serialized
                records.append(
                    ArchiveRecord(
                        id: position, uid: uid, owner: owner, peer: from.bare.description, outgoing: false, time: now,
                        stanza: serialized))
            }
            if server.isLocal(from), from.localpart != nil, from.bare != event.to.bare,
                preferences.archives(owner: from.bare.description, peer: event.to.bare.description)
            {
                // The sender's copy must not carry another archive's id (XEP-0313 §5.1).
                var own = stanza
                own.removeChildren { $0.name == "stanza-id" && $0.namespace == Self.stanzaID }
                let uid = ArchiveIDGenerator.uid()
                let position = event.annotations[Self.outgoingPosition].flatMap(Int64.init) ?? ids.next()
                records.append(
                    ArchiveRecord(
                        id: position, uid: uid, owner: from.bare.description, peer: event.to.bare.description, outgoing: true,
                        time: now, stanza: XMLSerializer.string(own)))
                event.annotations[Self.senderArchiveID] = uid
            }
            server.journal.append(records.map(JournalEntry.archive))
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
        return stanza.elements.contains { $0.name == "body" || archivedPayloads.contains($0.namespace) }
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
            guard let original = try? XMLElement.parse(record.stanza) else { continue }
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

/// Group commit: records accumulate while the previous batch is written, so one transaction
/// (one fsync) carries many messages. Used by the archive and the audit record.
final class GroupCommitWriter<Record: Sendable>: Sendable {
    private struct State {
        var pending: [Record] = []
        var enqueued: UInt64 = 0
        var durable: UInt64 = 0
        var flushing = false
        var waiters: [(UInt64, CheckedContinuation<Void, Never>)] = []
    }

    private let state = NIOLockedValueBox(State())
    private let name: String
    private let linger: Duration?
    private let write: @Sendable ([Record], ServerContext) async throws -> Void

    /// - Parameter linger: with fewer than 256 records waiting, wait this long for more before a
    ///   batch (messages: many per fsync even at low rates); nil writes at once.
    init(name: String, linger: Duration? = .milliseconds(4), write: @escaping @Sendable ([Record], ServerContext) async throws -> Void) {
        self.name = name
        self.linger = linger
        self.write = write
    }

    func enqueue(_ records: [Record], server: ServerContext) {
        guard !records.isEmpty else { return }
        let start = state.withLockedValue { state -> Bool in
            state.pending.append(contentsOf: records)
            state.enqueued += 1
            guard !state.flushing else { return false }
            state.flushing = true
            return true
        }
        if start { server.track { await self.drain(server) } }
    }

    /// Below this many waiting records the writer lingers (`linger`) so that, at low rates too,
    /// one commit (one fsync) carries many messages instead of one each.
    private static var lingerBelow: Int { 256 }

    private func drain(_ server: ServerContext) async {
        var failures = 0
        while true {
            if let linger, state.withLockedValue({ $0.pending.count }) < Self.lingerBelow {
                try? await Task.sleep(for: linger)
            }
            let (batch, upTo) = state.withLockedValue { state -> ([Record], UInt64) in
                let batch = state.pending
                state.pending = []
                if batch.isEmpty { state.flushing = false }
                return (batch, state.enqueued)
            }
            guard !batch.isEmpty else { return }
            do {
                try await write(batch, server)
                failures = 0
            } catch {
                // Never drop: put the batch back and retry with back-off.
                failures += 1
                server.logger.error("\(name) write failed; retrying", metadata: ["error": "\(error)", "batch": "\(batch.count)"])
                state.withLockedValue { $0.pending.insert(contentsOf: batch, at: 0) }
                try? await Task.sleep(for: .milliseconds(min(5000, 50 * failures)))
                continue
            }
            let ready = state.withLockedValue { state -> [CheckedContinuation<Void, Never>] in
                state.durable = upTo
                let ready = state.waiters.filter { $0.0 <= upTo }.map(\.1)
                state.waiters.removeAll { $0.0 <= upTo }
                return ready
            }
            for waiter in ready { waiter.resume() }
        }
    }

    /// Returns once everything enqueued before the call is durable.
    func flushed() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let done = state.withLockedValue { state -> Bool in
                if state.durable >= state.enqueued { return true }
                state.waiters.append((state.enqueued, continuation))
                return false
            }
            if done { continuation.resume() }
        }
    }
}
