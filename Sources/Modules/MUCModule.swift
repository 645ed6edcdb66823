import Foundation
import NIOConcurrencyHelpers
import Server
import Storage
import XMLStream
import XMPPCore

/// XEP-0045 multi-user chat on its own service domain (`conference.<domain>` by default),
/// with room archives (XEP-0313 on the room JID, XEP-0359 stanza ids by the room),
/// retraction (XEP-0424) and moderation (XEP-0425), self-ping (XEP-0410) and mediated
/// invitations. Direct invitations (XEP-0249) are ordinary messages between users.
///
/// Concurrency: each room is a pure state machine (`MUCRoom`) behind its own lock. A stanza
/// for a room is handled synchronously on the sender's event loop: lock, run the state
/// machine, enqueue its deliveries (`ServerContext.deliverInOrder`: one task per recipient
/// event loop), unlock. Enqueueing inside the lock makes every occupant see the room's
/// messages in one order; the lock is never held across I/O. A lock rather than an owning event loop: most senders would have to hop anyway, and
/// the lock keeps the hot path free of allocation for the hop and of `await`. Rooms are all
/// in memory (persistent ones loaded at start-up); storage is written behind, in order, by
/// one task, and owner/admin IQs answer only once their change is durable.
///
/// The organisation directory uses the public API below (`ensureDepartmentRoom`), found
/// through `server.modules.service(MUCModule.self)`.
public struct MUCModule: ServerModule {
    public let id = "muc"
    let service: MUCService

    public init(_ configuration: ServerConfiguration = ServerConfiguration()) {
        service = MUCService(configuration)
    }

    /// The service's domain, e.g. `conference.example.com`.
    public var domain: String { service.domain }

    public func register(in registry: inout ModuleRegistry) {
        let service = self.service
        registry.provide(self)
        registry.addComponent(domain: service.domain, name: "Chat rooms") { service.handle($0) }
        registry.onStart { server in try await service.start(server) }
        registry.onSessionEnd(.high) { session, server in service.sessionEnded(session.jid, server: server) }
        registry.onPresence(.high) { context in
            // Broadcast unavailable presence (going offline) leaves every room (XEP-0045 §7.14).
            if context.to == nil, context.stanza.stanzaType == "unavailable", let session = context.session {
                service.sessionEnded(session.jid, server: context.server)
            }
            return .pass
        }
    }

    // MARK: - Organisation directory API

    /// Creates or updates the department room `localpart@<muc domain>`: persistent,
    /// members-only, named `name`, whose member list becomes exactly `members` (bare JIDs).
    /// New members get affiliation `member`; members no longer listed lose it and, if in the
    /// room, are removed with status 321. Owners and admins are left as they are. Returns
    /// once the change is durable.
    /// - Throws: `MUCError` if the server has not started or `localpart` is not a valid room name.
    public func ensureDepartmentRoom(localpart: String, name: String, members: Set<JID>) async throws {
        try await service.ensureDepartmentRoom(localpart: localpart, name: name, members: members)
    }

    /// Destroys a department room (occupants are told), e.g. when the department is dissolved.
    /// No error if there is no such room.
    public func removeDepartmentRoom(localpart: String, reason: String? = nil) async throws {
        try await service.removeRoom(localpart: localpart, reason: reason)
    }

    /// Bare JIDs of the current rooms (persistent and temporary), sorted.
    public func roomJIDs() -> [String] { service.roomKeys() }

    /// The member list of a room (affiliation `member`), or nil if there is no such room.
    public func members(ofRoom localpart: String) -> Set<String>? { service.members(localpart: localpart) }
}

/// Errors of the MUC module's Swift API.
public struct MUCError: Error, CustomStringConvertible, Sendable {
    public let description: String
    static let notStarted = MUCError(description: "the server has not started; call after start-up")
    static func invalidRoom(_ name: String) -> MUCError { MUCError(description: "'\(name)' is not a valid room name") }
}

/// A room and its lock. `gone` is set (under the lock) when the room is destroyed, so a
/// stanza racing with the destruction retries on a fresh room.
final class MUCRoomBox: Sendable {
    let key: String
    let state: NIOLockedValueBox<MUCRoom>
    init(_ room: MUCRoom) {
        key = room.bareKey
        state = NIOLockedValueBox(room)
    }
}

/// The state shared by the module's copies.
final class MUCService: Sendable {
    let domain: String
    let serverDomain: String
    let limits: MUCLimits
    let maxRoomsPerUser: Int
    let creators: Set<String>
    private let rooms = NIOLockedValueBox<[String: MUCRoomBox]>([:])
    private let context = NIOLockedValueBox<ServerContext?>(nil)
    let persistence = MUCPersistence()
    private let ids = ArchiveIDGenerator.shared
    private let relays = NIOLockedValueBox<[String: Relay]>([:])

    init(_ configuration: ServerConfiguration) {
        domain = configuration.mucDomain
        serverDomain = configuration.domain
        limits = MUCLimits(maxHistory: configuration.muc.maxHistory, maxOccupants: configuration.muc.maxOccupants)
        maxRoomsPerUser = configuration.muc.maxRoomsPerUser
        creators = Set(configuration.muc.roomCreators.compactMap { try? JID($0).bare.description })
    }

    private func newConfiguration() -> MUCRoomConfiguration {
        MUCRoomConfiguration(maxUsers: limits.maxOccupants, historyLength: min(20, limits.maxHistory))
    }

    // MARK: - Start-up and persistence

    func start(_ server: ServerContext) async throws {
        context.withLockedValue { $0 = server }
        let decoder = JSONDecoder()
        var loaded: [MUCRoomBox] = []
        for record in try await server.stores.muc.rooms() {
            guard let jid = try? JID(record.jid), jid.domainpart == domain else { continue }
            var configuration = newConfiguration()
            if let data = record.config.data(using: .utf8), let decoded = try? decoder.decode(MUCRoomConfiguration.self, from: data) {
                configuration = decoded
            }
            configuration.persistent = true
            let newKey = configuration.occupantIDKey == nil
            var room = MUCRoom(jid: jid, configuration: configuration, limits: limits, createdAt: record.createdAt)
            room.subject = record.subject
            room.subjectBy = record.subjectBy
            for (member, value) in record.affiliations {
                if let affiliation = MUCAffiliation(rawValue: value) { room.affiliations[member] = affiliation }
            }
            // History on join survives restarts: the newest archived messages.
            let keep = min(limits.maxHistory, configuration.historyLength)
            if configuration.archiving, keep > 0,
                let page = try await server.stores.archive.query(ArchiveQuery(owner: record.jid, fromEnd: true, limit: keep))
            {
                room.restoreHistory(
                    page.records.compactMap { record in
                        guard let stanza = try? XMLElement.parse(record.stanza), stanza.child("body", namespace: NS.client) != nil else {
                            return nil
                        }
                        return MUCHistoryEntry(
                            stanza: stanza, stanzaID: record.uid, time: record.time, characters: record.stanza.count)
                    })
            }
            // A room stored before it had an occupant-id key keeps the one it just got.
            if newKey { persistence.enqueue(.save(self.record(of: room)), server: server) }
            loaded.append(MUCRoomBox(room))
        }
        rooms.withLockedValue { rooms in for box in loaded { rooms[box.key] = box } }
    }

    private func record(of room: MUCRoom) -> MUCRoomRecord {
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        let config = (try? encoder.encode(room.configuration)).flatMap { String(data: $0, encoding: .utf8) } ?? "{}"
        return MUCRoomRecord(
            jid: room.bareKey, config: config, subject: room.subject, subjectBy: room.subjectBy,
            affiliations: room.affiliations.mapValues(\.rawValue), createdAt: room.createdAt)
    }

    // MARK: - Rooms

    func roomKeys() -> [String] { rooms.withLockedValue { Array($0.keys) }.sorted() }

    private func box(_ key: String) -> MUCRoomBox? { rooms.withLockedValue { $0[key] } }

    private func allBoxes() -> [MUCRoomBox] { rooms.withLockedValue { Array($0.values) } }

    func members(localpart: String) -> Set<String>? {
        guard let jid = try? JID(localpart: localpart, domainpart: domain, resourcepart: nil), let box = box(jid.description) else {
            return nil
        }
        return box.state.withLockedValue { Set($0.affiliations.filter { $0.value == .member }.keys) }
    }

    /// Runs `body` on a room under its lock, then performs the effects it returned: deliveries
    /// (inside the lock), archive, persistence; removes a destroyed room and the sessions
    /// that turned out to be gone.
    @discardableResult
    private func withRoom<T>(
        _ box: MUCRoomBox, server: ServerContext, _ body: (inout MUCRoom) throws(StanzaError) -> (MUCEffects, T)
    ) throws(StanzaError) -> T {
        var gone: [JID] = []
        var destroyed = false
        let result: Result<T, StanzaError> = box.state.withLockedValue { room in
            let outcome: (MUCEffects, T)
            do throws(StanzaError) {
                outcome = try body(&room)
            } catch {
                return .failure(error)
            }
            gone = perform(outcome.0, room: room, server: server)
            destroyed = room.gone
            return .success(outcome.1)
        }
        if destroyed { removeIfDestroyed(box, server: server) }
        for session in gone { leave(session: session, box: box, server: server) }
        return try result.get()
    }

    private func perform(_ effects: MUCEffects, room: MUCRoom, server: ServerContext) -> [JID] {
        // Stanzas for sessions go out in order (all occupants see one order); the rest
        // (invitations to bare JIDs) through normal routing, offline storage included.
        var ordered: [ServiceDelivery] = []
        ordered.reserveCapacity(effects.deliveries.count == 1 ? room.occupantCount + 1 : 16)
        for delivery in effects.deliveries {
            switch delivery {
            case .one(let stanza, let to):
                if to.resourcepart != nil, to.domainpart == serverDomain {
                    ordered.append(.stanza(stanza, to: to, bareKey: to.bare.description))
                } else {
                    server.sendFromService(stanza, to: to)
                }
            case .shared(let stanza, let recipients):
                for recipient in recipients { ordered.append(.shared(stanza, to: recipient.jid, bareKey: recipient.bareKey)) }
            }
        }
        let gone = ordered.isEmpty ? [] : server.deliverInOrder(ordered, from: room.jid).filter { room.occupant(session: $0) != nil }
        // The room's copy and the audit record of one message are one text value (the store
        // finds the record a copy shares by that value and keeps the text once), journaled in
        // one append so that an apply never takes one without the other.
        let copy = effects.archive.map { archive in
            ArchiveRecord(
                id: archive.position ?? ids.next(), uid: archive.stanzaID, owner: room.bareKey, peer: archive.sender, outgoing: false,
                time: Date().timeIntervalSince1970, stanza: XMLSerializer.string(archive.stanza))
        }
        if let (stanza, sender) = effects.audit {
            let text = effects.archive?.stanza == stanza ? copy?.stanza : nil
            server.groupMessageSent(stanza, room: room.bareKey, sender: sender, text: text, archived: copy)
        } else if let copy {
            server.journal.append([.archive(copy)])
        }
        if effects.deleteStored {
            persistence.enqueue(.delete(room.bareKey), server: server)
        } else if effects.persist {
            persistence.enqueue(room.configuration.persistent ? .save(record(of: room)) : .delete(room.bareKey), server: server)
        }
        return gone
    }

    private func removeIfDestroyed(_ box: MUCRoomBox, server: ServerContext) {
        rooms.withLockedValue { rooms in
            guard rooms[box.key] === box else { return }
            let gone = box.state.withLockedValue { $0.gone }
            if gone { rooms[box.key] = nil }
        }
    }

    private func leave(session: JID, box: MUCRoomBox, server: ServerContext, status: XMLElement? = nil) {
        _ = try? withRoom(box, server: server) { (room: inout MUCRoom) throws(StanzaError) in
            (room.leave(session: session, status: status?.stanzaType == "unavailable" ? status : nil), ())
        }
    }

    /// A session ended or went offline: it leaves every room it is in.
    func sessionEnded(_ session: JID, server: ServerContext) {
        for box in allBoxes() where box.state.withLockedValue({ $0.occupant(session: session) != nil }) {
            leave(session: session, box: box, server: server)
        }
    }

    // MARK: - Stanza dispatch

    func handle(_ item: ComponentStanza) -> ComponentOutcome {
        guard item.to.localpart != nil else { return serviceStanza(item) }
        do {
            switch item.stanza.name {
            case "presence": return try presence(item)
            case "message": return try message(item)
            default: return try iq(item)
            }
        } catch {
            return .error(error)
        }
    }

    private func reply(_ item: ComponentStanza, _ payload: XMLElement?) {
        item.server.sendFromService(item.stanza.iqResult(payload), to: item.from)
    }

    /// Stanzas to the service itself: discovery and ping.
    private func serviceStanza(_ item: ComponentStanza) -> ComponentOutcome {
        let stanza = item.stanza
        guard stanza.name == "iq" else { return stanza.name == "message" ? .error(.serviceUnavailable) : .done }
        guard stanza.stanzaType == "get" || stanza.stanzaType == "set" else { return .done }
        guard let payload = stanza.firstChild else { return .error(.badRequest) }
        switch (payload.namespace, stanza.stanzaType) {
        case (NS.discoInfo, "get"):
            guard payload[attribute: "node"] == nil else { return .error(.itemNotFound) }
            var query = XMLElement("query", xmlns: NS.discoInfo)
            query.append(XMLElement("identity", xmlns: NS.discoInfo, ["category": "conference", "type": "text", "name": "Chat rooms"]))
            for feature in [MUCNS.muc, NS.discoInfo, NS.discoItems, MUCNS.selfPing, NS.ping, MUCNS.stanzaID].sorted() {
                query.append(XMLElement("feature", xmlns: NS.discoInfo, ["var": feature]))
            }
            reply(item, query)
        case (NS.discoItems, "get"):
            var query = XMLElement("query", xmlns: NS.discoItems)
            let requester = item.from.bare.description
            var listed: [(String, String)] = []
            for box in allBoxes() {
                box.state.withLockedValue { room in
                    guard !room.locked, !room.gone else { return }
                    guard room.configuration.isPublic || room.affiliation(of: requester) >= .member else { return }
                    listed.append((room.bareKey, room.configuration.name.isEmpty ? (room.jid.localpart ?? "") : room.configuration.name))
                }
            }
            for (jid, name) in listed.sorted(by: { $0.0 < $1.0 }) {
                query.append(XMLElement("item", xmlns: NS.discoItems, ["jid": jid, "name": name]))
            }
            reply(item, query)
        case (NS.ping, "get"):
            reply(item, nil)
        default:
            return .error(.serviceUnavailable)
        }
        return .done
    }

    // MARK: Presence

    private func presence(_ item: ComponentStanza) throws(StanzaError) -> ComponentOutcome {
        let stanza = item.stanza
        let key = item.to.bare.description
        switch stanza.stanzaType {
        case "unavailable", "error":
            if let box = box(key) { leave(session: item.from, box: box, server: item.server, status: stanza) }
            return .done
        case nil:
            break
        default:
            return .done  // subscriptions to a room mean nothing
        }
        guard let requested = item.to.resourcepart else { throw StanzaError(.jidMalformed, text: "join with a nickname: room@service/nick") }
        guard let nick = MUCRoom.prepareNick(requested) else {
            throw StanzaError(.jidMalformed, text: "a nickname has 1 to \(MUCLimits.longestNick) characters and no control characters")
        }
        let x = stanza.child("x", namespace: MUCNS.muc)
        let password = x?.child("password")?.text
        let history = x?.child("history")
        let server = item.server
        for _ in 0..<3 {
            var created = false
            let box: MUCRoomBox
            if let existing = self.box(key) {
                box = existing
            } else {
                (box, created) = try createRoom(item.to.bare, creator: item.from, locked: x != nil)
            }
            let entered: Bool = try withRoom(box, server: server) { (room: inout MUCRoom) throws(StanzaError) in
                guard !room.gone else { return (MUCEffects(), false) }
                let effects = try room.enter(
                    session: item.from, requestedNick: requested, nick: nick, presence: stanza, password: password, history: history,
                    now: Date().timeIntervalSince1970, created: created)
                return (effects, true)
            }
            if entered { return .done }
            removeIfDestroyed(box, server: server)  // raced with its destruction: start afresh
        }
        throw StanzaError(.resourceConstraint, text: "the room is busy; try again")
    }

    /// Creates a room owned by `creator`; returns the room and whether it is new (another
    /// session may have created it first).
    private func createRoom(_ jid: JID, creator: JID, locked: Bool) throws(StanzaError) -> (MUCRoomBox, Bool) {
        let creatorKey = creator.bare.description
        guard creator.domainpart == serverDomain, creator.localpart != nil else {
            throw StanzaError(.notAllowed, text: "only users of this server create rooms")
        }
        if !creators.isEmpty && !creators.contains(creatorKey) {
            throw StanzaError(.notAllowed, text: "room creation is restricted")
        }
        guard let local = jid.localpart, local.count <= 256 else { throw StanzaError(.jidMalformed) }
        // Counted outside the table's lock (room locks may be held for a fan-out); two
        // creations racing may pass together, which the limit tolerates.
        let owned = allBoxes().reduce(0) { count, box in
            count + (box.state.withLockedValue { !$0.gone && $0.affiliations[creatorKey] == .owner } ? 1 : 0)
        }
        guard owned < maxRoomsPerUser else { throw StanzaError(.notAllowed, text: "you own \(owned) rooms, the most allowed") }
        let result: Result<(MUCRoomBox, Bool), StanzaError> = rooms.withLockedValue { rooms in
            if let existing = rooms[jid.description] { return .success((existing, false)) }
            var room = MUCRoom(jid: jid, configuration: newConfiguration(), limits: limits, createdAt: Date().timeIntervalSince1970)
            room.affiliations[creatorKey] = .owner
            room.locked = locked
            let box = MUCRoomBox(room)
            rooms[jid.description] = box
            return .success((box, true))
        }
        return try result.get()
    }

    // MARK: Messages

    private func message(_ item: ComponentStanza) throws(StanzaError) -> ComponentOutcome {
        let stanza = item.stanza
        guard let box = box(item.to.bare.description), !box.state.withLockedValue({ $0.locked && $0.affiliation(of: item.from.bare.description) != .owner }) else {
            if stanza.stanzaType == "error" { return .done }
            throw StanzaError(.itemNotFound, text: "no such room")
        }
        let server = item.server
        if stanza.stanzaType == "error" {
            // An occupant's client bounced a room message: it is gone (XEP-0045 §7.2.? ghost removal).
            leave(session: item.from, box: box, server: server)
            return .done
        }
        if let nick = item.to.resourcepart {
            try withRoom(box, server: server) { (room: inout MUCRoom) throws(StanzaError) in
                (try room.privateMessage(stanza, from: item.from, to: nick), ())
            }
            return .done
        }
        if let x = stanza.child("x", namespace: MUCNS.user),
            x.child("invite", namespace: MUCNS.user) != nil || x.child("decline", namespace: MUCNS.user) != nil
        {
            try withRoom(box, server: server) { (room: inout MUCRoom) throws(StanzaError) in
                (try room.invitations(x, from: item.from), ())
            }
            return .done
        }
        guard stanza.stanzaType == "groupchat" else {
            throw StanzaError(.badRequest, text: "messages to a room are of type groupchat")
        }
        if let retract = stanza.child("retract", namespace: MUCNS.retract) {
            guard let target = retract[attribute: "id"] else { throw StanzaError(.badRequest, text: "retract names a message id") }
            return .later { await self.retract(target, message: stanza, box: box, item: item) }
        }
        let ids = self.ids
        try withRoom(box, server: server) { (room: inout MUCRoom) throws(StanzaError) in
            // Taken under the room's lock: the room's archive keeps the order its occupants saw.
            let id = ids.nextID()
            return (try room.groupchat(stanza, from: item.from, stanzaID: id.uid, position: id.position, now: Date().timeIntervalSince1970), ())
        }
        return .done
    }

    /// XEP-0424 in a room: an occupant retracts its own message; the archive keeps a tombstone.
    private func retract(_ target: String, message: XMLElement, box: MUCRoomBox, item: ComponentStanza) async -> StanzaError? {
        let server = item.server
        guard let sender = box.state.withLockedValue({ $0.occupant(session: item.from) }) else {
            return StanzaError(.notAcceptable, text: "join the room first")
        }
        await server.journal.applied()
        do {
            guard let record = try await server.stores.archive.record(owner: box.key, uid: target) else {
                return StanzaError(.itemNotFound, text: "no such message in this room")
            }
            guard record.peer == sender.bareKey else { return StanzaError(.forbidden, text: "you can only retract your own messages") }
            try await tombstone(record, moderator: nil, reason: nil, server: server)
            try withRoom(box, server: server) { (room: inout MUCRoom) throws(StanzaError) in
                room.forgetHistory(stanzaID: target)
                let id = ids.nextID()
                return (try room.groupchat(message, from: item.from, stanzaID: id.uid, position: id.position, now: Date().timeIntervalSince1970), ())
            }
            return nil
        } catch let error as StanzaError {
            return error
        } catch {
            server.logger.error("room retraction failed", metadata: ["error": "\(error)"])
            return .internalServerError
        }
    }

    /// Replaces an archived room message by a tombstone (XEP-0424 §5.1 / XEP-0425 §5).
    private func tombstone(_ record: ArchiveRecord, moderator: String?, reason: String?, server: ServerContext) async throws {
        guard let original = try? XMLElement.parse(record.stanza) else { return }
        var tombstone = XMLElement("message", xmlns: NS.client)
        for name in ["from", "type", "id"] { tombstone[attribute: name] = original[attribute: name] }
        var retracted = XMLElement("retracted", xmlns: MUCNS.retract, ["stamp": Timestamp.string(Date())])
        if let moderator {
            retracted.append(XMLElement("moderated", xmlns: MUCNS.moderate, ["by": moderator]))
            if let reason { retracted.append(XMLElement("reason", xmlns: MUCNS.moderate).withText(reason)) }
        }
        tombstone.append(retracted)
        if let stanzaID = original.child("stanza-id", namespace: MUCNS.stanzaID) { tombstone.append(stanzaID) }
        _ = try await server.stores.archive.replaceStanza(owner: record.owner, uid: record.uid, stanza: XMLSerializer.string(tombstone))
    }

    // MARK: IQs

    private func iq(_ item: ComponentStanza) throws(StanzaError) -> ComponentOutcome {
        let stanza = item.stanza
        guard stanza.stanzaType == "get" || stanza.stanzaType == "set" else {
            relayResponse(item)
            return .done
        }
        guard let payload = stanza.firstChild else { throw StanzaError.badRequest }
        let isSet = stanza.stanzaType == "set"
        let server = item.server
        let key = item.to.bare.description
        guard let box = box(key), box.state.withLockedValue({ !$0.locked || $0.affiliation(of: item.from.bare.description) == .owner }) else {
            // XEP-0410: a self-ping to a room that is gone means "not joined".
            if item.to.resourcepart != nil, payload.namespace == NS.ping { throw StanzaError(.notAcceptable, text: "no such room") }
            throw StanzaError(.itemNotFound, text: "no such room")
        }
        if let nick = item.to.resourcepart {
            guard payload.namespace == NS.ping, !isSet else {
                try relay(item, to: nick, box: box)
                return .done
            }
            // XEP-0410 self-ping.
            let (joined, exists) = box.state.withLockedValue { ($0.isJoined(item.from, as: nick), $0.hasOccupant(nick)) }
            if joined {
                reply(item, nil)
                return .done
            }
            guard box.state.withLockedValue({ $0.occupant(session: item.from) != nil }) else {
                throw StanzaError(.notAcceptable, text: "you are not joined to this room")
            }
            guard exists else { throw StanzaError(.itemNotFound) }
            reply(item, nil)
            return .done
        }
        switch (payload.namespace, isSet) {
        case (NS.discoInfo, false):
            reply(item, box.state.withLockedValue { $0.discoInfo() })
        case (NS.discoItems, false):
            reply(item, XMLElement("query", xmlns: NS.discoItems))
        case (NS.ping, false):
            reply(item, nil)
        case (MUCNS.admin, false):
            let list = box.state.withLockedValue { room in
                Result { () throws(StanzaError) -> XMLElement in try room.adminList(payload, from: item.from) }
            }
            reply(item, try list.get())
        case (MUCNS.admin, true):
            try withRoom(box, server: server) { (room: inout MUCRoom) throws(StanzaError) in
                (try room.adminSet(payload, from: item.from), ())
            }
            return durableReply(item)
        case (MUCNS.owner, false):
            let form = try box.state.withLockedValue { room -> Result<XMLElement, StanzaError> in
                guard room.affiliation(of: item.from.bare.description) == .owner else {
                    return .failure(StanzaError(.forbidden, text: "only owners configure the room"))
                }
                return .success(room.configuration.form(maxUsersCap: limits.maxOccupants, historyCap: limits.maxHistory))
            }.get()
            var query = XMLElement("query", xmlns: MUCNS.owner)
            query.append(form)
            reply(item, query)
        case (MUCNS.owner, true):
            try owner(payload, box: box, item: item)
            return durableReply(item)
        case (MUCNS.mam, _):
            return .later { await self.archiveQuery(payload, isSet: isSet, box: box, item: item) }
        case (MUCNS.moderate, true):
            return .later { await self.moderate(payload, box: box, item: item) }
        default:
            throw StanzaError(.serviceUnavailable)
        }
        return .done
    }

    // MARK: IQ relay (XEP-0045 §7.7: IQs to an occupant, e.g. vCard avatars)

    struct Relay: Sendable {
        let requester: JID
        let originalID: String?
        let target: JID
        /// The occupant JID the requester addressed, where the response appears to come from.
        let occupant: String
        let time: Double
    }

    /// Forwards an IQ request from an occupant to another occupant's (first) session, as
    /// coming from the requester's occupant JID, under an id of the room's.
    private func relay(_ item: ComponentStanza, to nick: String, box: MUCRoomBox) throws(StanzaError) {
        let (sender, target) = box.state.withLockedValue { room in
            (room.occupant(session: item.from), room.hasOccupant(nick) ? room.sessions(of: nick).first : nil)
        }
        guard let sender else { throw StanzaError(.notAcceptable, text: "join the room first") }
        guard let target else { throw StanzaError(.itemNotFound, text: "no such occupant") }
        let id = "muc-relay-" + ArchiveIDGenerator.uid()
        let now = Date().timeIntervalSince1970
        relays.withLockedValue { relays in
            if relays.count >= Self.maxRelays {
                // Unanswered requests expire after a minute; beyond that, the oldest go.
                relays = relays.filter { now - $0.value.time < 60 }
                if relays.count >= Self.maxRelays, let oldest = relays.min(by: { $0.value.time < $1.value.time }) {
                    relays[oldest.key] = nil
                }
            }
            relays[id] = Relay(requester: item.from, originalID: item.stanza.id, target: target, occupant: item.to.description, time: now)
        }
        var forwarded = item.stanza
        forwarded[attribute: "id"] = id
        forwarded[attribute: "from"] = "\(box.key)/\(sender.nick)"
        forwarded[attribute: "to"] = target.description
        item.server.sendFromService(forwarded, to: target)
    }

    /// A response to a relayed IQ goes back to the requester, from the addressed occupant JID.
    private func relayResponse(_ item: ComponentStanza) {
        guard let id = item.stanza.id, id.hasPrefix("muc-relay-") else { return }
        let relay = relays.withLockedValue { relays -> Relay? in
            guard let relay = relays[id], relay.target == item.from else { return nil }
            relays[id] = nil
            return relay
        }
        guard let relay else { return }
        var response = item.stanza
        response[attribute: "id"] = relay.originalID
        response[attribute: "from"] = relay.occupant
        response[attribute: "to"] = relay.requester.description
        item.server.sendFromService(response, to: relay.requester)
    }

    static let maxRelays = 10_000

    /// Answers once everything the room queued for storage is written.
    private func durableReply(_ item: ComponentStanza) -> ComponentOutcome {
        .later {
            await self.persistence.flushed()
            self.reply(item, nil)
            return nil
        }
    }

    private func owner(_ payload: XMLElement, box: MUCRoomBox, item: ComponentStanza) throws(StanzaError) {
        let maxUsers = limits.maxOccupants
        try withRoom(box, server: item.server) { (room: inout MUCRoom) throws(StanzaError) in
            guard room.affiliation(of: item.from.bare.description) == .owner else {
                throw StanzaError(.forbidden, text: "only owners configure or destroy the room")
            }
            if let destroy = payload.child("destroy", namespace: MUCNS.owner) {
                let alternate = try destroy[attribute: "jid"].map { value throws(StanzaError) -> JID in
                    guard let jid = try? JID(value) else { throw StanzaError(.jidMalformed) }
                    return jid
                }
                return (room.destroy(reason: destroy.child("reason")?.text, alternate: alternate), ())
            }
            guard let form = payload.child("x", namespace: NS.dataForms) else {
                throw StanzaError(.badRequest, text: "send a configuration form or a destroy request")
            }
            switch form[attribute: "type"] {
            case "submit":
                let hasFields = form.elements.contains { $0.name == "field" }
                return (try room.configure(hasFields ? form : nil, maxUsersCap: maxUsers), ())
            case "cancel":
                guard room.locked else { return (MUCEffects(), ()) }
                // Cancelling the initial configuration destroys the new room (XEP-0045 §10.1.3).
                return (room.destroy(reason: nil, alternate: nil), ())
            default:
                throw StanzaError(.badRequest, text: "a form of type submit or cancel")
            }
        }
    }

    /// XEP-0313 on the room: anyone may read an open room's archive; members-only rooms only
    /// to members.
    private func archiveQuery(_ payload: XMLElement, isSet: Bool, box: MUCRoomBox, item: ComponentStanza) async -> StanzaError? {
        let server = item.server
        let allowed = box.state.withLockedValue { room in
            !room.configuration.membersOnly || room.affiliation(of: item.from.bare.description) >= .member
        }
        guard allowed else { return StanzaError(.forbidden, text: "this room's archive is for members") }
        guard payload.name == "query" else { return .featureNotImplemented }
        guard isSet else {
            reply(item, ArchiveModule.queryForm())
            return nil
        }
        do {
            let fin = try await ArchiveModule.query(
                payload, owner: box.key, from: box.key, to: item.from, server: server
            ) { server.sendFromService($0, to: item.from) }
            reply(item, fin)
            return nil
        } catch let error as StanzaError {
            return error
        } catch {
            server.logger.error("room archive query failed", metadata: ["error": "\(error)"])
            return .internalServerError
        }
    }

    /// XEP-0425: a moderator retracts any message; the room tells everyone and keeps a tombstone.
    private func moderate(_ payload: XMLElement, box: MUCRoomBox, item: ComponentStanza) async -> StanzaError? {
        let server = item.server
        guard payload.name == "moderate", let target = payload[attribute: "id"], payload.child("retract", namespace: MUCNS.retract) != nil else {
            return StanzaError(.badRequest, text: "moderate with an id and a retract element")
        }
        guard let moderator = box.state.withLockedValue({ $0.occupant(session: item.from) }), moderator.role == .moderator else {
            return StanzaError(.forbidden, text: "only moderators moderate messages")
        }
        let reason = payload.child("reason").map { String($0.text.prefix(MUCLimits.longestReason)) }
        await server.journal.applied()
        do {
            guard let record = try await server.stores.archive.record(owner: box.key, uid: target) else {
                return StanzaError(.itemNotFound, text: "no such message in this room")
            }
            let by = "\(box.key)/\(moderator.nick)"
            try await tombstone(record, moderator: by, reason: reason, server: server)
            try withRoom(box, server: server) { (room: inout MUCRoom) throws(StanzaError) in
                room.forgetHistory(stanzaID: target)
                var notice = XMLElement("message", xmlns: NS.client, ["id": UUID().uuidString.lowercased()])
                var retract = XMLElement("retract", xmlns: MUCNS.retract, ["id": target])
                retract.append(XMLElement("moderated", xmlns: MUCNS.moderate, ["by": by]))
                if let reason { retract.append(XMLElement("reason", xmlns: MUCNS.retract).withText(reason)) }
                notice.append(retract)
                let id = ids.nextID()
                return (room.announce(notice, stanzaID: id.uid, position: id.position, archive: true), ())
            }
            reply(item, nil)
            return nil
        } catch let error as StanzaError {
            return error
        } catch {
            server.logger.error("room moderation failed", metadata: ["error": "\(error)"])
            return .internalServerError
        }
    }

    // MARK: - Directory API

    private func requireServer() throws -> ServerContext {
        guard let server = context.withLockedValue({ $0 }) else { throw MUCError.notStarted }
        return server
    }

    func ensureDepartmentRoom(localpart: String, name: String, members: Set<JID>) async throws {
        let server = try requireServer()
        guard let jid = try? JID(localpart: localpart, domainpart: domain, resourcepart: nil) else { throw MUCError.invalidRoom(localpart) }
        let box = rooms.withLockedValue { rooms -> MUCRoomBox in
            if let existing = rooms[jid.description] { return existing }
            var room = MUCRoom(jid: jid, configuration: newConfiguration(), limits: limits, createdAt: Date().timeIntervalSince1970)
            room.configuration.persistent = true
            let box = MUCRoomBox(room)
            rooms[jid.description] = box
            return box
        }
        let wanted = Set(members.map { $0.bare.description })
        try withRoom(box, server: server) { (room: inout MUCRoom) throws(StanzaError) in
            var effects = MUCEffects()
            room.locked = false
            for (member, affiliation) in room.affiliations where affiliation == .member && !wanted.contains(member) {
                try room.setAffiliation(.none, of: member, by: nil, actor: nil, reason: "no longer in the department", into: &effects)
            }
            for member in wanted.sorted() where room.affiliation(of: member) < .member {
                try room.setAffiliation(.member, of: member, by: nil, actor: nil, reason: nil, into: &effects)
            }
            var configuration = room.configuration
            configuration.name = String(name.prefix(MUCRoomConfiguration.longestText))
            configuration.persistent = true
            configuration.membersOnly = true
            // Occupants who are not members (if the room just became members-only) leave (322).
            effects.merge(room.reconfigure(configuration))
            return (effects, ())
        }
        await persistence.flushed()
    }

    func removeRoom(localpart: String, reason: String?) async throws {
        let server = try requireServer()
        guard let jid = try? JID(localpart: localpart, domainpart: domain, resourcepart: nil) else { throw MUCError.invalidRoom(localpart) }
        guard let box = box(jid.description) else { return }
        try withRoom(box, server: server) { (room: inout MUCRoom) throws(StanzaError) in
            (room.destroy(reason: reason, alternate: nil), ())
        }
        await persistence.flushed()
    }
}

/// A change to stored rooms.
enum MUCPersistenceOperation: Sendable {
    case save(MUCRoomRecord)
    case delete(String)
}

/// Room storage written behind, in order, by one task at a time (`GroupCommitWriter`: rooms
/// change rarely and callers may wait for it).
typealias MUCPersistence = GroupCommitWriter<MUCPersistenceOperation>

extension GroupCommitWriter where Record == MUCPersistenceOperation {
    convenience init() {
        // Saves and deletes are idempotent, so a batch that failed half-way is simply redone.
        self.init(name: "room storage") { operations, server in
            for operation in operations {
                switch operation {
                case .save(let record): try await server.stores.muc.saveRoom(record)
                case .delete(let jid): try await server.stores.muc.deleteRoom(jid)
                }
            }
        }
    }

    func enqueue(_ operation: MUCPersistenceOperation, server: ServerContext) {
        enqueue([operation], server: server)
    }
}
