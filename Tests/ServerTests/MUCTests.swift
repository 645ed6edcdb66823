import Foundation
@testable import SQLiteStorage
import Server
import SwitchboardTestSupport
import Testing
import XMLStream
import XMPPCore

@testable import Modules

/// XEP-0045 multi-user chat and what rides on it (XEP-0410, XEP-0313/0359 on rooms,
/// XEP-0424/0425), through the real server and clients.
@Suite struct MUCTests {
    static let service = "conference.example.test"
    static let userNS = "http://jabber.org/protocol/muc#user"
    static let mucNS = "<x xmlns='http://jabber.org/protocol/muc'/>"

    static func codes(_ stanza: XMLElement) -> Set<String> {
        Set(stanza.child("x", namespace: userNS)?.elements.filter { $0.name == "status" }.compactMap { $0[attribute: "code"] } ?? [])
    }

    static func item(_ stanza: XMLElement) -> XMLElement? { stanza.child("x", namespace: userNS)?.child("item") }

    static func errorCondition(_ stanza: XMLElement) -> String? {
        stanza.child("error")?.elements.first { $0.namespace == NS.stanzaErrors && $0.name != "text" }?.name
    }

    /// Sends join presence; returns the self-presence (status 110) or the error presence.
    @discardableResult
    static func join(_ client: TestClient, _ occupant: String, _ x: String = mucNS) async throws -> XMLElement {
        try await client.send("<presence to='\(occupant)'>\(x)</presence>")
        let bareRoom = occupant.split(separator: "/").first.map(String.init) ?? occupant
        return try await client.next {
            $0.name == "presence" && ($0.stanzaType == "error" && $0[attribute: "from"]?.hasPrefix(bareRoom) == true || codes($0).contains("110"))
        }
    }

    /// Waits for the subject message that ends a join; returns the messages before it (history).
    static func history(_ client: TestClient) async throws -> [XMLElement] {
        var messages: [XMLElement] = []
        while true {
            let element = try await client.next { $0.name == "message" }
            if element.child("subject") != nil && element.child("body") == nil { return messages }
            messages.append(element)
        }
    }

    static func iq(_ client: TestClient, _ xml: String, id: String) async throws -> XMLElement {
        try await client.send(xml)
        return try await client.next { $0.name == "iq" && $0.id == id }
    }

    /// Creates `room` as `client` (nick `nick`), accepting the default configuration (instant room).
    static func createInstantRoom(_ client: TestClient, _ room: String, nick: String) async throws {
        let me = try await join(client, "\(room)@\(service)/\(nick)")
        #expect(codes(me).isSuperset(of: ["110", "201"]), "\(XMLSerializer.string(me))")
        _ = try await history(client)
        let result = try await iq(
            client,
            "<iq type='set' id='instant' to='\(room)@\(service)'><query xmlns='http://jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data' type='submit'/></query></iq>",
            id: "instant")
        #expect(result.stanzaType == "result", "\(XMLSerializer.string(result))")
    }

    static func configure(_ client: TestClient, _ room: String, _ fields: [String: String], id: String = "cfg") async throws -> XMLElement {
        var form = "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#roomconfig</value></field>"
        for (name, value) in fields.sorted(by: { $0.key < $1.key }) { form += "<field var='\(name)'><value>\(value)</value></field>" }
        form += "</x>"
        return try await iq(
            client, "<iq type='set' id='\(id)' to='\(room)@\(service)'><query xmlns='http://jabber.org/protocol/muc#owner'>\(form)</query></iq>",
            id: id)
    }

    static func start(_ users: [String], configure: (inout ServerConfiguration) -> Void = { _ in }) async throws -> (TestServer, [TestClient]) {
        let server = try await TestServer.start {
            $0.c2s.requireTLS = false
            configure(&$0)
        }
        var clients: [TestClient] = []
        for user in users {
            try await server.addUser(user, password: "pw")
            clients.append(try await server.online(user, "pc"))
        }
        return (server, clients)
    }

    // MARK: - Join, chat, presence

    @Test func createJoinChatAndPrivateMessages() async throws {
        let (server, clients) = try await Self.start(["alice", "bob"])
        let (alice, bob) = (clients[0], clients[1])
        let room = "team@\(Self.service)"

        // A new room is locked: alice is owner and moderator, non-anonymous (100), archived (170).
        let created = try await Self.join(alice, "\(room)/Alice")
        #expect(Self.codes(created) == ["110", "100", "170", "201"])
        #expect(Self.item(created)?[attribute: "affiliation"] == "owner" && Self.item(created)?[attribute: "role"] == "moderator")
        _ = try await Self.history(alice)
        // Locked: nobody else gets in until it is configured.
        let refused = try await Self.join(bob, "\(room)/Bob")
        #expect(Self.errorCondition(refused) == "item-not-found")
        let instant = try await Self.iq(
            alice,
            "<iq type='set' id='i1' to='\(room)'><query xmlns='http://jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data' type='submit'/></query></iq>",
            id: "i1")
        #expect(instant.stanzaType == "result")

        // Bob joins: first alice's presence (with her real JID), then his own.
        try await bob.send("<presence to='\(room)/Bob'>\(Self.mucNS)</presence>")
        let aliceSeen = try await bob.next { $0.name == "presence" }
        #expect(aliceSeen[attribute: "from"] == "\(room)/Alice")
        #expect(Self.item(aliceSeen)?[attribute: "jid"] == "alice@example.test/pc")
        let bobSelf = try await bob.next { $0.name == "presence" }
        #expect(bobSelf[attribute: "from"] == "\(room)/Bob" && Self.codes(bobSelf) == ["110", "100", "170"])
        #expect(Self.item(bobSelf)?[attribute: "role"] == "participant" && Self.item(bobSelf)?[attribute: "affiliation"] == "none")
        #expect(try await Self.history(bob).isEmpty)
        let bobSeen = try await alice.next { $0.name == "presence" && $0[attribute: "from"] == "\(room)/Bob" }
        #expect(Self.codes(bobSeen).isEmpty && Self.item(bobSeen)?[attribute: "jid"] == "bob@example.test/pc")

        // A groupchat message reaches everyone, with the room's stanza-id, from the sender's occupant JID.
        try await bob.send("<message to='\(room)' type='groupchat' id='m1'><body>hello room</body></message>")
        for client in [alice, bob] {
            let message = try await client.next { $0.name == "message" }
            #expect(message[attribute: "from"] == "\(room)/Bob" && message.stanzaType == "groupchat" && message.id == "m1")
            #expect(message.child("body")?.text == "hello room")
            let stanzaID = message.child("stanza-id", namespace: "urn:xmpp:sid:0")
            #expect(stanzaID?[attribute: "by"] == room && stanzaID?[attribute: "id"]?.isEmpty == false)
            // XEP-0421: the same occupant id as in bob's presence, not his JID.
            let occupantID = message.child("occupant-id", namespace: "urn:xmpp:occupant-id:0")?[attribute: "id"]
            #expect(occupantID != nil && occupantID == bobSeen.child("occupant-id", namespace: "urn:xmpp:occupant-id:0")?[attribute: "id"])
            #expect(occupantID?.contains("bob") == false)
        }
        // A forged occupant id is replaced.
        try await bob.send(
            "<message to='\(room)' type='groupchat' id='forged'><body>x</body><occupant-id xmlns='urn:xmpp:occupant-id:0' id='alice'/></message>")
        let forged = try await alice.next { $0.name == "message" && $0.id == "forged" }
        #expect(forged.elements.filter { $0.name == "occupant-id" }.map { $0[attribute: "id"] } == [Self.item(bobSeen).flatMap { _ in bobSeen.child("occupant-id", namespace: "urn:xmpp:occupant-id:0")?[attribute: "id"] }])
        _ = try await bob.next { $0.name == "message" && $0.id == "forged" }

        // Private message between occupants.
        try await alice.send("<message to='\(room)/Bob' type='chat' id='pm1'><body>psst</body></message>")
        let pm = try await bob.next { $0.name == "message" }
        #expect(pm[attribute: "from"] == "\(room)/Alice" && pm.child("body")?.text == "psst" && pm.child("x", namespace: Self.userNS) != nil)
        try await alice.send("<message to='\(room)/Nobody' type='chat' id='pm2'><body>?</body></message>")
        let noSuch = try await alice.next { $0.name == "message" && $0.id == "pm2" }
        #expect(Self.errorCondition(noSuch) == "item-not-found")

        // Subject change, broadcast and sent on join.
        try await alice.send("<message to='\(room)' type='groupchat'><subject>Quarterly plans</subject></message>")
        for client in [alice, bob] {
            let subject = try await client.next { $0.name == "message" && $0.child("subject") != nil }
            #expect(subject.child("subject")?.text == "Quarterly plans" && subject[attribute: "from"] == "\(room)/Alice")
        }

        // Leaving: bob's unavailable presence reaches alice, and bob gets his own with 110.
        try await bob.send("<presence to='\(room)/Bob' type='unavailable'/>")
        let bobLeft = try await bob.next { $0.name == "presence" }
        #expect(bobLeft.stanzaType == "unavailable" && Self.codes(bobLeft).contains("110"))
        let seenLeaving = try await alice.next { $0.name == "presence" && $0[attribute: "from"] == "\(room)/Bob" }
        #expect(seenLeaving.stanzaType == "unavailable")
        // Not an occupant any more: groupchat is refused.
        try await bob.send("<message to='\(room)' type='groupchat' id='m2'><body>still here?</body></message>")
        let notJoined = try await bob.next { $0.name == "message" && $0.id == "m2" }
        #expect(Self.errorCondition(notJoined) == "not-acceptable")

        // The subject is sent on join.
        try await Self.join(bob, "\(room)/Bob")
        let subjectOnJoin = try await bob.next { $0.name == "message" && $0.child("subject") != nil }
        #expect(subjectOnJoin.child("subject")?.text == "Quarterly plans")
        await alice.close()
        await bob.close()
        await server.stop()
    }

    @Test func nicknamesConflictChangeAndNormalisation() async throws {
        let (server, clients) = try await Self.start(["alice", "bob"])
        let (alice, bob) = (clients[0], clients[1])
        let room = "nicks@\(Self.service)"
        try await Self.createInstantRoom(alice, "nicks", nick: "Alice")

        let conflict = try await Self.join(bob, "\(room)/Alice")
        #expect(Self.errorCondition(conflict) == "conflict" && conflict.stanzaType == "error")
        // No nickname at all.
        try await bob.send("<presence to='\(room)'>\(Self.mucNS)</presence>")
        let noNick = try await bob.next { $0.name == "presence" && $0.stanzaType == "error" }
        #expect(Self.errorCondition(noNick) == "jid-malformed")
        // The service prepares the nickname (runs of spaces collapse): 210.
        let modified = try await Self.join(bob, "\(room)/Bob  B")
        #expect(modified[attribute: "from"] == "\(room)/Bob B" && Self.codes(modified).contains("210"), "\(XMLSerializer.string(modified))")
        _ = try await Self.history(bob)

        // Nick change: unavailable with 303 and the new nick, then available under the new nick.
        try await bob.send("<presence to='\(room)/Robert'/>")
        let gone = try await alice.next { $0.name == "presence" && $0[attribute: "from"] == "\(room)/Bob B" && $0.stanzaType == "unavailable" }
        #expect(Self.codes(gone) == ["303"] && Self.item(gone)?[attribute: "nick"] == "Robert")
        let back = try await alice.next { $0.name == "presence" && $0[attribute: "from"] == "\(room)/Robert" }
        #expect(back.stanzaType == nil)
        let own = try await bob.next { $0.name == "presence" && $0[attribute: "from"] == "\(room)/Robert" }
        #expect(Self.codes(own).contains("110"))
        // Changing to a taken nick: conflict.
        try await bob.send("<presence to='\(room)/Alice'/>")
        let taken = try await bob.next { $0.name == "presence" && $0.stanzaType == "error" }
        #expect(Self.errorCondition(taken) == "conflict")
        await alice.close()
        await bob.close()
        await server.stop()
    }

    @Test func historyOnJoinHonoursTheRequest() async throws {
        let (server, clients) = try await Self.start(["alice", "bob"])
        let (alice, bob) = (clients[0], clients[1])
        let room = "hist@\(Self.service)"
        try await Self.createInstantRoom(alice, "hist", nick: "Alice")
        for index in 1...5 {
            try await alice.send("<message to='\(room)' type='groupchat' id='h\(index)'><body>message \(index)</body></message>")
            _ = try await alice.next { $0.name == "message" && $0.id == "h\(index)" }
        }
        // Everything (the room keeps 20 by default), with XEP-0203 delay from the room.
        try await Self.join(bob, "\(room)/Bob")
        let all = try await Self.history(bob)
        #expect(all.map { $0.child("body")?.text ?? "" } == (1...5).map { "message \($0)" })
        #expect(all.allSatisfy { $0.child("delay", namespace: NS.delay)?[attribute: "from"] == room }, "\(all.map { XMLSerializer.string($0) })")
        #expect(all.allSatisfy { $0.child("stanza-id", namespace: "urn:xmpp:sid:0")?[attribute: "by"] == room })
        try await bob.send("<presence to='\(room)/Bob' type='unavailable'/>")
        _ = try await bob.next { $0.name == "presence" && $0.stanzaType == "unavailable" }

        try await Self.join(bob, "\(room)/Bob", "<x xmlns='http://jabber.org/protocol/muc'><history maxstanzas='2'/></x>")
        #expect(try await Self.history(bob).map { $0.child("body")?.text ?? "" } == ["message 4", "message 5"])
        try await bob.send("<presence to='\(room)/Bob' type='unavailable'/>")
        _ = try await bob.next { $0.name == "presence" && $0.stanzaType == "unavailable" }

        try await Self.join(bob, "\(room)/Bob", "<x xmlns='http://jabber.org/protocol/muc'><history maxchars='0'/></x>")
        #expect(try await Self.history(bob).isEmpty)
        try await bob.send("<presence to='\(room)/Bob' type='unavailable'/>")
        _ = try await bob.next { $0.name == "presence" && $0.stanzaType == "unavailable" }

        try await Self.join(bob, "\(room)/Bob", "<x xmlns='http://jabber.org/protocol/muc'><history since='2999-01-01T00:00:00Z'/></x>")
        #expect(try await Self.history(bob).isEmpty)
        try await bob.send("<presence to='\(room)/Bob' type='unavailable'/>")
        _ = try await bob.next { $0.name == "presence" && $0.stanzaType == "unavailable" }

        try await Self.join(bob, "\(room)/Bob", "<x xmlns='http://jabber.org/protocol/muc'><history seconds='3600'/></x>")
        #expect(try await Self.history(bob).count == 5)
        await alice.close()
        await bob.close()
        await server.stop()
    }

    // MARK: - Affiliations and roles

    static func admin(_ client: TestClient, _ room: String, _ items: String, id: String, type: String = "set") async throws -> XMLElement {
        try await iq(
            client, "<iq type='\(type)' id='\(id)' to='\(room)'><query xmlns='http://jabber.org/protocol/muc#admin'>\(items)</query></iq>",
            id: id)
    }

    @Test func kickBanVoiceModerationAndLists() async throws {
        let (server, clients) = try await Self.start(["alice", "bob", "carol"])
        let (alice, bob, carol) = (clients[0], clients[1], clients[2])
        let room = "mod@\(Self.service)"
        try await Self.createInstantRoom(alice, "mod", nick: "Alice")
        #expect(try await Self.configure(alice, "mod", ["muc#roomconfig_moderatedroom": "1"]).stanzaType == "result")
        let bobSelf = try await Self.join(bob, "\(room)/Bob")
        #expect(Self.item(bobSelf)?[attribute: "role"] == "visitor")
        _ = try await Self.history(bob)

        // Visitors cannot speak in a moderated room.
        try await bob.send("<message to='\(room)' type='groupchat' id='v1'><body>may I?</body></message>")
        let silenced = try await bob.next { $0.name == "message" && $0.id == "v1" }
        #expect(Self.errorCondition(silenced) == "forbidden")
        // A participant cannot grant voice; the moderator can.
        #expect(Self.errorCondition(try await Self.admin(bob, room, "<item nick='Bob' role='participant'/>", id: "a0")) == "forbidden")
        #expect(try await Self.admin(alice, room, "<item nick='Bob' role='participant'/>", id: "a1").stanzaType == "result")
        let voiced = try await bob.next { $0.name == "presence" && Self.codes($0).contains("110") }
        #expect(Self.item(voiced)?[attribute: "role"] == "participant")
        try await bob.send("<message to='\(room)' type='groupchat' id='v2'><body>thanks</body></message>")
        #expect(try await bob.next { $0.name == "message" && $0.id == "v2" }.stanzaType == "groupchat")

        // Role list (moderators only) and affiliation list (admins and owners).
        let participants = try await Self.admin(alice, room, "<item role='participant'/>", id: "l1", type: "get")
        #expect(participants.child("query")?.elements.compactMap { $0[attribute: "nick"] } == ["Bob"])
        #expect(Self.errorCondition(try await Self.admin(bob, room, "<item affiliation='owner'/>", id: "l2", type: "get")) == "forbidden")
        #expect(Self.errorCondition(try await Self.admin(alice, room, "<item affiliation='nonsense'/>", id: "l3", type: "get")) == "bad-request")

        // Kick: 307 with actor and reason, to everyone; the owner cannot be kicked.
        #expect(Self.errorCondition(try await Self.admin(alice, room, "<item nick='Alice' role='none'/>", id: "k0")) == "not-allowed")
        // (Occupants are told before the IQ result.)
        try await alice.send(
            "<iq type='set' id='k1' to='\(room)'><query xmlns='http://jabber.org/protocol/muc#admin'><item nick='Bob' role='none'><reason>noise</reason></item></query></iq>")
        #expect(Self.codes(try await alice.next { $0.name == "presence" && $0.stanzaType == "unavailable" }) == ["307"])
        #expect(try await alice.next { $0.name == "iq" && $0.id == "k1" }.stanzaType == "result")
        let kicked = try await bob.next { $0.name == "presence" && $0.stanzaType == "unavailable" }
        #expect(Self.codes(kicked) == ["110", "307"] && Self.item(kicked)?.child("reason")?.text == "noise")
        #expect(Self.item(kicked)?.child("actor")?[attribute: "nick"] == "Alice")
        #expect(Self.errorCondition(try await Self.admin(alice, room, "<item nick='Bob' role='none'/>", id: "k2")) == "item-not-found")

        // Ban: carol is in the room, gets 301, cannot come back (forbidden); the outcast list shows her.
        try await Self.join(carol, "\(room)/Carol")
        _ = try await Self.history(carol)
        #expect(try await Self.admin(alice, room, "<item jid='carol@example.test' affiliation='outcast'/>", id: "b1").stanzaType == "result")
        let banned = try await carol.next { $0.name == "presence" && $0.stanzaType == "unavailable" }
        #expect(Self.codes(banned) == ["110", "301"] && Self.item(banned)?[attribute: "affiliation"] == "outcast")
        #expect(Self.errorCondition(try await Self.join(carol, "\(room)/Carol")) == "forbidden")
        let outcasts = try await Self.admin(alice, room, "<item affiliation='outcast'/>", id: "l4", type: "get")
        #expect(outcasts.child("query")?.elements.compactMap { $0[attribute: "jid"] } == ["carol@example.test"])
        // Malformed JID, and removing the last owner.
        #expect(Self.errorCondition(try await Self.admin(alice, room, "<item jid='@@' affiliation='member'/>", id: "b2")) == "jid-malformed")
        #expect(Self.errorCondition(try await Self.admin(alice, room, "<item jid='alice@example.test' affiliation='member'/>", id: "b3")) == "conflict")

        // Moderator grant needs an admin: make bob admin, he becomes moderator.
        try await Self.join(bob, "\(room)/Bob")
        _ = try await Self.history(bob)
        #expect(try await Self.admin(alice, room, "<item jid='bob@example.test' affiliation='admin'/>", id: "ad1").stanzaType == "result")
        let promoted = try await bob.next { $0.name == "presence" && Self.codes($0).contains("110") }
        #expect(Self.item(promoted)?[attribute: "affiliation"] == "admin" && Self.item(promoted)?[attribute: "role"] == "moderator")
        // An admin cannot touch the owner.
        #expect(Self.errorCondition(try await Self.admin(bob, room, "<item jid='alice@example.test' affiliation='none'/>", id: "ad2")) == "not-allowed")
        // Privacy changes are announced: 173 semi-anonymous, 172 non-anonymous, 171/170 archiving.
        for (fields, code) in [
            (["muc#roomconfig_whois": "moderators"], "173"), (["muc#roomconfig_whois": "anyone"], "172"),
            (["muc#roomconfig_enablearchiving": "0"], "171"), (["muc#roomconfig_enablearchiving": "1"], "170"),
        ] {
            #expect(try await Self.configure(alice, "mod", fields, id: "c\(code)").stanzaType == "result")
            let notice = try await bob.next { $0.name == "message" && Self.codes($0).contains("104") }
            #expect(Self.codes(notice) == ["104", code])
        }
        for client in [alice, bob, carol] { await client.close() }
        await server.stop()
    }

    @Test func membersOnlyPasswordFullAndRemovals() async throws {
        let (server, clients) = try await Self.start(["alice", "bob", "carol", "dave"])
        let (alice, bob, carol, dave) = (clients[0], clients[1], clients[2], clients[3])
        let room = "private@\(Self.service)"
        try await Self.createInstantRoom(alice, "private", nick: "Alice")
        try await Self.join(bob, "\(room)/Bob")
        _ = try await Self.history(bob)
        // Becoming members-only removes the non-members (322) and says so (104).
        #expect(try await Self.configure(alice, "private", ["muc#roomconfig_membersonly": "1"]).stanzaType == "result")
        let notice = try await bob.next { $0.name == "message" && Self.codes($0).contains("104") }
        #expect(notice[attribute: "from"] == room)
        let removed = try await bob.next { $0.name == "presence" && $0.stanzaType == "unavailable" }
        #expect(Self.codes(removed) == ["110", "322"])
        #expect(Self.errorCondition(try await Self.join(bob, "\(room)/Bob")) == "registration-required")
        // Membership lets him in; revoking it in a members-only room removes him (321).
        #expect(try await Self.admin(alice, room, "<item jid='bob@example.test' affiliation='member'/>", id: "m1").stanzaType == "result")
        let member = try await Self.join(bob, "\(room)/Bob")
        #expect(Self.item(member)?[attribute: "affiliation"] == "member")
        _ = try await Self.history(bob)
        #expect(try await Self.admin(alice, room, "<item jid='bob@example.test' affiliation='none'/>", id: "m2").stanzaType == "result")
        let revoked = try await bob.next { $0.name == "presence" && $0.stanzaType == "unavailable" }
        #expect(Self.codes(revoked) == ["110", "321"])
        // The archive of a members-only room is for members.
        let archive = try await Self.iq(bob, "<iq type='set' id='mam' to='\(room)'><query xmlns='urn:xmpp:mam:2'/></iq>", id: "mam")
        #expect(Self.errorCondition(archive) == "forbidden")
        // An owner's invitation to a members-only room makes the invitee a member.
        try await alice.send("<message to='\(room)'><x xmlns='\(Self.userNS)'><invite to='dave@example.test'/></x></message>")
        _ = try await dave.next { $0.name == "message" && $0.child("x", namespace: Self.userNS)?.child("invite") != nil }
        #expect(Self.item(try await Self.join(dave, "\(room)/Dave"))?[attribute: "affiliation"] == "member")
        _ = try await Self.history(dave)

        // Password and size limits on an open room.
        let open = "gated@\(Self.service)"
        try await Self.createInstantRoom(alice, "gated", nick: "Alice")
        let configured = try await Self.configure(
            alice, "gated", ["muc#roomconfig_passwordprotectedroom": "1", "muc#roomconfig_roomsecret": "s3cret", "muc#roomconfig_maxusers": "2"])
        #expect(configured.stanzaType == "result")
        #expect(Self.errorCondition(try await Self.join(carol, "\(open)/Carol")) == "not-authorized")
        #expect(
            Self.errorCondition(
                try await Self.join(carol, "\(open)/Carol", "<x xmlns='http://jabber.org/protocol/muc'><password>wrong</password></x>"))
                == "not-authorized")
        let carolIn = try await Self.join(carol, "\(open)/Carol", "<x xmlns='http://jabber.org/protocol/muc'><password>s3cret</password></x>")
        #expect(Self.codes(carolIn).contains("110"))
        #expect(
            Self.errorCondition(
                try await Self.join(dave, "\(open)/Dave", "<x xmlns='http://jabber.org/protocol/muc'><password>s3cret</password></x>"))
                == "service-unavailable")
        // Bad configuration values are refused and change nothing.
        #expect(Self.errorCondition(try await Self.configure(alice, "gated", ["muc#roomconfig_maxusers": "many"], id: "bad1")) == "not-acceptable")
        #expect(Self.errorCondition(try await Self.configure(alice, "gated", ["muc#roomconfig_whois": "everybody"], id: "bad2")) == "not-acceptable")
        #expect(Self.errorCondition(try await Self.configure(carol, "gated", [:], id: "bad3")) == "forbidden")
        for client in [alice, bob, carol, dave] { await client.close() }
        await server.stop()
    }

    // MARK: - Configuration, destruction, discovery

    @Test func reservedRoomConfigurationDiscoveryAndDestruction() async throws {
        let (server, clients) = try await Self.start(["alice", "bob"])
        let (alice, bob) = (clients[0], clients[1])
        let room = "board@\(Self.service)"
        _ = try await Self.join(alice, "\(room)/Alice")
        _ = try await Self.history(alice)
        // Reserved room: the owner asks for the form first.
        let formIQ = try await Self.iq(
            alice, "<iq type='get' id='f1' to='\(room)'><query xmlns='http://jabber.org/protocol/muc#owner'/></iq>", id: "f1")
        let fields = formIQ.child("query")?.child("x", namespace: NS.dataForms)?.elements.compactMap { $0[attribute: "var"] } ?? []
        for field in ["muc#roomconfig_roomname", "muc#roomconfig_roomdesc", "muc#roomconfig_persistentroom", "muc#roomconfig_membersonly",
            "muc#roomconfig_moderatedroom", "muc#roomconfig_passwordprotectedroom", "muc#roomconfig_whois", "muc#roomconfig_maxusers",
            "muc#roomconfig_allowinvites", "muc#roomconfig_changesubject", "muc#roomconfig_historylength", "muc#roomconfig_enablearchiving"]
        {
            #expect(fields.contains(field), "form lacks \(field)")
        }
        #expect(
            try await Self.configure(
                alice, "board",
                ["muc#roomconfig_roomname": "The Board", "muc#roomconfig_roomdesc": "Decisions", "muc#roomconfig_persistentroom": "1",
                 "muc#roomconfig_whois": "moderators", "muc#roomconfig_changesubject": "0"]
            ).stanzaType == "result")

        // Room disco#info reflects the configuration.
        let info = try await Self.iq(bob, "<iq type='get' id='d1' to='\(room)'><query xmlns='\(NS.discoInfo)'/></iq>", id: "d1")
        let features = Set(info.child("query")?.elements.compactMap { $0[attribute: "var"] } ?? [])
        #expect(features.isSuperset(of: ["http://jabber.org/protocol/muc", "muc_persistent", "muc_open", "muc_unmoderated", "muc_semianonymous",
            "muc_unsecured", "urn:xmpp:mam:2", "urn:xmpp:sid:0", "urn:xmpp:message-moderate:1"]))
        #expect(info.child("query")?.child("identity")?[attribute: "name"] == "The Board")
        // Server disco#items lists the service; the service lists the public room.
        let serverItems = try await Self.iq(bob, "<iq type='get' id='d2' to='example.test'><query xmlns='\(NS.discoItems)'/></iq>", id: "d2")
        #expect(serverItems.child("query")?.elements.contains { $0[attribute: "jid"] == Self.service } == true)
        let serviceInfo = try await Self.iq(bob, "<iq type='get' id='d3' to='\(Self.service)'><query xmlns='\(NS.discoInfo)'/></iq>", id: "d3")
        #expect(serviceInfo.child("query")?.child("identity")?[attribute: "category"] == "conference")
        let rooms = try await Self.iq(bob, "<iq type='get' id='d4' to='\(Self.service)'><query xmlns='\(NS.discoItems)'/></iq>", id: "d4")
        #expect(rooms.child("query")?.elements.map { $0[attribute: "jid"] ?? "" } == [room])

        // Semi-anonymous: bob does not see alice's real JID; alice (moderator) sees bob's.
        try await bob.send("<presence to='\(room)/Bob'>\(Self.mucNS)</presence>")
        let aliceToBob = try await bob.next { $0.name == "presence" && $0[attribute: "from"] == "\(room)/Alice" }
        #expect(Self.item(aliceToBob)?[attribute: "jid"] == nil)
        let bobSelf = try await bob.next { $0.name == "presence" && Self.codes($0).contains("110") }
        #expect(!Self.codes(bobSelf).contains("100"))
        _ = try await Self.history(bob)
        let bobToAlice = try await alice.next { $0.name == "presence" && $0[attribute: "from"] == "\(room)/Bob" }
        #expect(Self.item(bobToAlice)?[attribute: "jid"] == "bob@example.test/pc")
        // Participants may not change the subject here.
        try await bob.send("<message to='\(room)' type='groupchat' id='s1'><subject>mine</subject></message>")
        #expect(Self.errorCondition(try await bob.next { $0.name == "message" && $0.id == "s1" }) == "forbidden")

        // A persistent room outlives its occupants; destruction tells them and removes it.
        #expect(Self.errorCondition(
            try await Self.iq(bob, "<iq type='set' id='x0' to='\(room)'><query xmlns='http://jabber.org/protocol/muc#owner'><destroy/></query></iq>", id: "x0")) == "forbidden")
        let destroyed = try await Self.iq(
            alice,
            "<iq type='set' id='x1' to='\(room)'><query xmlns='http://jabber.org/protocol/muc#owner'><destroy jid='other@\(Self.service)'><reason>moved</reason></destroy></query></iq>",
            id: "x1")
        #expect(destroyed.stanzaType == "result")
        let gone = try await bob.next { $0.name == "presence" && $0.stanzaType == "unavailable" }
        let destroy = gone.child("x", namespace: Self.userNS)?.child("destroy")
        #expect(destroy?[attribute: "jid"] == "other@\(Self.service)" && destroy?.child("reason")?.text == "moved")
        let after = try await Self.iq(bob, "<iq type='get' id='d5' to='\(room)'><query xmlns='\(NS.discoInfo)'/></iq>", id: "d5")
        #expect(Self.errorCondition(after) == "item-not-found")
        #expect(try await server.stores.rooms().isEmpty)

        // A temporary room disappears when its last occupant leaves.
        try await Self.createInstantRoom(alice, "temp", nick: "Alice")
        try await alice.send("<presence to='temp@\(Self.service)/Alice' type='unavailable'/>")
        _ = try await alice.next { $0.name == "presence" && $0.stanzaType == "unavailable" }
        let tempInfo = try await Self.iq(alice, "<iq type='get' id='d6' to='temp@\(Self.service)'><query xmlns='\(NS.discoInfo)'/></iq>", id: "d6")
        #expect(Self.errorCondition(tempInfo) == "item-not-found")
        await alice.close()
        await bob.close()
        await server.stop()
    }

    // MARK: - Self-ping, invitations, logout

    @Test func selfPingInvitationsAndLogoutLeaves() async throws {
        let (server, clients) = try await Self.start(["alice", "bob", "carol"])
        let (alice, bob, carol) = (clients[0], clients[1], clients[2])
        let room = "ping@\(Self.service)"
        try await Self.createInstantRoom(alice, "ping", nick: "Alice")
        let joined = try await Self.iq(alice, "<iq type='get' id='p1' to='\(room)/Alice'><ping xmlns='urn:xmpp:ping'/></iq>", id: "p1")
        #expect(joined.stanzaType == "result" && joined[attribute: "from"] == "\(room)/Alice")
        let notJoined = try await Self.iq(bob, "<iq type='get' id='p2' to='\(room)/Alice'><ping xmlns='urn:xmpp:ping'/></iq>", id: "p2")
        #expect(Self.errorCondition(notJoined) == "not-acceptable")
        let noRoom = try await Self.iq(bob, "<iq type='get' id='p3' to='nothere@\(Self.service)/X'><ping xmlns='urn:xmpp:ping'/></iq>", id: "p3")
        #expect(Self.errorCondition(noRoom) == "not-acceptable")

        // IQs to an occupant are relayed (vCard avatars): bob answers alice's request through the room.
        try await Self.join(carol, "\(room)/Carol")
        _ = try await Self.history(carol)
        try await alice.send("<iq type='get' id='vc1' to='\(room)/Carol'><vCard xmlns='vcard-temp'/></iq>")
        let relayed = try await carol.next { $0.name == "iq" && $0.stanzaType == "get" }
        #expect(relayed[attribute: "from"] == "\(room)/Alice" && relayed.child("vCard", namespace: "vcard-temp") != nil)
        let relayID = try #require(relayed.id)
        #expect(relayID != "vc1")
        // Only the addressed occupant may answer.
        try await bob.send("<iq type='result' id='\(relayID)' to='\(room)/Alice'/>")
        try await carol.send("<iq type='result' id='\(relayID)' to='\(room)/Alice'><vCard xmlns='vcard-temp'><FN>Carol</FN></vCard></iq>")
        let answer = try await alice.next { $0.name == "iq" && $0.id == "vc1" }
        #expect(answer.stanzaType == "result" && answer[attribute: "from"] == "\(room)/Carol")
        #expect(answer.child("vCard", namespace: "vcard-temp")?.child("FN")?.text == "Carol")
        let unknownOccupant = try await Self.iq(alice, "<iq type='get' id='vc2' to='\(room)/Nobody'><vCard xmlns='vcard-temp'/></iq>", id: "vc2")
        #expect(Self.errorCondition(unknownOccupant) == "item-not-found")
        try await carol.send("<presence to='\(room)/Carol' type='unavailable'/>")
        _ = try await carol.next { $0.name == "presence" && $0.stanzaType == "unavailable" }

        // Mediated invitation: bob receives it from the room, with alice's real JID and the reason.
        try await alice.send(
            "<message to='\(room)' id='inv1'><x xmlns='\(Self.userNS)'><invite to='bob@example.test'><reason>join us</reason></invite></x></message>")
        let invitation = try await bob.next { $0.name == "message" }
        let invite = invitation.child("x", namespace: Self.userNS)?.child("invite")
        #expect(invitation[attribute: "from"] == room && invite?[attribute: "from"] == "alice@example.test" && invite?.child("reason")?.text == "join us")
        // Bob declines: alice hears it from the room.
        try await bob.send("<message to='\(room)'><x xmlns='\(Self.userNS)'><decline to='alice@example.test'><reason>busy</reason></decline></x></message>")
        let declined = try await alice.next { $0.name == "message" && $0.child("x", namespace: Self.userNS)?.child("decline") != nil }
        #expect(declined.child("x", namespace: Self.userNS)?.child("decline")?[attribute: "from"] == "bob@example.test")
        // Non-occupants cannot invite; a malformed invitee is refused.
        try await carol.send("<message to='\(room)' id='inv2'><x xmlns='\(Self.userNS)'><invite to='bob@example.test'/></x></message>")
        #expect(Self.errorCondition(try await carol.next { $0.name == "message" && $0.id == "inv2" }) == "not-acceptable")
        try await alice.send("<message to='\(room)' id='inv3'><x xmlns='\(Self.userNS)'><invite to='a@b@c'/></x></message>")
        #expect(Self.errorCondition(try await alice.next { $0.name == "message" && $0.id == "inv3" }) == "jid-malformed")
        // XEP-0249 direct invitations are ordinary messages and pass through.
        try await alice.send("<message to='carol@example.test' id='dinv'><x xmlns='jabber:x:conference' jid='\(room)' reason='hi'/></message>")
        let direct = try await carol.next { $0.name == "message" }
        #expect(direct.child("x", namespace: "jabber:x:conference")?[attribute: "jid"] == room)

        // Logging out leaves the room: others see unavailable.
        try await Self.join(bob, "\(room)/Bob")
        _ = try await Self.history(bob)
        _ = try await alice.next { $0.name == "presence" && $0[attribute: "from"] == "\(room)/Bob" }
        await bob.close()
        let left = try await alice.next { $0.name == "presence" && $0[attribute: "from"] == "\(room)/Bob" }
        #expect(left.stanzaType == "unavailable")
        // A broadcast unavailable (going offline while connected) leaves too.
        try await Self.join(carol, "\(room)/Carol")
        _ = try await Self.history(carol)
        _ = try await alice.next { $0.name == "presence" && $0[attribute: "from"] == "\(room)/Carol" }
        try await carol.send("<presence type='unavailable'/>")
        #expect(try await alice.next { $0.name == "presence" && $0[attribute: "from"] == "\(room)/Carol" }.stanzaType == "unavailable")
        await alice.close()
        await carol.close()
        await server.stop()
    }

    // MARK: - Concurrency

    /// Occupants on different connections (event loops) send at once: everybody gets every
    /// message, and all see the same order.
    @Test func concurrentSendersOneOrder() async throws {
        let names = (1...10).map { "user\($0)" }
        let (server, clients) = try await Self.start(names)
        let room = "busy@\(Self.service)"
        try await Self.createInstantRoom(clients[0], "busy", nick: names[0])
        for (index, client) in clients.enumerated().dropFirst() {
            try await Self.join(client, "\(room)/\(names[index])")
            _ = try await Self.history(client)
        }
        let perSender = 10
        try await withThrowingTaskGroup(of: Void.self) { group in
            for (index, client) in clients.enumerated() {
                group.addTask {
                    var burst = ""
                    for n in 1...perSender { burst += "<message to='\(room)' type='groupchat' id='\(index)-\(n)'><body>\(n)</body></message>" }
                    try await client.send(burst)
                }
            }
            try await group.waitForAll()
        }
        var orders: [[String]] = []
        for client in clients {
            var ids: [String] = []
            while ids.count < clients.count * perSender {
                let message = try await client.next { $0.name == "message" && $0.child("body") != nil }
                ids.append(message.id ?? "")
            }
            orders.append(ids)
        }
        #expect(Set(orders[0]).count == clients.count * perSender)
        #expect(orders.allSatisfy { $0 == orders[0] }, "occupants saw different orders")
        // Each sender's own messages stay in its order.
        for index in clients.indices {
            #expect(orders[0].filter { $0.hasPrefix("\(index)-") } == (1...perSender).map { "\(index)-\($0)" })
        }
        for client in clients { await client.close() }
        await server.stop()
    }

    // MARK: - The normal delivery path: CSI, stream management

    @Test func roomTrafficTakesTheNormalDeliveryPath() async throws {
        let (server, clients) = try await Self.start(["alice", "bob", "carol"])
        let (alice, bob, carol) = (clients[0], clients[1], clients[2])
        let room = "path@\(Self.service)"
        try await Self.createInstantRoom(alice, "path", nick: "Alice")
        try await Self.join(bob, "\(room)/Bob")
        _ = try await Self.history(bob)

        // CSI: an inactive occupant gets room presence held, flushed before the next message.
        try await bob.send("<inactive xmlns='urn:xmpp:csi:0'/>")
        try await bob.send("<iq type='get' id='sync'><ping xmlns='urn:xmpp:ping'/></iq>")
        _ = try await bob.next { $0.id == "sync" }
        try await Self.join(carol, "\(room)/Carol")
        _ = try await Self.history(carol)
        try await alice.send("<message to='\(room)' type='groupchat' id='wake'><body>news</body></message>")
        let first = try await bob.next()
        #expect(first.name == "presence" && first[attribute: "from"] == "\(room)/Carol", "\(XMLSerializer.string(first))")
        #expect(try await bob.next().id == "wake")
        try await bob.send("<active xmlns='urn:xmpp:csi:0'/>")

        // Stream management: room messages are counted and re-sent on resumption, including
        // those that arrived while the connection was gone.
        var phone = try await server.online("alice", "phone")
        try await phone.send("<enable xmlns='urn:xmpp:sm:3' resume='true'/>")
        let token = try #require(try await phone.next { $0.name == "enabled" }[attribute: "id"])
        try await Self.join(phone, "\(room)/AlicePhone")
        let joinStanzas = try await Self.history(phone).count
        #expect(joinStanzas == 1, "history: the 'news' message")
        try await bob.send("<message to='\(room)' type='groupchat' id='g1'><body>one</body></message>")
        _ = try await phone.next { $0.id == "g1" }
        await phone.disconnect()
        try await Task.sleep(for: .milliseconds(200))
        try await bob.send("<message to='\(room)' type='groupchat' id='g2'><body>two</body></message>")
        _ = try await bob.next { $0.id == "g2" }
        phone = try await server.connect()
        try await phone.authenticate("alice", password: "pw")
        // Acknowledge everything up to and including g1: occupants' presence (3), own presence,
        // history (1), subject, g1.
        try await phone.send("<resume xmlns='urn:xmpp:sm:3' previd='\(token)' h='7'/>")
        #expect(try await phone.next().name == "resumed")
        let resent = try await phone.next { $0.name == "message" }
        #expect(resent.id == "g2" && resent[attribute: "from"] == "\(room)/Bob")
        // Still an occupant after resumption.
        let ping = try await Self.iq(phone, "<iq type='get' id='sp' to='\(room)/AlicePhone'><ping xmlns='urn:xmpp:ping'/></iq>", id: "sp")
        #expect(ping.stanzaType == "result")
        for client in [alice, bob, carol, phone] { await client.close() }
        await server.stop()
    }

    // MARK: - Archive, retraction, moderation

    static func roomArchive(_ client: TestClient, _ room: String, id: String, _ inner: String = "") async throws -> (messages: [XMLElement], fin: XMLElement) {
        try await client.send("<iq type='set' id='\(id)' to='\(room)'><query xmlns='urn:xmpp:mam:2' queryid='\(id)'>\(inner)</query></iq>")
        var messages: [XMLElement] = []
        while true {
            let element = try await client.next()
            if element.name == "iq", element.id == id {
                return (messages, element.child("fin", namespace: "urn:xmpp:mam:2") ?? element)
            }
            if let result = element.child("result", namespace: "urn:xmpp:mam:2"), result[attribute: "queryid"] == id {
                #expect(element[attribute: "from"] == room)
                if let message = result.child("forwarded")?.child("message") { messages.append(message) }
            }
        }
    }

    @Test func roomArchiveRetractionAndModeration() async throws {
        let (server, clients) = try await Self.start(["alice", "bob"])
        let (alice, bob) = (clients[0], clients[1])
        let room = "arch@\(Self.service)"
        try await Self.createInstantRoom(alice, "arch", nick: "Alice")
        try await Self.join(bob, "\(room)/Bob")
        _ = try await Self.history(bob)
        var ids: [String] = []
        for index in 1...4 {
            try await bob.send("<message to='\(room)' type='groupchat' id='a\(index)'><body>note \(index)</body></message>")
            let echo = try await bob.next { $0.name == "message" && $0.id == "a\(index)" }
            ids.append(echo.child("stanza-id", namespace: "urn:xmpp:sid:0")?[attribute: "id"] ?? "")
            _ = try await alice.next { $0.name == "message" && $0.id == "a\(index)" }
        }
        // MAM on the room, paged like 1:1 MAM; result ids are the room's stanza-ids.
        let page = try await Self.roomArchive(alice, room, id: "q1", "<set xmlns='http://jabber.org/protocol/rsm'><max>3</max></set>")
        #expect(page.messages.map { $0.child("body")?.text ?? "" } == ["note 1", "note 2", "note 3"])
        #expect(page.fin[attribute: "complete"] == nil)
        let last = try #require(page.fin.child("set")?.child("last")?.text)
        #expect(last == ids[2])
        let rest = try await Self.roomArchive(alice, room, id: "q2", "<set xmlns='http://jabber.org/protocol/rsm'><after>\(last)</after></set>")
        #expect(rest.messages.map { $0.child("body")?.text ?? "" } == ["note 4"] && rest.fin[attribute: "complete"] == "true")
        // Each copy shares its audit record's stored text (the room serialises a message once).
        let shared = try await server.stores.archiveDatabase.run { db in
            try db.query("SELECT count(*) FROM archive WHERE owner = (SELECT id FROM jid_keys WHERE jid = ?) AND content IS NOT NULL", [.text(room)]) { $0.int(0) }.first
        }
        #expect(shared == 4)
        #expect(try await unlistedSharingCopies(in: server.stores).isEmpty)

        // XEP-0424: bob retracts his own note 1; alice cannot retract bob's message.
        try await alice.send("<message to='\(room)' type='groupchat' id='r0'><retract xmlns='urn:xmpp:message-retract:1' id='\(ids[1])'/></message>")
        #expect(Self.errorCondition(try await alice.next { $0.name == "message" && $0.id == "r0" }) == "forbidden")
        try await bob.send("<message to='\(room)' type='groupchat' id='r1'><retract xmlns='urn:xmpp:message-retract:1' id='\(ids[0])'/><body>retracted</body></message>")
        let retraction = try await alice.next { $0.name == "message" && $0.id == "r1" }
        #expect(retraction.child("retract", namespace: "urn:xmpp:message-retract:1")?[attribute: "id"] == ids[0])

        // XEP-0425: bob (participant) may not moderate; alice (moderator) may.
        let moderate = "<moderate xmlns='urn:xmpp:message-moderate:1' id='\(ids[1])'><retract xmlns='urn:xmpp:message-retract:1'/><reason>off topic</reason></moderate>"
        #expect(Self.errorCondition(try await Self.iq(bob, "<iq type='set' id='mod0' to='\(room)'>\(moderate)</iq>", id: "mod0")) == "forbidden")
        try await alice.send("<iq type='set' id='mod1' to='\(room)'>\(moderate)</iq>")
        let announced = try await bob.next { $0.name == "message" && $0.child("retract", namespace: "urn:xmpp:message-retract:1") != nil }
        let retract = announced.child("retract", namespace: "urn:xmpp:message-retract:1")
        #expect(announced[attribute: "from"] == room && retract?[attribute: "id"] == ids[1])
        #expect(retract?.child("moderated", namespace: "urn:xmpp:message-moderate:1")?[attribute: "by"] == "\(room)/Alice")
        #expect(try await alice.next { $0.name == "iq" && $0.id == "mod1" }.stanzaType == "result")
        let unknown = "<moderate xmlns='urn:xmpp:message-moderate:1' id='nope'><retract xmlns='urn:xmpp:message-retract:1'/></moderate>"
        #expect(Self.errorCondition(try await Self.iq(alice, "<iq type='set' id='mod2' to='\(room)'>\(unknown)</iq>", id: "mod2")) == "item-not-found")

        // The archive keeps tombstones in place of both retracted messages.
        let after = try await Self.roomArchive(alice, room, id: "q3")
        let bodies = after.messages.map { $0.child("body")?.text }
        #expect(bodies.prefix(4) == [nil, nil, "note 3", "note 4"])
        #expect(after.messages[0].child("retracted", namespace: "urn:xmpp:message-retract:1") != nil)
        #expect(after.messages[1].child("retracted", namespace: "urn:xmpp:message-retract:1")?.child("moderated")?[attribute: "by"] == "\(room)/Alice")
        // History on join no longer carries them.
        let carolHistory: [String?]
        do {
            try await bob.send("<presence to='\(room)/Bob' type='unavailable'/>")
            _ = try await bob.next { $0.name == "presence" && $0.stanzaType == "unavailable" }
            try await Self.join(bob, "\(room)/Bob")
            carolHistory = try await Self.history(bob).map { $0.child("body")?.text }
        }
        #expect(!carolHistory.contains("note 1") && !carolHistory.contains("note 2") && carolHistory.contains("note 3"))
        // The room's stanza-ids were made from its copies' positions: stored with no text id.
        await server.applied()
        let textIDs = try await server.stores.archiveDatabase.run { db in
            try db.query("SELECT count(uid), count(uid_random) FROM archive WHERE owner = (SELECT id FROM jid_keys WHERE jid = ?)", [.text(room)]) { [$0.int(0), $0.int(1)] }.first
        }
        #expect(textIDs?.first == 0 && (textIDs?.last ?? 0) >= 5)
        await alice.close()
        await bob.close()
        await server.stop()
    }

    // MARK: - Persistence and the directory API

    @Test func roomsSurviveARestart() async throws {
        let server = try await TestServer.start { $0.c2s.requireTLS = false }
        let directory = server.dataDirectory
        try await server.addUser("alice", password: "pw")
        try await server.addUser("bob", password: "pw")
        let alice = try await server.online("alice", "pc")
        try await Self.createInstantRoom(alice, "keep", nick: "Alice")
        let room = "keep@\(Self.service)"
        #expect(
            try await Self.configure(
                alice, "keep", ["muc#roomconfig_persistentroom": "1", "muc#roomconfig_roomname": "Kept", "muc#roomconfig_membersonly": "1"]
            ).stanzaType == "result")
        #expect(try await Self.admin(alice, room, "<item jid='bob@example.test' affiliation='member'/>", id: "m1").stanzaType == "result")
        try await alice.send("<message to='\(room)' type='groupchat'><subject>Still here</subject></message>")
        _ = try await alice.next { $0.name == "message" && $0.child("subject") != nil }
        try await alice.send("<message to='\(room)' type='groupchat' id='k1'><body>before restart</body></message>")
        _ = try await alice.next { $0.name == "message" && $0.id == "k1" }
        await alice.close()
        await server.stop(keepData: true)

        let restarted = try await TestServer.start(dataDirectory: directory) { $0.c2s.requireTLS = false }
        let bob = try await restarted.online("bob", "pc")
        let joined = try await Self.join(bob, "\(room)/Bob")
        #expect(Self.item(joined)?[attribute: "affiliation"] == "member")
        var history: [XMLElement] = []
        var subject = ""
        while true {
            let message = try await bob.next { $0.name == "message" }
            if let element = message.child("subject") {
                subject = element.text
                break
            }
            history.append(message)
        }
        #expect(subject == "Still here")
        #expect(history.map { $0.child("body")?.text } == ["before restart"])
        let info = try await Self.iq(bob, "<iq type='get' id='d1' to='\(room)'><query xmlns='\(NS.discoInfo)'/></iq>", id: "d1")
        #expect(info.child("query")?.child("identity")?[attribute: "name"] == "Kept")
        let features = Set(info.child("query")?.elements.compactMap { $0[attribute: "var"] } ?? [])
        #expect(features.contains("muc_membersonly") && features.contains("muc_persistent"))
        // Occupant ids (XEP-0421) are stable across the restart: alice's in the history equals her new one.
        let before = history.first?.child("occupant-id", namespace: "urn:xmpp:occupant-id:0")?[attribute: "id"]
        let aliceAgain = try await restarted.online("alice", "pc")
        try await Self.join(aliceAgain, "\(room)/Alice")
        let aliceSeen = try await bob.next { $0.name == "presence" && $0[attribute: "from"] == "\(room)/Alice" }
        #expect(before != nil && aliceSeen.child("occupant-id", namespace: "urn:xmpp:occupant-id:0")?[attribute: "id"] == before)
        await aliceAgain.close()
        await bob.close()
        await restarted.stop()
    }

    @Test func departmentRoomsFollowTheDirectory() async throws {
        let (server, clients) = try await Self.start(["alice", "bob", "carol"])
        let (alice, bob, carol) = (clients[0], clients[1], clients[2])
        let muc = try #require(server.server.context.modules.service(MUCModule.self))
        // An existing open room with a non-member in it becomes the department room: he leaves (322).
        try await Self.createInstantRoom(alice, "sales", nick: "Alice")
        try await Self.join(carol, "sales@\(Self.service)/Carol")
        _ = try await Self.history(carol)
        let members: Set<JID> = [try JID("alice@example.test"), try JID("bob@example.test/ignored-resource")]
        try await muc.ensureDepartmentRoom(localpart: "sales", name: "Sales", members: members)
        let carolOut = try await carol.next { $0.name == "presence" && $0.stanzaType == "unavailable" && Self.codes($0).contains("110") }
        #expect(Self.codes(carolOut) == ["110", "322"])
        // Alice stays owner (owners and admins are left as they are); bob becomes member.
        #expect(muc.members(ofRoom: "sales") == ["bob@example.test"])
        let room = "sales@\(Self.service)"
        #expect(Self.item(try await Self.join(bob, "\(room)/Bob"))?[attribute: "affiliation"] == "member")
        _ = try await Self.history(bob)
        #expect(Self.errorCondition(try await Self.join(carol, "\(room)/Carol")) == "registration-required")
        // Bob leaves the department: he loses membership and is removed with 321; carol joins it.
        try await muc.ensureDepartmentRoom(localpart: "sales", name: "Sales & Marketing", members: [try JID("alice@example.test"), try JID("carol@example.test")])
        let removed = try await bob.next { $0.name == "presence" && $0.stanzaType == "unavailable" }
        #expect(Self.codes(removed) == ["110", "321"])
        #expect(muc.members(ofRoom: "sales") == ["carol@example.test"])
        #expect(Self.codes(try await Self.join(carol, "\(room)/Carol")).contains("110"))
        let stored = try await server.stores.rooms()
        // Alice created the room: she stays owner; the members are exactly the department.
        #expect(stored.count == 1 && stored.first?.affiliations == ["alice@example.test": "owner", "carol@example.test": "member"])
        #expect(stored.first?.config.contains("Sales & Marketing") == true)
        await #expect(throws: MUCError.self) { try await muc.ensureDepartmentRoom(localpart: "bad@name", name: "x", members: []) }
        try await muc.removeDepartmentRoom(localpart: "sales", reason: "reorganised")
        #expect(try await carol.next { $0.name == "presence" && $0.stanzaType == "unavailable" }.child("x", namespace: Self.userNS)?.child("destroy") != nil)
        #expect(try await server.stores.rooms().isEmpty)
        for client in [alice, bob, carol] { await client.close() }
        await server.stop()
    }

    // MARK: - Bad input and limits

    @Test func badInputGetsStanzaErrors() async throws {
        let (server, clients) = try await Self.start(["alice", "bob"]) { $0.muc.maxRoomsPerUser = 2 }
        let (alice, bob) = (clients[0], clients[1])
        try await alice.send("<message to='nothere@\(Self.service)' type='groupchat' id='e1'><body>x</body></message>")
        #expect(Self.errorCondition(try await alice.next { $0.name == "message" && $0.id == "e1" }) == "item-not-found")
        try await alice.send("<message to='\(Self.service)' id='e2'><body>x</body></message>")
        #expect(Self.errorCondition(try await alice.next { $0.name == "message" && $0.id == "e2" }) == "service-unavailable")
        let unknownIQ = try await Self.iq(alice, "<iq type='get' id='e3' to='\(Self.service)'><query xmlns='urn:example:nothing'/></iq>", id: "e3")
        #expect(Self.errorCondition(unknownIQ) == "service-unavailable")
        // An over-long nickname.
        let long = String(repeating: "n", count: 65)
        #expect(Self.errorCondition(try await Self.join(alice, "r1@\(Self.service)/\(long)")) == "jid-malformed")
        // At most max_rooms_per_user rooms per owner.
        try await Self.createInstantRoom(alice, "r1", nick: "A")
        try await Self.createInstantRoom(alice, "r2", nick: "A")
        #expect(Self.errorCondition(try await Self.join(alice, "r3@\(Self.service)/A")) == "not-allowed")
        // Over-long subject; a normal (non-groupchat) message to the room.
        try await alice.send("<message to='r1@\(Self.service)' type='groupchat' id='e4'><subject>\(String(repeating: "s", count: 1025))</subject></message>")
        #expect(Self.errorCondition(try await alice.next { $0.name == "message" && $0.id == "e4" }) == "not-acceptable")
        try await alice.send("<message to='r1@\(Self.service)' type='chat' id='e5'><body>x</body></message>")
        #expect(Self.errorCondition(try await alice.next { $0.name == "message" && $0.id == "e5" }) == "bad-request")
        // Owner IQs from a non-owner; admin IQ with nothing in it.
        let notOwner = try await Self.iq(bob, "<iq type='get' id='e6' to='r1@\(Self.service)'><query xmlns='http://jabber.org/protocol/muc#owner'/></iq>", id: "e6")
        #expect(Self.errorCondition(notOwner) == "forbidden")
        #expect(Self.errorCondition(try await Self.admin(alice, "r1@\(Self.service)", "", id: "e7")) == "bad-request")
        // Room creation restricted to listed creators.
        await alice.close()
        await bob.close()
        await server.stop()

        let (restricted, others) = try await Self.start(["alice", "bob"]) { $0.muc.roomCreators = ["alice@example.test"] }
        #expect(Self.errorCondition(try await Self.join(others[1], "bobs@\(Self.service)/B")) == "not-allowed")
        #expect(Self.codes(try await Self.join(others[0], "alices@\(Self.service)/A")).contains("201"))
        for client in others { await client.close() }
        await restricted.stop()
    }

    // MARK: - The state machine alone

    @Test func stateMachineHistoryAndNicks() throws {
        #expect(MUCRoom.prepareNick("  Ann   Lee ") == "Ann Lee")
        #expect(MUCRoom.prepareNick("   ") == nil)
        #expect(MUCRoom.prepareNick("a\u{7}b") == nil)
        var room = MUCRoom(
            jid: try JID("r@conference.example.test"), configuration: MUCRoomConfiguration(maxUsers: 10, historyLength: 3),
            limits: MUCLimits(maxHistory: 3, maxOccupants: 10), createdAt: 0)
        let alice = try JID("alice@example.test/pc")
        _ = try room.enter(
            session: alice, requestedNick: "A", nick: "A", presence: XMLElement("presence", xmlns: NS.client), password: nil, history: nil,
            now: 0)
        for index in 1...100 {
            var message = XMLElement("message", xmlns: NS.client, ["type": "groupchat"])
            message.append(XMLElement("body", xmlns: NS.client).withText("m\(index)"))
            let effects = try room.groupchat(message, from: alice, stanzaID: "id\(index)", now: Double(index))
            #expect(effects.archive?.stanzaID == "id\(index)")
        }
        // Bounded: the room keeps at most its history length (plus a small trimming slack).
        #expect(room.history.count <= 3 + 32)
        #expect(room.historyFor(nil, now: 100).map(\.stanzaID) == ["id98", "id99", "id100"])
        #expect(room.historyFor(XMLElement("history", xmlns: "", ["seconds": "1.5"]), now: 100).map(\.stanzaID) == ["id99", "id100"])
        let bob = try JID("bob@example.test/pc")
        #expect(throws: StanzaError(.conflict, text: "that nickname is in use")) {
            try room.enter(session: bob, requestedNick: "A", nick: "A", presence: XMLElement("presence", xmlns: NS.client), password: nil, history: nil, now: 0)
        }
        // The last occupant of a temporary room leaving ends it.
        let effects = room.leave(session: alice)
        #expect(effects.destroyed && room.gone)
    }

    /// Newcomers get each occupant's presence from a serialised cache: it must follow role changes.
    @Test func newcomersSeeCurrentRoles() throws {
        var room = MUCRoom(
            jid: try JID("r@conference.example.test"), configuration: MUCRoomConfiguration(maxUsers: 10, historyLength: 3),
            limits: MUCLimits(), createdAt: 0)
        room.affiliations["alice@example.test"] = .owner
        let presence = XMLElement("presence", xmlns: NS.client)
        func enter(_ jid: String, _ nick: String) throws -> MUCEffects {
            try room.enter(session: try JID(jid), requestedNick: nick, nick: nick, presence: presence, password: nil, history: nil, now: 0)
        }
        func roleOf(_ nick: String, in effects: MUCEffects) -> String? {
            for case .shared(let stanza, _) in effects.deliveries where stanza.element[attribute: "from"] == "r@conference.example.test/\(nick)" {
                return stanza.element.child("x", namespace: Self.userNS)?.child("item")?[attribute: "role"]
            }
            return nil
        }
        _ = try enter("alice@example.test/pc", "A")
        _ = try enter("bob@example.test/pc", "B")
        #expect(roleOf("B", in: try enter("carol@example.test/pc", "C")) == "participant")
        var query = XMLElement("query", xmlns: "http://jabber.org/protocol/muc#admin")
        query.append(XMLElement("item", xmlns: "http://jabber.org/protocol/muc#admin", ["nick": "B", "role": "visitor"]))
        _ = try room.adminSet(query, from: try JID("alice@example.test/pc"))
        #expect(roleOf("B", in: try enter("dave@example.test/pc", "D")) == "visitor")
        #expect(roleOf("A", in: try enter("erin@example.test/pc", "E")) == "moderator")
    }
}
