import Directory
import Foundation
import Modules
import SQLiteStorage
import Storage
import SwitchboardTestSupport
import Testing
import XMLStream
import XMPPCore

@Suite struct DirectoryRulesTests {
    private func withService(_ body: (DirectoryService, SQLiteStores) async throws -> Void) async throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("sb-dir-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        let stores = try SQLiteStores(directory: path)
        try await body(DirectoryService(store: stores, accounts: stores), stores)
    }

    @Test func pinyinKeys() {
        #expect(Pinyin.keys("张伟").contains("zhangwei"))
        #expect(Pinyin.keys("张伟").contains("zw"))
        #expect(Pinyin.keys("欧阳娜娜").contains("ouyangnana"))
        #expect(Pinyin.keys("曾小贤").contains("zengxiaoxian"))
        #expect(Pinyin.keys("Alice").isEmpty)
    }

    @Test func treeRules() async throws {
        try await withService { service, stores in
            let rd = try await service.createUnit(name: "研发中心", id: "rd")
            let platform = try await service.createUnit(name: "平台部", parent: "rd")
            _ = try await service.createUnit(name: "存储组", parent: "研发中心/平台部")
            _ = try await service.createUnit(name: "前端组", parent: "研发中心/平台部", position: 0)
            var snapshot = try await service.currentSnapshot()
            #expect(snapshot.children[platform.id]?.compactMap { snapshot.units[$0]?.name } == ["前端组", "存储组"])
            #expect(snapshot.unit("研发中心/平台部/存储组") != nil)
            #expect(snapshot.paths[snapshot.unit("研发中心/平台部/存储组")?.id ?? ""] == "研发中心/平台部/存储组")

            // Duplicate sibling names, cycles, bad names are refused.
            await #expect(throws: DirectoryError.self) { try await service.createUnit(name: "平台部", parent: "rd") }
            await #expect(throws: DirectoryError.self) { try await service.moveUnit("rd", to: "研发中心/平台部/存储组") }
            await #expect(throws: DirectoryError.self) { try await service.createUnit(name: "a/b") }
            await #expect(throws: DirectoryError.self) { try await service.createUnit(name: "  ") }

            try await service.createUser(DirectoryUser(username: "zhangwei", displayName: "张伟"), unit: "研发中心/平台部/存储组")
            try await service.addMembership("zhangwei", unit: "rd", title: "顾问")
            // A unit with members cannot be deleted; the message names them.
            do {
                try await service.deleteUnit("研发中心/平台部/存储组")
                Issue.record("deleting a unit with members succeeded")
            } catch let error as DirectoryError {
                #expect(error.kind == .conflict)
                #expect(error.description.contains("zhangwei"))
            }
            // A unit with child units cannot be deleted either.
            await #expect(throws: DirectoryError.self) { try await service.deleteUnit("研发中心/平台部") }

            snapshot = try await service.currentSnapshot()
            #expect(snapshot.primaryUnit(of: "zhangwei") == snapshot.unit("研发中心/平台部/存储组")?.id)
            // Removing the primary membership promotes the other one.
            try await service.removeMembership("zhangwei", unit: "研发中心/平台部/存储组")
            snapshot = try await service.currentSnapshot()
            #expect(snapshot.primaryUnit(of: "zhangwei") == rd.id)
            try await service.deleteUnit("研发中心/平台部/存储组")

            // Move, rename, reorder keep ids.
            try await service.moveUnit("研发中心/平台部", to: nil, position: 0)
            try await service.renameUnit(platform.id, to: "基础平台部")
            snapshot = try await service.currentSnapshot()
            #expect(snapshot.children[""] == [platform.id, rd.id])
            #expect(snapshot.paths[platform.id] == "基础平台部")

            // The account exists, without local credentials; disabling mirrors onto it.
            #expect(try await stores.account("zhangwei")?.credentials == nil)
            try await service.setStatus("zhangwei", .disabled)
            #expect(try await stores.account("zhangwei")?.disabled == true)
            // Deleting the account removes the directory entry.
            #expect(try await stores.deleteAccount("zhangwei"))
            #expect(try await service.currentSnapshot().users["zhangwei"] == nil)
        }
    }

    @Test func rosterContactsAndViewers() async throws {
        try await withService { service, _ in
            _ = try await service.createUnit(name: "研发", id: "rd")
            _ = try await service.createUnit(name: "销售", id: "sales")
            _ = try await service.createUnit(name: "总裁办", id: "ceo", alwaysVisible: true)
            for (user, unit) in [("a", "rd"), ("b", "rd"), ("c", "sales"), ("boss", "ceo")] {
                try await service.createUser(DirectoryUser(username: user, displayName: user.uppercased()), unit: unit)
            }
            try await service.addMembership("c", unit: "rd")
            var snapshot = try await service.currentSnapshot()
            #expect(snapshot.contacts(of: "a") == ["b": ["研发"], "c": ["研发"], "boss": ["总裁办"]])
            #expect(snapshot.contacts(of: "c")["a"] == ["研发"])
            #expect(snapshot.contacts(of: "boss").keys.sorted() == [])
            if case .users(let viewers) = snapshot.viewers(of: "a") {
                #expect(viewers == ["b", "c"])
            } else {
                Issue.record("a is not in an always-visible unit")
            }
            if case .everyone = snapshot.viewers(of: "boss") {} else { Issue.record("boss should be seen by everyone") }
            try await service.setStatus("b", .disabled)
            snapshot = try await service.currentSnapshot()
            #expect(snapshot.contacts(of: "a")["b"] == nil)
            #expect(snapshot.contacts(of: "b").isEmpty)
        }
    }

    @Test func searchByCharactersPinyinInitialsAndFields() async throws {
        try await withService { service, _ in
            _ = try await service.createUnit(name: "研发中心", id: "rd")
            _ = try await service.createUnit(name: "销售部", id: "sales")
            try await service.createUser(
                DirectoryUser(username: "zhangwei", displayName: "张伟", title: "工程师", emails: ["zw@example.com"], phones: ["010-1234"]),
                unit: "rd")
            try await service.createUser(DirectoryUser(username: "wangfang", displayName: "王芳", title: "销售经理"), unit: "sales")
            try await service.createUser(DirectoryUser(username: "zhangwen", displayName: "张文", mobile: "13800000000"), unit: "sales")
            let index = try await service.currentSnapshot().search
            func names(_ criteria: [(DirectorySearchIndex.Field, String)]) -> [String] { index.search(criteria, limit: 10).usernames.sorted() }
            #expect(names([(.name, "张伟")]) == ["zhangwei"])
            #expect(names([(.name, "zhangwei")]) == ["zhangwei"])
            #expect(names([(.name, "ZW")]) == ["zhangwei", "zhangwen"])
            #expect(names([(.name, "张")]) == ["zhangwei", "zhangwen"])
            #expect(names([(.name, "wang")]) == ["wangfang"])
            #expect(names([(.department, "销售")]) == ["wangfang", "zhangwen"])
            #expect(names([(.name, "张"), (.department, "销售")]) == ["zhangwen"])
            #expect(names([(.title, "工程")]) == ["zhangwei"])
            #expect(names([(.phone, "138")]) == ["zhangwen"])
            #expect(names([(.email, "zw@")]) == ["zhangwei"])
            #expect(names([(.any, "经理")]) == ["wangfang"])
            #expect(names([(.name, "nobody")]).isEmpty)
            #expect(names([(.name, "  ")]).isEmpty)
            let limited = index.search([(.name, "张")], limit: 1)
            #expect(limited.usernames.count == 1 && limited.more)
        }
    }
}

@Suite struct DirectoryServerTests {
    private func start() async throws -> (TestServer, DirectoryService) {
        let server = try await TestServer.start {
            $0.c2s.requireTLS = false
            $0.directory.refreshIntervalMs = 50
        }
        let service = DirectoryService(store: server.stores, accounts: server.stores)
        _ = try await service.createUnit(name: "研发中心", id: "rd")
        _ = try await service.createUnit(name: "平台部", parent: "rd", id: "platform")
        _ = try await service.createUnit(name: "销售部", id: "sales")
        let credentials = try StoredCredentials.derive(password: "pw")
        for (user, name, unit) in [("zhangwei", "张伟", "platform"), ("lina", "李娜", "platform"), ("wangfang", "王芳", "sales")] {
            try await service.createUser(DirectoryUser(username: user, displayName: name, title: "工程师"), credentials: credentials, unit: unit)
        }
        return (server, service)
    }

    private func roster(_ client: TestClient, id: String, ver: String? = nil) async throws -> XMLElement {
        let version = ver.map { " ver='\($0)'" } ?? ""
        try await client.send("<iq type='get' id='\(id)'><query xmlns='jabber:iq:roster'\(version)/></iq>")
        return try await client.next { $0.id == id }
    }

    private func items(_ result: XMLElement) -> [String: (name: String?, groups: [String], subscription: String?)] {
        var items: [String: (String?, [String], String?)] = [:]
        for item in result.child("query")?.elements.filter({ $0.name == "item" }) ?? [] {
            items[item[attribute: "jid"] ?? ""] = (item[attribute: "name"], item.elements.filter { $0.name == "group" }.map(\.text), item[attribute: "subscription"])
        }
        return items
    }


    @Test func colleaguesInRosterWithPresenceAndLivePushes() async throws {
        let (server, service) = try await start()
        defer { Task { await server.stop() } }
        let zhang = try await server.online("zhangwei", "pc")
        try await server.waitForDirectory(zhang)
        let first = try await roster(zhang, id: "r1")
        let shown = items(first)
        #expect(shown["lina@example.test"]?.name == "李娜")
        #expect(shown["lina@example.test"]?.groups == ["研发中心/平台部"])
        #expect(shown["lina@example.test"]?.subscription == "both")
        #expect(shown["wangfang@example.test"] == nil)
        let version = first.child("query")?[attribute: "ver"]
        #expect(version != nil)
        // Same version: empty result (XEP-0237).
        let unchanged = try await roster(zhang, id: "r2", ver: version)
        #expect(unchanged.stanzaType == "result" && unchanged.child("query") == nil)

        // Presence flows between colleagues without any subscription.
        let lina = try await server.online("lina", "phone")
        let seen = try await zhang.next { $0.name == "presence" && $0[attribute: "from"] == "lina@example.test/phone" }
        #expect(seen.stanzaType == nil)
        _ = try await roster(lina, id: "l1")
        // lina got zhangwei's presence at login (probe).
        // (the probe answer may arrive before or after the roster result)

        // wangfang joins the platform team: both get a roster push and each other's presence.
        let wang = try await server.online("wangfang", "pc")
        _ = try await roster(wang, id: "w1")
        try await service.addMembership("wangfang", unit: "platform")
        let push = try await zhang.next { $0.name == "iq" && $0.stanzaType == "set" && $0.child("query")?.child("item")?[attribute: "jid"] == "wangfang@example.test" }
        #expect(push.child("query")?.child("item")?.elements.first { $0.name == "group" }?.text == "研发中心/平台部")
        _ = try await zhang.next { $0.name == "presence" && $0[attribute: "from"] == "wangfang@example.test/pc" }
        _ = try await wang.next { $0.name == "iq" && $0.stanzaType == "set" && $0.child("query")?.child("item")?[attribute: "jid"] == "zhangwei@example.test" }

        // Renaming the unit re-groups the contacts.
        try await service.renameUnit("rd", to: "技术中心")
        let renamed = try await zhang.next {
            $0.name == "iq" && $0.stanzaType == "set" && $0.child("query")?.child("item")?.elements.contains { $0.name == "group" && $0.text == "技术中心/平台部" } == true
        }
        #expect(renamed.child("query")?[attribute: "ver"] != version)

        // Leaving the unit removes the contact and sends unavailable.
        try await service.removeMembership("wangfang", unit: "platform")
        _ = try await zhang.next { $0.name == "iq" && $0.child("query")?.child("item")?[attribute: "subscription"] == "remove" }
        _ = try await zhang.next { $0.name == "presence" && $0.stanzaType == "unavailable" && $0[attribute: "from"] == "wangfang@example.test/pc" }
        for client in [zhang, lina, wang] { await client.close() }
    }

    @Test func departmentRoomsFollowTheTree() async throws {
        let (server, service) = try await start()
        defer { Task { await server.stop() } }
        let muc = try #require(server.server.context.modules.service(MUCModule.self))
        let client = try await server.online("zhangwei", "pc")
        try await server.waitForDirectory(client)
        func members(_ unit: String) async -> Set<String>? {
            _ = await eventually { muc.members(ofRoom: unit).map { !$0.isEmpty } ?? false }
            return muc.members(ofRoom: unit)
        }
        #expect(await members("platform") == ["zhangwei@example.test", "lina@example.test"])
        #expect(muc.members(ofRoom: "sales") == ["wangfang@example.test"])
        try await service.addMembership("wangfang", unit: "platform")
        #expect(await eventually { muc.members(ofRoom: "platform")?.contains("wangfang@example.test") == true })
        try await service.removeMembership("lina", unit: "platform")
        #expect(await eventually { muc.members(ofRoom: "platform")?.contains("lina@example.test") == false })
        await client.close()
    }

    @Test func colleaguesSeeEachOthersAvatarsWithoutSubscriptions() async throws {
        let (server, _) = try await start()
        defer { Task { await server.stop() } }
        let zhang = try await server.online("zhangwei", "pc")
        try await server.waitForDirectory(zhang)
        let lina = try await server.online("lina", "phone")
        let wang = try await server.online("wangfang", "pc")
        let ps = "http://jabber.org/protocol/pubsub"
        try await zhang.send(
            "<iq type='set' id='a1'><pubsub xmlns='\(ps)'><publish node='urn:xmpp:avatar:metadata'><item id='h1'><metadata xmlns='urn:xmpp:avatar:metadata'><info id='h1' bytes='9' type='image/png'/></metadata></item></publish></pubsub></iq>")
        #expect(try await zhang.next { $0.id == "a1" }.stanzaType == "result")
        let event = try await lina.next { $0.name == "message" && $0.child("event") != nil }
        #expect(event[attribute: "from"] == "zhangwei@example.test")
        try await lina.send("<iq type='get' id='r1' to='zhangwei@example.test'><pubsub xmlns='\(ps)'><items node='urn:xmpp:avatar:metadata'/></pubsub></iq>")
        #expect(try await lina.next { $0.id == "r1" }.stanzaType == "result")
        // Someone from another unit: refused with the access model's own condition.
        try await wang.send("<iq type='get' id='r2' to='zhangwei@example.test'><pubsub xmlns='\(ps)'><items node='urn:xmpp:avatar:metadata'/></pubsub></iq>")
        let refused = try await wang.next { $0.id == "r2" }
        #expect(refused.child("error")?.child("presence-subscription-required", namespace: "http://jabber.org/protocol/pubsub#errors") != nil)
        for client in [zhang, lina, wang] { await client.close() }
    }

    @Test func disablingEndsSessionsAndRefusesLogin() async throws {
        let (server, service) = try await start()
        defer { Task { await server.stop() } }
        let lina = try await server.online("lina", "pc")
        try await server.waitForDirectory(lina)
        try await service.setStatus("lina", .disabled)
        var sawError = false
        while let element = try? await lina.next(timeout: .seconds(30)) {
            if element.name == "error", element.child("not-authorized") != nil { sawError = true; break }
        }
        #expect(sawError)
        let again = try await TestClient.connect(port: server.ports.c2s ?? 0, domain: "example.test")
        await #expect(throws: (any Error).self) { _ = try await again.login("lina", password: "pw", resource: "x") }
        await again.close()
        try await service.setStatus("lina", .active)
        let back = try await server.online("lina", "pc2")
        await back.close()
    }

    @Test func searchTreeAndVCardOverXMPP() async throws {
        let (server, service) = try await start()
        defer { Task { await server.stop() } }
        try await service.updateUser("zhangwei") {
            $0.emails = ["zw@example.test"]
            $0.phones = ["010-1234"]
        }
        let wang = try await server.online("wangfang", "pc")
        try await server.waitForDirectory(wang)

        // XEP-0055: the form, then a search by initials.
        try await wang.send("<iq type='get' id='s1' to='example.test'><query xmlns='jabber:iq:search'/></iq>")
        let form = try await wang.next { $0.id == "s1" }
        #expect(form.child("query")?.child("x")?.elements.contains { $0[attribute: "var"] == "name" } == true)
        try await wang.send("""
            <iq type='set' id='s2' to='example.test'><query xmlns='jabber:iq:search'><x xmlns='jabber:x:data' type='submit'>\
            <field var='FORM_TYPE' type='hidden'><value>jabber:iq:search</value></field>\
            <field var='name'><value>zw</value></field></x></query></iq>
            """)
        let found = try await wang.next { $0.id == "s2" }
        let rows = found.child("query")?.child("x")?.elements.filter { $0.name == "item" } ?? []
        #expect(rows.count == 1)
        #expect(rows.first?.elements.first { $0[attribute: "var"] == "jid" }?.child("value")?.text == "zhangwei@example.test")
        #expect(rows.first?.elements.first { $0[attribute: "var"] == "department" }?.child("value")?.text == "研发中心/平台部")
        // Legacy fields work too, and an empty search is refused.
        try await wang.send("<iq type='set' id='s3' to='example.test'><query xmlns='jabber:iq:search'><first>李</first></query></iq>")
        let legacy = try await wang.next { $0.id == "s3" }
        #expect(legacy.child("query")?.elements.filter { $0.name == "item" }.map { $0[attribute: "jid"] } == ["lina@example.test"])
        try await wang.send("<iq type='set' id='s4' to='example.test'><query xmlns='jabber:iq:search'/></iq>")
        #expect(try await wang.next { $0.id == "s4" }.child("error")?.child("not-acceptable") != nil)

        // The tree, level by level, then incrementally.
        try await wang.send("<iq type='get' id='t1' to='example.test'><units xmlns='urn:switchboard:org:0'/></iq>")
        let top = try await wang.next { $0.id == "t1" }
        #expect(top.child("units")?.elements.compactMap { $0[attribute: "name"] } == ["研发中心", "销售部"])
        let version = top.child("units")?[attribute: "version"] ?? ""
        try await wang.send("<iq type='get' id='t2' to='example.test'><units xmlns='urn:switchboard:org:0' parent='platform'/></iq>")
        let platform = try await wang.next { $0.id == "t2" }
        #expect(platform.child("units")?.elements.filter { $0.name == "member" }.compactMap { $0[attribute: "jid"] }.sorted()
            == ["lina@example.test", "zhangwei@example.test"])
        try await service.setStatus("lina", .disabled)
        _ = try await service.createUnit(name: "财务部")
        try await server.waitForDirectory(wang)
        try await wang.send("<iq type='get' id='t3' to='example.test'><units xmlns='urn:switchboard:org:0' parent='platform' since='\(version)'/></iq>")
        let delta = try await wang.next { $0.id == "t3" }
        #expect(delta.child("units")?.elements.filter { $0.name == "removed" }.compactMap { $0[attribute: "jid"] } == ["lina@example.test"])
        #expect(delta.child("units")?.elements.filter { $0.name == "member" }.isEmpty == true)
        try await wang.send("<iq type='get' id='t4' to='example.test'><units xmlns='urn:switchboard:org:0' since='\(version)'/></iq>")
        let topDelta = try await wang.next { $0.id == "t4" }
        #expect(topDelta.child("units")?.elements.compactMap { $0[attribute: "name"] } == ["财务部"])
        try await wang.send("<iq type='get' id='t5' to='example.test'><units xmlns='urn:switchboard:org:0' parent='nope'/></iq>")
        #expect(try await wang.next { $0.id == "t5" }.child("error")?.child("item-not-found") != nil)

        // vCards carry the directory's details.
        try await wang.send("<iq type='get' id='v1' to='zhangwei@example.test'><vCard xmlns='vcard-temp'/></iq>")
        let vcard = try await wang.next { $0.id == "v1" }.child("vCard")
        #expect(vcard?.child("FN")?.text == "张伟")
        #expect(vcard?.child("TITLE")?.text == "工程师")
        #expect(vcard?.child("ORG")?.child("ORGNAME")?.text == "研发中心")
        #expect(vcard?.child("ORG")?.child("ORGUNIT")?.text == "平台部")
        #expect(vcard?.child("EMAIL")?.child("USERID")?.text == "zw@example.test")
        #expect(vcard?.child("TEL")?.child("NUMBER")?.text == "010-1234")
        await wang.close()
    }
}
