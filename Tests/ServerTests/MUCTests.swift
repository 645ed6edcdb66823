import Foundation
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
        }

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
}
