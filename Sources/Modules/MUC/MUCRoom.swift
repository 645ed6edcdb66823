import Crypto
import Foundation
import Server
import XMLStream
import XMPPCore

/// XEP-0045 affiliations, lowest first.
enum MUCAffiliation: String, Codable, Comparable, CaseIterable, Sendable {
    case outcast, none, member, admin, owner
    private var rank: Int { Self.allCases.firstIndex(of: self) ?? 0 }
    static func < (lhs: Self, rhs: Self) -> Bool { lhs.rank < rhs.rank }
}

/// XEP-0045 roles, lowest first.
enum MUCRole: String, Comparable, CaseIterable, Sendable {
    case none, visitor, participant, moderator
    private var rank: Int { Self.allCases.firstIndex(of: self) ?? 0 }
    static func < (lhs: Self, rhs: Self) -> Bool { lhs.rank < rhs.rank }
}

enum MUCNS {
    static let muc = "http://jabber.org/protocol/muc"
    static let user = "http://jabber.org/protocol/muc#user"
    static let admin = "http://jabber.org/protocol/muc#admin"
    static let owner = "http://jabber.org/protocol/muc#owner"
    static let roomInfo = "http://jabber.org/protocol/muc#roominfo"
    static let selfPing = "http://jabber.org/protocol/muc#self-ping-optimization"
    static let stanzaID = "urn:xmpp:sid:0"
    static let retract = "urn:xmpp:message-retract:1"
    static let moderate = "urn:xmpp:message-moderate:1"
    static let mam = "urn:xmpp:mam:2"
    static let conference = "jabber:x:conference"
    static let occupantID = "urn:xmpp:occupant-id:0"
}

/// A local address a room sends to, with its router key precomputed.
struct MUCRecipient: Sendable {
    let jid: JID
    let bareKey: String
}

/// What a room event asks the module to do, in order. The room itself does no I/O.
struct MUCEffects: Sendable {
    enum Delivery: Sendable {
        /// One stanza (with `to`) to one address.
        case one(XMLElement, JID)
        /// One stanza serialised once, to many occupant sessions.
        case shared(SharedStanza, [MUCRecipient])
    }
    var deliveries: [Delivery] = []
    /// The persistent state (configuration, affiliations, subject) changed.
    var persist = false
    /// A groupchat message to archive on the room (as broadcast), with the sender's real bare JID
    /// and the archive position its stanza-id was made from (nil: take one when storing it).
    var archive: (stanza: XMLElement, stanzaID: String, sender: String, position: Int64?)?
    /// A message for the audit record (whatever the room's archiving setting).
    var audit: (stanza: XMLElement, sender: String)?
    /// The room is gone (destroyed, or a temporary room's last occupant left).
    var destroyed = false
    /// Remove the room from storage (it was destroyed).
    var deleteStored = false

    mutating func merge(_ other: MUCEffects) {
        deliveries += other.deliveries
        persist = persist || other.persist
        archive = other.archive ?? archive
        destroyed = destroyed || other.destroyed
        deleteStored = deleteStored || other.deleteStored
    }

    mutating func send(_ stanza: XMLElement, to jid: JID) {
        var stanza = stanza
        stanza[attribute: "to"] = jid.description
        deliveries.append(.one(stanza, jid))
    }
}

/// Limits a room runs under (from the service configuration).
struct MUCLimits: Sendable, Hashable {
    var maxHistory = 50
    var maxOccupants = 1000
    static let longestNick = 64
    static let longestSubject = 1024
    static let longestReason = 1024
}

/// One entry of the in-memory history sent on join.
struct MUCHistoryEntry: Sendable {
    var stanza: XMLElement
    var stanzaID: String
    var time: Double
    var characters: Int
}

/// One occupant: a nick, the real JID behind it and its joined sessions (a user may join with
/// several devices under one nick).
struct MUCOccupant: Sendable {
    var nick: String
    var realJID: JID
    var bareKey: String
    var sessions: [JID]
    var role: MUCRole
    /// The latest presence payload (show, status, caps …) without the MUC elements.
    var payload: [XMLNode]
    /// XEP-0421: stable per real JID and room, reveals nothing about the JID.
    var occupantID: String = ""
    /// Its current presence as others see it, serialised, by "shows the real JID": what a
    /// newcomer is sent for each occupant. Replaced by every broadcast of its presence.
    var cachedPresence: [Bool: SharedStanza] = [:]
}

/// A multi-user chat room (XEP-0045) as a pure state machine: events in, `MUCEffects` out.
///
/// No I/O, no locks, no clock: the module owns one per room behind a lock, performs the
/// effects (deliveries inside the lock, so every occupant sees the same order) and persists.
struct MUCRoom: Sendable {
    let jid: JID
    let bareKey: String
    var configuration: MUCRoomConfiguration
    var affiliations: [String: MUCAffiliation] = [:]
    var subject: String?
    var subjectBy: String?
    private(set) var occupants: [String: MUCOccupant] = [:]
    /// Occupant nick by joined session.
    private(set) var nickOf: [JID: String] = [:]
    private(set) var history: [MUCHistoryEntry] = []
    /// Newly created and not yet configured: only the owner may enter (XEP-0045 §10.1.1).
    var locked = false
    /// Destroyed, or a temporary room that emptied: the module drops it.
    var gone = false
    var createdAt: Double
    let limits: MUCLimits

    init(jid: JID, configuration: MUCRoomConfiguration, limits: MUCLimits, createdAt: Double) {
        self.jid = jid
        self.bareKey = jid.description
        self.configuration = configuration
        self.limits = limits
        self.createdAt = createdAt
        if configuration.occupantIDKey == nil {
            self.configuration.occupantIDKey = SymmetricKey(size: .bits256).withUnsafeBytes { Data($0).base64EncodedString() }
        }
    }

    /// XEP-0421 occupant id: HMAC-SHA-256 of the real bare JID under the room's secret key.
    func occupantID(of bare: String) -> String {
        let key = SymmetricKey(data: Data(base64Encoded: configuration.occupantIDKey ?? "") ?? Data(bareKey.utf8))
        let code = HMAC<SHA256>.authenticationCode(for: Data(bare.utf8), using: key)
        return Data(code.prefix(18)).base64EncodedString()
    }

    private func occupantIDElement(_ occupant: MUCOccupant) -> XMLElement {
        XMLElement("occupant-id", xmlns: MUCNS.occupantID, ["id": occupant.occupantID])
    }

    var isEmpty: Bool { occupants.isEmpty }
    var occupantCount: Int { occupants.count }

    func affiliation(of bare: String) -> MUCAffiliation { affiliations[bare] ?? .none }

    func occupant(session: JID) -> MUCOccupant? { nickOf[session].flatMap { occupants[$0] } }

    var owners: [String] { affiliations.filter { $0.value == .owner }.map(\.key).sorted() }

    private func occupantJID(_ nick: String) -> JID {
        (try? JID(localpart: jid.localpart, domainpart: jid.domainpart, resourcepart: nick)) ?? jid
    }

    private var allSessions: [MUCRecipient] {
        occupants.values.flatMap { occupant in occupant.sessions.map { MUCRecipient(jid: $0, bareKey: occupant.bareKey) } }
    }

    // MARK: - Nicknames

    /// RFC 8266-style nickname preparation: non-ASCII spaces become spaces, runs of spaces
    /// collapse, leading and trailing spaces go. Nil if nothing is left or it is too long.
    static func prepareNick(_ nick: String) -> String? {
        var result = ""
        var pendingSpace = false
        for scalar in nick.unicodeScalars {
            if scalar.properties.isWhitespace {
                pendingSpace = !result.isEmpty
                continue
            }
            if scalar.properties.generalCategory == .control { return nil }
            if pendingSpace { result.append(" ") }
            pendingSpace = false
            result.unicodeScalars.append(scalar)
        }
        let prepared = result.precomposedStringWithCanonicalMapping
        guard !prepared.isEmpty, prepared.count <= MUCLimits.longestNick else { return nil }
        return prepared
    }

    // MARK: - Presence

    private func item(for occupant: MUCOccupant, showJID: Bool, session: JID? = nil) -> XMLElement {
        var item = XMLElement(
            "item", xmlns: MUCNS.user,
            ["affiliation": affiliation(of: occupant.bareKey).rawValue, "role": occupant.role.rawValue])
        if showJID { item[attribute: "jid"] = (session ?? occupant.sessions.first ?? occupant.realJID).description }
        return item
    }

    /// The presence of `occupant` as one recipient sees it.
    private func presence(
        of occupant: MUCOccupant, unavailable: Bool, showJID: Bool, codes: [Int], itemChildren: [XMLElement] = [],
        itemAttributes: [String: String] = [:], extra: [XMLElement] = []
    ) -> XMLElement {
        var presence = XMLElement("presence", xmlns: NS.client, ["from": occupantJID(occupant.nick).description])
        if unavailable {
            presence[attribute: "type"] = "unavailable"
        } else {
            presence.children = occupant.payload
        }
        presence.append(occupantIDElement(occupant))
        var x = XMLElement("x", xmlns: MUCNS.user)
        var item = item(for: occupant, showJID: showJID)
        for (name, value) in itemAttributes.sorted(by: { $0.key < $1.key }) { item[attribute: name] = value }
        for child in itemChildren { item.append(child) }
        x.append(item)
        for child in extra { x.append(child) }
        for code in codes { x.append(XMLElement("status", xmlns: MUCNS.user, ["code": String(code)])) }
        presence.append(x)
        return presence
    }

    /// Broadcasts an occupant's presence: its own sessions get the self variant (110 and
    /// `selfCodes`), the others a variant with or without the real JID (non-anonymous rooms
    /// and moderators see it). Each variant is serialised once.
    private mutating func broadcast(
        _ occupant: MUCOccupant, unavailable: Bool, codes: [Int] = [], selfCodes: [Int] = [], itemChildren: [XMLElement] = [],
        itemAttributes: [String: String] = [:], extra: [XMLElement] = [], alsoTo: [JID] = [], into effects: inout MUCEffects
    ) {
        // A plain available presence is what newcomers get too: keep it serialised.
        let plain = !unavailable && codes.isEmpty && itemChildren.isEmpty && itemAttributes.isEmpty && extra.isEmpty
        var cache: [Bool: SharedStanza] = [:]
        defer {
            if var stored = occupants[occupant.nick], stored.bareKey == occupant.bareKey {
                stored.cachedPresence = cache
                occupants[occupant.nick] = stored
            }
        }
        var own = occupant.sessions.map { MUCRecipient(jid: $0, bareKey: occupant.bareKey) }
        for session in alsoTo where !occupant.sessions.contains(session) { own.append(MUCRecipient(jid: session, bareKey: occupant.bareKey)) }
        var withJID: [MUCRecipient] = []
        var withoutJID: [MUCRecipient] = []
        for other in occupants.values where other.nick != occupant.nick {
            let recipients = other.sessions.map { MUCRecipient(jid: $0, bareKey: other.bareKey) }
            if configuration.nonAnonymous || other.role == .moderator { withJID += recipients } else { withoutJID += recipients }
        }
        func variant(showJID: Bool, codes: [Int]) -> SharedStanza {
            SharedStanza(
                presence(
                    of: occupant, unavailable: unavailable, showJID: showJID, codes: codes, itemChildren: itemChildren,
                    itemAttributes: itemAttributes, extra: extra))
        }
        if !withJID.isEmpty {
            let shared = variant(showJID: true, codes: codes)
            if plain { cache[true] = shared }
            effects.deliveries.append(.shared(shared, withJID))
        }
        if !withoutJID.isEmpty {
            let shared = variant(showJID: false, codes: codes)
            if plain { cache[false] = shared }
            effects.deliveries.append(.shared(shared, withoutJID))
        }
        if !own.isEmpty {
            effects.deliveries.append(.shared(variant(showJID: true, codes: [110] + codes + selfCodes), own))
        }
    }

    private static func payload(of presence: XMLElement) -> [XMLNode] {
        presence.children.filter {
            guard case .element(let child) = $0 else { return false }
            return child.namespace != MUCNS.muc && child.namespace != MUCNS.user && child.name != "error"
        }
    }

    // MARK: - Join, presence update, nick change, leave

    /// A session's available presence to `room/nick`: a join, a presence update or a nick change.
    /// - Parameters:
    ///   - requestedNick: the nick as sent; `nick` is its prepared form (210 when they differ).
    ///   - history: the `<history/>` element of the join request, if any.
    mutating func enter(
        session: JID, requestedNick: String, nick: String, presence stanza: XMLElement, password: String?,
        history: XMLElement?, now: Double, created: Bool = false
    ) throws(StanzaError) -> MUCEffects {
        let bareKey = session.bare.description
        if let current = nickOf[session] {
            if current == nick { return updatePresence(session: session, stanza) }
            return try changeNick(session: session, from: current, to: nick, stanza)
        }
        let affiliation = affiliation(of: bareKey)
        if affiliation == .outcast { throw StanzaError(.forbidden, text: "you are banned from this room") }
        if locked && affiliation != .owner { throw StanzaError(.itemNotFound, text: "the room is being set up") }
        if configuration.membersOnly && affiliation < .member {
            throw StanzaError(.registrationRequired, text: "this room is for members only")
        }
        if let required = configuration.password, affiliation < .admin, password != required {
            throw StanzaError(.notAuthorized, text: "a password is required")
        }
        let existing = occupants[nick]
        if let existing, existing.bareKey != bareKey {
            throw StanzaError(.conflict, text: "that nickname is in use")
        }
        if existing == nil, occupants.count >= min(configuration.maxUsers, limits.maxOccupants), affiliation < .admin {
            throw StanzaError(.serviceUnavailable, text: "the room is full")
        }

        var effects = MUCEffects()
        // Everyone already present, as the newcomer may see them.
        let sees = configuration.nonAnonymous || affiliation >= .admin
        let newcomer = [MUCRecipient(jid: session, bareKey: bareKey)]
        var built: [(String, SharedStanza)] = []
        for (key, other) in occupants where other.nick != nick {
            if let cached = other.cachedPresence[sees] {
                effects.deliveries.append(.shared(cached, newcomer))
            } else {
                let shared = SharedStanza(presence(of: other, unavailable: false, showJID: sees, codes: []))
                built.append((key, shared))
                effects.deliveries.append(.shared(shared, newcomer))
            }
        }
        for (key, shared) in built { occupants[key]?.cachedPresence[sees] = shared }
        var occupant = existing ?? MUCOccupant(
            nick: nick, realJID: session.bare, bareKey: bareKey, sessions: [], role: defaultRole(for: affiliation),
            payload: [], occupantID: occupantID(of: bareKey))
        occupant.sessions.append(session)
        occupant.payload = Self.payload(of: stanza)
        occupants[nick] = occupant
        nickOf[session] = nick
        var selfCodes: [Int] = []
        if configuration.nonAnonymous { selfCodes.append(100) }
        if configuration.archiving { selfCodes.append(170) }
        if created { selfCodes.append(201) }
        if requestedNick != nick { selfCodes.append(210) }
        broadcast(occupant, unavailable: false, selfCodes: selfCodes, into: &effects)
        for entry in historyFor(history, now: now) {
            var message = entry.stanza
            message.append(
                XMLElement("delay", xmlns: NS.delay, ["stamp": Timestamp.string(Date(timeIntervalSince1970: entry.time)), "from": self.bareKey]))
            effects.send(message, to: session)
        }
        effects.send(subjectMessage(), to: session)
        return effects
    }

    private func defaultRole(for affiliation: MUCAffiliation) -> MUCRole {
        switch affiliation {
        case .owner, .admin: return .moderator
        case .member: return .participant
        case .none: return configuration.moderated ? .visitor : .participant
        case .outcast: return .none
        }
    }

    private mutating func updatePresence(session: JID, _ stanza: XMLElement) -> MUCEffects {
        guard let nick = nickOf[session], var occupant = occupants[nick] else { return MUCEffects() }
        occupant.payload = Self.payload(of: stanza)
        occupants[nick] = occupant
        var effects = MUCEffects()
        broadcast(occupant, unavailable: false, into: &effects)
        return effects
    }

    private mutating func changeNick(session: JID, from old: String, to new: String, _ stanza: XMLElement) throws(StanzaError) -> MUCEffects {
        guard var occupant = occupants[old] else { return MUCEffects() }
        if let taken = occupants[new], taken.bareKey != occupant.bareKey {
            throw StanzaError(.conflict, text: "that nickname is in use")
        }
        guard occupants[new] == nil, occupant.sessions.count == 1 else {
            throw StanzaError(.notAcceptable, text: "leave with your other devices before changing your nickname")
        }
        var effects = MUCEffects()
        broadcast(occupant, unavailable: true, codes: [303], itemAttributes: ["nick": new], into: &effects)
        occupants[old] = nil
        occupant.nick = new
        occupant.payload = Self.payload(of: stanza)
        occupants[new] = occupant
        nickOf[session] = new
        broadcast(occupant, unavailable: false, into: &effects)
        return effects
    }

    /// A session leaves (unavailable presence, or its stream ended).
    mutating func leave(session: JID, status: XMLElement? = nil) -> MUCEffects {
        guard let nick = nickOf.removeValue(forKey: session), var occupant = occupants[nick] else { return MUCEffects() }
        var effects = MUCEffects()
        occupant.sessions.removeAll { $0 == session }
        if occupant.sessions.isEmpty {
            occupant.payload = status.map(Self.payload(of:)) ?? []
            occupants[nick] = nil
            broadcast(occupant, unavailable: true, alsoTo: [session], into: &effects)
        } else {
            occupants[nick] = occupant
            var own = presence(of: occupant, unavailable: true, showJID: true, codes: [110])
            own[attribute: "to"] = session.description
            effects.deliveries.append(.one(own, session))
        }
        if occupants.isEmpty && !configuration.persistent {
            gone = true
            effects.destroyed = true
        }
        return effects
    }

    /// Removes an occupant (all its sessions) with the given status code (kick 307, ban 301,
    /// affiliation 321, members-only 322), telling everyone.
    private mutating func remove(
        nick: String, code: Int, affiliation: MUCAffiliation? = nil, actor: String?, reason: String?, into effects: inout MUCEffects
    ) {
        guard var occupant = occupants.removeValue(forKey: nick) else { return }
        for session in occupant.sessions { nickOf[session] = nil }
        occupant.role = .none
        var children: [XMLElement] = []
        if let actor { children.append(XMLElement("actor", xmlns: MUCNS.user, ["nick": actor])) }
        if let reason, !reason.isEmpty { children.append(XMLElement("reason", xmlns: MUCNS.user).withText(reason)) }
        occupant.payload = []
        broadcast(occupant, unavailable: true, codes: [code], itemChildren: children, into: &effects)
        if occupants.isEmpty && !configuration.persistent {
            gone = true
            effects.destroyed = true
        }
    }

    // MARK: - Messages

    /// The subject as sent on join and on change (empty `<subject/>` when none).
    func subjectMessage() -> XMLElement {
        let from = subjectBy.map { occupantJID($0).description } ?? bareKey
        var message = XMLElement("message", xmlns: NS.client, ["from": from, "type": "groupchat", "id": "subject"])
        message.append(XMLElement("subject", xmlns: NS.client).withText(subject ?? ""))
        return message
    }

    /// A groupchat message from an occupant: a subject change or a message for everyone,
    /// stamped with the room's stanza-id (XEP-0359) and kept as history. `position`: the archive
    /// position `stanzaID` was made from, for the room's archive copy.
    mutating func groupchat(
        _ message: XMLElement, from session: JID, stanzaID: String, position: Int64? = nil, now: Double
    ) throws(StanzaError) -> MUCEffects {
        guard let nick = nickOf[session], let occupant = occupants[nick] else {
            throw StanzaError(.notAcceptable, text: "join the room before sending to it")
        }
        guard occupant.role >= .participant else {
            throw StanzaError(.forbidden, text: "you have no voice in this moderated room")
        }
        let body = message.child("body", namespace: NS.client)
        var effects = MUCEffects()
        if let subjectElement = message.child("subject", namespace: NS.client), body == nil {
            guard occupant.role == .moderator || configuration.changeSubject else {
                throw StanzaError(.forbidden, text: "only moderators may change the subject")
            }
            guard subjectElement.text.count <= MUCLimits.longestSubject else {
                throw StanzaError(.notAcceptable, text: "the subject is longer than \(MUCLimits.longestSubject) characters")
            }
            subject = subjectElement.text.isEmpty ? nil : subjectElement.text
            subjectBy = subject == nil ? nil : nick
            effects.persist = true
        }
        var out = message
        out[attribute: "to"] = nil
        out[attribute: "from"] = occupantJID(nick).description
        out[attribute: "type"] = "groupchat"
        let by = bareKey
        out.removeChildren {
            ($0.name == "stanza-id" && $0.namespace == MUCNS.stanzaID && $0[attribute: "by"] == by)
                || $0.namespace == MUCNS.user || $0.name == "delay" && $0.namespace == NS.delay || $0.namespace == MUCNS.occupantID
        }
        out.append(occupantIDElement(occupant))
        out.append(XMLElement("stanza-id", xmlns: MUCNS.stanzaID, ["id": stanzaID, "by": by]))
        if body != nil {
            appendHistory(MUCHistoryEntry(stanza: out, stanzaID: stanzaID, time: now, characters: XMLSerializer.string(out).count))
        }
        if configuration.archiving, body != nil || out.child(namespace: MUCNS.retract) != nil {
            effects.archive = (out, stanzaID, occupant.bareKey, position)
        }
        effects.audit = (out, occupant.bareKey)
        effects.deliveries.append(.shared(SharedStanza(out), allSessions))
        return effects
    }

    /// A room-originated groupchat message (e.g. a moderation notice) to everyone.
    mutating func announce(_ message: XMLElement, stanzaID: String, position: Int64? = nil, archive: Bool) -> MUCEffects {
        var out = message
        out[attribute: "from"] = out[attribute: "from"] ?? bareKey
        out[attribute: "type"] = "groupchat"
        out.append(XMLElement("stanza-id", xmlns: MUCNS.stanzaID, ["id": stanzaID, "by": bareKey]))
        var effects = MUCEffects()
        if archive && configuration.archiving { effects.archive = (out, stanzaID, bareKey, position) }
        effects.deliveries.append(.shared(SharedStanza(out), allSessions))
        return effects
    }

    private mutating func appendHistory(_ entry: MUCHistoryEntry) {
        history.append(entry)
        let keep = min(limits.maxHistory, max(configuration.historyLength, 0))
        // Trim in batches: amortised O(1) per message.
        if history.count > keep + 32 || keep == 0 { history.removeFirst(max(0, history.count - keep)) }
    }

    /// Loads history (e.g. from the archive at start-up), oldest first.
    mutating func restoreHistory(_ entries: [MUCHistoryEntry]) {
        history = entries
        let keep = min(limits.maxHistory, configuration.historyLength)
        if history.count > keep { history.removeFirst(history.count - keep) }
    }

    /// Drops a retracted message from the history.
    mutating func forgetHistory(stanzaID: String) {
        history.removeAll { $0.stanzaID == stanzaID }
    }

    /// XEP-0045 §7.2.15: `maxstanzas`, `maxchars`, `seconds`, `since`; the room's history length caps it.
    func historyFor(_ request: XMLElement?, now: Double) -> [MUCHistoryEntry] {
        let keep = min(limits.maxHistory, configuration.historyLength)
        var entries = Array(history.suffix(keep))
        guard let request else { return entries }
        if let seconds = request[attribute: "seconds"].flatMap(Double.init) {
            entries.removeAll { $0.time < now - seconds }
        }
        if let since = request[attribute: "since"].flatMap(ArchiveModule.parseDate) {
            entries.removeAll { $0.time < since }
        }
        if let max = request[attribute: "maxstanzas"].flatMap(Int.init) {
            entries = Array(entries.suffix(Swift.max(0, max)))
        }
        if let maxChars = request[attribute: "maxchars"].flatMap(Int.init) {
            var total = 0
            var kept: [MUCHistoryEntry] = []
            for entry in entries.reversed() {
                total += entry.characters
                if total > maxChars { break }
                kept.append(entry)
            }
            entries = kept.reversed()
        }
        return entries
    }

    /// A private message between occupants (type chat or normal), relayed from `room/sender`.
    func privateMessage(_ message: XMLElement, from session: JID, to nick: String) throws(StanzaError) -> MUCEffects {
        guard let senderNick = nickOf[session] else { throw StanzaError(.notAcceptable, text: "join the room first") }
        guard message.stanzaType != "groupchat" else {
            throw StanzaError(.badRequest, text: "groupchat messages go to the room, not to an occupant")
        }
        guard let target = occupants[nick] else { throw StanzaError(.itemNotFound, text: "no such occupant") }
        var out = message
        out[attribute: "from"] = occupantJID(senderNick).description
        out.removeChildren { $0.namespace == MUCNS.user || $0.namespace == MUCNS.occupantID }
        out.append(XMLElement("x", xmlns: MUCNS.user))
        if let sender = occupants[senderNick] { out.append(occupantIDElement(sender)) }
        var effects = MUCEffects()
        for recipient in target.sessions { effects.send(out, to: recipient) }
        return effects
    }

    // MARK: - Invitations (XEP-0045 §7.8)

    /// Mediated invitations and declines in a `<x xmlns='…muc#user'/>`.
    mutating func invitations(_ x: XMLElement, from session: JID) throws(StanzaError) -> MUCEffects {
        var effects = MUCEffects()
        let declines = x.elements.filter { $0.name == "decline" }
        for decline in declines {
            guard let to = decline[attribute: "to"] else { throw StanzaError(.badRequest, text: "a decline names the inviter") }
            guard let inviter = try? JID(to) else { throw StanzaError(.jidMalformed) }
            var forwarded = XMLElement("x", xmlns: MUCNS.user)
            var element = XMLElement("decline", xmlns: MUCNS.user, ["from": session.bare.description])
            if let reason = decline.child("reason") { element.append(reason) }
            forwarded.append(element)
            var message = XMLElement("message", xmlns: NS.client, ["from": bareKey])
            message.append(forwarded)
            effects.send(message, to: inviter)
        }
        let invites = x.elements.filter { $0.name == "invite" }
        guard !invites.isEmpty else {
            if declines.isEmpty { throw StanzaError(.badRequest, text: "nothing to do") }
            return effects
        }
        guard let nick = nickOf[session], let occupant = occupants[nick] else {
            throw StanzaError(.notAcceptable, text: "join the room before inviting others")
        }
        let senderAffiliation = affiliation(of: occupant.bareKey)
        guard configuration.allowInvites || senderAffiliation >= .admin else {
            throw StanzaError(.forbidden, text: "only admins may invite to this room")
        }
        guard invites.count <= 20 else { throw StanzaError(.notAcceptable, text: "at most 20 invitations at once") }
        for invite in invites {
            guard let to = invite[attribute: "to"], let invitee = try? JID(to) else { throw StanzaError(.jidMalformed) }
            if configuration.membersOnly, affiliation(of: invitee.bare.description) < .member,
                affiliation(of: invitee.bare.description) != .outcast
            {
                affiliations[invitee.bare.description] = .member
                effects.persist = true
            }
            var element = XMLElement(
                "invite", xmlns: MUCNS.user,
                ["from": configuration.nonAnonymous ? occupant.realJID.description : occupantJID(nick).description])
            if let reason = invite.child("reason") {
                element.append(XMLElement("reason", xmlns: MUCNS.user).withText(String(reason.text.prefix(MUCLimits.longestReason))))
            }
            var forwarded = XMLElement("x", xmlns: MUCNS.user)
            forwarded.append(element)
            if let password = configuration.password { forwarded.append(XMLElement("password", xmlns: MUCNS.user).withText(password)) }
            var message = XMLElement("message", xmlns: NS.client, ["from": bareKey])
            message.append(XMLElement("body", xmlns: NS.client).withText("\(occupant.realJID) invites you to the room \(bareKey)"))
            message.append(forwarded)
            effects.send(message, to: invitee.bare)
        }
        return effects
    }

    // MARK: - Self-ping (XEP-0410)

    /// Whether `session` is joined as `nick` (a ping to one's own occupant JID).
    func isJoined(_ session: JID, as nick: String) -> Bool { nickOf[session] == nick }

    func hasOccupant(_ nick: String) -> Bool { occupants[nick] != nil }

    /// The joined sessions of an occupant (IQ relay).
    func sessions(of nick: String) -> [JID] { occupants[nick]?.sessions ?? [] }

    // MARK: - Administration (XEP-0045 §8, §9)

    /// `muc#admin` get: the occupants with a role, or the users with an affiliation.
    func adminList(_ query: XMLElement, from session: JID) throws(StanzaError) -> XMLElement {
        let items = query.elements.filter { $0.name == "item" }
        guard items.count == 1, let request = items.first else { throw StanzaError(.badRequest, text: "ask for one list") }
        let requester = affiliation(of: session.bare.description)
        var result = XMLElement("query", xmlns: MUCNS.admin)
        if let value = request[attribute: "affiliation"] {
            guard let wanted = MUCAffiliation(rawValue: value), wanted != .none else {
                throw StanzaError(.badRequest, text: "unknown affiliation")
            }
            guard requester >= .admin else { throw StanzaError(.forbidden, text: "only admins and owners see affiliation lists") }
            for (jid, affiliation) in affiliations.sorted(by: { $0.key < $1.key }) where affiliation == wanted {
                result.append(XMLElement("item", xmlns: MUCNS.admin, ["affiliation": affiliation.rawValue, "jid": jid]))
            }
            return result
        }
        if let value = request[attribute: "role"] {
            guard let wanted = MUCRole(rawValue: value), wanted != .none else { throw StanzaError(.badRequest, text: "unknown role") }
            guard occupant(session: session)?.role == .moderator else {
                throw StanzaError(.forbidden, text: "only moderators see role lists")
            }
            for occupant in occupants.values.sorted(by: { $0.nick < $1.nick }) where occupant.role == wanted {
                result.append(
                    XMLElement(
                        "item", xmlns: MUCNS.admin,
                        ["nick": occupant.nick, "role": occupant.role.rawValue, "jid": occupant.realJID.description,
                         "affiliation": affiliation(of: occupant.bareKey).rawValue]))
            }
            return result
        }
        throw StanzaError(.badRequest, text: "ask for a role or an affiliation")
    }

    /// `muc#admin` set: role and affiliation changes, all or nothing.
    mutating func adminSet(_ query: XMLElement, from session: JID) throws(StanzaError) -> MUCEffects {
        let items = query.elements.filter { $0.name == "item" }
        guard !items.isEmpty, items.count <= 100 else { throw StanzaError(.badRequest, text: "send 1 to 100 items") }
        var room = self
        var effects = MUCEffects()
        let actor = room.occupant(session: session)
        let actorAffiliation = room.affiliation(of: session.bare.description)
        for item in items {
            let reason = item.child("reason").map { String($0.text.prefix(MUCLimits.longestReason)) }
            if let value = item[attribute: "affiliation"] {
                guard let affiliation = MUCAffiliation(rawValue: value) else { throw StanzaError(.badRequest, text: "unknown affiliation") }
                let target: JID
                if let jid = item[attribute: "jid"] {
                    guard let parsed = try? JID(jid) else { throw StanzaError(.jidMalformed) }
                    target = parsed.bare
                } else if let nick = item[attribute: "nick"], let occupant = room.occupants[nick] {
                    target = occupant.realJID
                } else {
                    throw StanzaError(.badRequest, text: "name the user by jid")
                }
                try room.setAffiliation(
                    affiliation, of: target.description, by: actorAffiliation, actor: actor?.nick, reason: reason, into: &effects)
            } else if let value = item[attribute: "role"] {
                guard let role = MUCRole(rawValue: value) else { throw StanzaError(.badRequest, text: "unknown role") }
                guard let nick = item[attribute: "nick"] else { throw StanzaError(.badRequest, text: "name the occupant by nick") }
                guard let actor, actor.role == .moderator else { throw StanzaError(.forbidden, text: "only moderators change roles") }
                try room.setRole(role, of: nick, by: actor, actorAffiliation: actorAffiliation, reason: reason, into: &effects)
            } else {
                throw StanzaError(.badRequest, text: "an item sets a role or an affiliation")
            }
        }
        self = room
        return effects
    }

    private mutating func setRole(
        _ role: MUCRole, of nick: String, by actor: MUCOccupant, actorAffiliation: MUCAffiliation, reason: String?,
        into effects: inout MUCEffects
    ) throws(StanzaError) {
        guard var target = occupants[nick] else { throw StanzaError(.itemNotFound, text: "no such occupant") }
        let targetAffiliation = affiliation(of: target.bareKey)
        if targetAffiliation >= .admin && role != .moderator {
            throw StanzaError(.notAllowed, text: "admins and owners keep their role")
        }
        if role == .moderator || target.role == .moderator, actorAffiliation < .admin {
            throw StanzaError(.forbidden, text: "only admins and owners grant or revoke moderation")
        }
        switch role {
        case .none:
            remove(nick: nick, code: 307, actor: actor.nick, reason: reason, into: &effects)
        case .visitor, .participant, .moderator:
            guard target.role != role else { return }
            target.role = role
            occupants[nick] = target
            var children: [XMLElement] = []
            if let reason, !reason.isEmpty { children.append(XMLElement("reason", xmlns: MUCNS.user).withText(reason)) }
            broadcast(target, unavailable: false, itemChildren: children, into: &effects)
        }
    }

    /// Sets an affiliation, enforcing who may do what, and applies it to the occupant (if present).
    /// - Parameter actorAffiliation: nil for the server itself (directory synchronisation).
    mutating func setAffiliation(
        _ affiliation: MUCAffiliation, of bare: String, by actorAffiliation: MUCAffiliation?, actor: String?, reason: String?,
        into effects: inout MUCEffects
    ) throws(StanzaError) {
        let current = self.affiliation(of: bare)
        if let actorAffiliation {
            guard actorAffiliation >= .admin else { throw StanzaError(.forbidden, text: "only admins and owners change affiliations") }
            if actorAffiliation < .owner {
                if current >= .admin { throw StanzaError(.notAllowed, text: "only owners change admins and owners") }
                if affiliation >= .admin { throw StanzaError(.forbidden, text: "only owners appoint admins and owners") }
            }
        }
        guard current != affiliation else { return }
        if current == .owner && owners.count == 1 && actorAffiliation != nil {
            throw StanzaError(.conflict, text: "a room keeps at least one owner")
        }
        affiliations[bare] = affiliation == .none ? nil : affiliation
        effects.persist = true
        for occupant in occupants.values where occupant.bareKey == bare {
            switch affiliation {
            case .outcast:
                remove(nick: occupant.nick, code: 301, actor: actor, reason: reason, into: &effects)
            case .none where configuration.membersOnly:
                remove(nick: occupant.nick, code: 321, actor: actor, reason: reason, into: &effects)
            default:
                var changed = occupant
                switch affiliation {
                case .owner, .admin: changed.role = .moderator
                case .member: changed.role = occupant.role == .moderator && current >= .admin ? .participant : max(occupant.role, .participant)
                default: changed.role = current >= .admin ? defaultRole(for: affiliation) : occupant.role
                }
                occupants[occupant.nick] = changed
                broadcast(changed, unavailable: false, into: &effects)
            }
        }
    }

    // MARK: - Configuration (XEP-0045 §10)

    /// Applies a submitted configuration form; unlocks a new room. Occupants are told (104 and
    /// the privacy codes), and non-members leave a room that became members-only (322).
    mutating func configure(_ form: XMLElement?, maxUsersCap: Int) throws(StanzaError) -> MUCEffects {
        var next = configuration
        if let form { try next.apply(form, maxUsersCap: maxUsersCap, historyCap: limits.maxHistory) }
        return reconfigure(next)
    }

    /// Switches to a new configuration (unlocking a new room), with the notices and removals
    /// the change implies.
    mutating func reconfigure(_ next: MUCRoomConfiguration) -> MUCEffects {
        let previous = configuration
        configuration = next
        let wasLocked = locked
        locked = false
        var effects = MUCEffects()
        effects.persist = true
        guard !wasLocked, previous != next else { return effects }
        var codes = [104]
        if next.nonAnonymous != previous.nonAnonymous { codes.append(next.nonAnonymous ? 172 : 173) }
        if next.archiving != previous.archiving { codes.append(next.archiving ? 170 : 171) }
        var notice = XMLElement("message", xmlns: NS.client, ["from": bareKey, "type": "groupchat", "id": "config"])
        var x = XMLElement("x", xmlns: MUCNS.user)
        for code in codes { x.append(XMLElement("status", xmlns: MUCNS.user, ["code": String(code)])) }
        notice.append(x)
        if !allSessions.isEmpty { effects.deliveries.append(.shared(SharedStanza(notice), allSessions)) }
        if next.membersOnly && !previous.membersOnly {
            for occupant in occupants.values where affiliation(of: occupant.bareKey) < .member {
                remove(nick: occupant.nick, code: 322, actor: nil, reason: nil, into: &effects)
            }
        }
        return effects
    }

    /// Destroys the room: every occupant is told, with the reason and an alternative room.
    mutating func destroy(reason: String?, alternate: JID?) -> MUCEffects {
        var effects = MUCEffects()
        var destroy = XMLElement("destroy", xmlns: MUCNS.user)
        if let alternate { destroy[attribute: "jid"] = alternate.description }
        if let reason { destroy.append(XMLElement("reason", xmlns: MUCNS.user).withText(String(reason.prefix(MUCLimits.longestReason)))) }
        for occupant in occupants.values {
            var gone = occupant
            gone.role = .none
            var presence = XMLElement("presence", xmlns: NS.client, ["from": occupantJID(gone.nick).description, "type": "unavailable"])
            var x = XMLElement("x", xmlns: MUCNS.user)
            x.append(XMLElement("item", xmlns: MUCNS.user, ["affiliation": "none", "role": "none"]))
            x.append(destroy)
            presence.append(x)
            effects.deliveries.append(.shared(SharedStanza(presence), allSessions))
        }
        occupants = [:]
        nickOf = [:]
        gone = true
        effects.destroyed = true
        effects.deleteStored = true
        return effects
    }

    // MARK: - Discovery

    func discoInfo() -> XMLElement {
        var query = XMLElement("query", xmlns: NS.discoInfo)
        query.append(
            XMLElement(
                "identity", xmlns: NS.discoInfo,
                ["category": "conference", "type": "text", "name": configuration.name.isEmpty ? (jid.localpart ?? "") : configuration.name]))
        var features = [MUCNS.muc, NS.discoInfo, NS.discoItems, MUCNS.selfPing, MUCNS.stanzaID, MUCNS.retract, MUCNS.moderate, MUCNS.occupantID]
        features += configuration.features
        if configuration.archiving { features.append(MUCNS.mam) }
        for feature in features.sorted() { query.append(XMLElement("feature", xmlns: NS.discoInfo, ["var": feature])) }
        var form = XMLElement("x", xmlns: NS.dataForms, ["type": "result"])
        func field(_ name: String, _ value: String) {
            var field = XMLElement("field", xmlns: NS.dataForms, ["var": name])
            field.append(XMLElement("value", xmlns: NS.dataForms).withText(value))
            form.append(field)
        }
        field("FORM_TYPE", MUCNS.roomInfo)
        field("muc#roomconfig_roomname", configuration.name)
        field("muc#roominfo_description", configuration.description)
        field("muc#roominfo_occupants", String(occupants.count))
        field("muc#roominfo_subject", subject ?? "")
        field("muc#roomconfig_changesubject", configuration.changeSubject ? "1" : "0")
        query.append(form)
        return query
    }
}
