import Foundation
import Server
import SwitchboardTestSupport
import Testing
import XMLStream
import XMPPCore

@Suite struct UploadTests {
    private let ns = "urn:xmpp:http:upload:0"

    private func http(_ method: String, _ url: String, body: Data? = nil) async throws -> (Int, Data, String?) {
        let components = try #require(URLComponents(string: url))
        let response = try await HTTPTestClient.request(
            port: try #require(components.port), method: method, path: components.percentEncodedPath, body: Array(body ?? Data()))
        return (response.status, Data(response.body), response.headers["content-type"])
    }

    @Test func slotPutGetOnceOnlyAndLimits() async throws {
        let server = try await TestServer.start {
            $0.c2s.requireTLS = false
            $0.upload.maxFileBytes = 1000
            $0.upload.quotaBytesPerUser = 1500
        }
        try await server.addUser("alice", password: "pw")
        let alice = try await server.connect()
        try await alice.login("alice", password: "pw")

        try await alice.send("<iq type='get' id='d' to='example.test'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
        let info = try await alice.next { $0.id == "d" }
        let form = info.child("query")?.child("x", namespace: NS.dataForms)
        #expect(form?.elements.first { $0[attribute: "var"] == "max-file-size" }?.child("value")?.text == "1000")

        let content = Data("hello world, 你好".utf8)
        try await alice.send("<iq type='get' id='s1' to='example.test'><request xmlns='\(ns)' filename='hi 世界.txt' size='\(content.count)' content-type='text/plain'/></iq>")
        let slot = try await alice.next { $0.id == "s1" }
        let put = try #require(slot.child("slot", namespace: ns)?.child("put")?[attribute: "url"])
        let get = try #require(slot.child("slot", namespace: ns)?.child("get")?[attribute: "url"])
        #expect(put.hasPrefix("http://example.test:\(server.ports.http ?? 0)/upload/"))
        // The advertised host is the XMPP domain; in the test we reach the listener on loopback.
        let local = { (url: String) in url.replacingOccurrences(of: "http://example.test:", with: "http://127.0.0.1:") }

        #expect(try await http("PUT", local(put), body: content).0 == 201)
        let (status, body, type) = try await http("GET", local(get))
        #expect(status == 200 && body == content && type == "text/plain")
        #expect(try await http("PUT", local(put), body: content).0 == 403)  // a slot is used once
        #expect(try await http("GET", local(get) + "x").0 == 404)
        let stored = try FileManager.default.contentsOfDirectory(atPath: server.dataDirectory + "/uploads")
        #expect(stored.count == 1 && !stored[0].hasSuffix(".part"))

        try await alice.send("<iq type='get' id='s2' to='example.test'><request xmlns='\(ns)' filename='big.bin' size='1001'/></iq>")
        let tooLarge = try await alice.next { $0.id == "s2" }
        #expect(tooLarge.child("error")?.child("file-too-large", namespace: ns)?.child("max-file-size")?.text == "1000")

        // 21 bytes used; a 1000-byte slot fits the 1500 quota once, not twice.
        try await alice.send("<iq type='get' id='s3' to='example.test'><request xmlns='\(ns)' filename='a.bin' size='1000'/></iq>")
        #expect(try await alice.next { $0.id == "s3" }.stanzaType == "result")
        try await alice.send("<iq type='get' id='s4' to='example.test'><request xmlns='\(ns)' filename='b.bin' size='1000'/></iq>")
        let overQuota = try await alice.next { $0.id == "s4" }
        #expect(overQuota.child("error")?.child("resource-constraint", namespace: NS.stanzaErrors) != nil)

        // A body that does not match the slot's size is refused and leaves nothing behind.
        try await alice.send("<iq type='get' id='s5' to='example.test'><request xmlns='\(ns)' filename='c.bin' size='10'/></iq>")
        let slot5 = try await alice.next { $0.id == "s5" }
        let put5 = try #require(slot5.child("slot")?.child("put")?[attribute: "url"])
        #expect(try await http("PUT", local(put5), body: Data("too long for the slot".utf8)).0 == 400)
        #expect(try FileManager.default.contentsOfDirectory(atPath: server.dataDirectory + "/uploads").count == 1)
        await alice.close()
        await server.stop()
    }

    @Test func htmlIsServedAsOpaqueBytes() async throws {
        #expect(FileShare.safeContentType("text/html") == "application/octet-stream")
        #expect(FileShare.safeContentType("image/svg+xml") == "application/octet-stream")
        #expect(FileShare.safeContentType("image/png") == "image/png")
        #expect(FileShare.safeContentType("text/plain; charset=\"x\"<script>") == "application/octet-stream")
    }
}

