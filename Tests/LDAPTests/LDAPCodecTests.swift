import Foundation
import NIOCore
import NIOEmbedded
import NIOTestUtils
import SwiftASN1
import Testing

@testable import LDAP

@Suite("BER codec and message framing")
struct LDAPCodecTests {
    private static let entry = LDAPEntry(
        dn: "uid=zhangwei,ou=存储组,dc=example,dc=com",
        attributes: [
            .init(name: "cn", strings: ["张伟"]),
            .init(name: "mail", strings: ["zhangwei@example.com", "zhangwei@corp.example.com"]),
            // Binary (AD objectGUID-like): not valid UTF-8, must survive byte for byte.
            .init(name: "objectGUID", values: [[0x00, 0xFF, 0xFE, 0x80, 0x0A, 0x0D, 0x00, 0x9C]]),
        ])

    static let messages: [LDAPMessage] = [
        LDAPMessage(messageID: 1, operation: .bindRequest(version: 3, dn: "cn=admin,dc=example,dc=com", password: Array("s3cret".utf8))),
        LDAPMessage(messageID: 1, operation: .bindResponse(LDAPResult(code: 49, diagnosticMessage: "invalid credentials"))),
        LDAPMessage(
            messageID: 2,
            operation: .searchRequest(
                LDAPSearchRequest(
                    base: "ou=Departments,dc=example,dc=com", scope: .subtree, sizeLimit: 10, timeLimit: 0,
                    filter: .and([.equality("cn", "张伟"), .not(.present(attribute: "employeeType"))]), attributes: ["cn", "mail"])),
            controls: [LDAPControl.pagedResults(size: 50, cookie: [1, 2, 3])]),
        LDAPMessage(messageID: 2, operation: .searchResultEntry(entry)),
        LDAPMessage(messageID: 2, operation: .searchResultReference(["ldap://other.example.com/dc=example,dc=com"])),
        LDAPMessage(
            messageID: 2, operation: .searchResultDone(LDAPResult(code: 0, matchedDN: "", diagnosticMessage: "", referrals: ["ldap://x/"])),
            controls: [LDAPControl(oid: LDAPControl.pagedResultsOID, critical: false, value: [0x30, 0x05, 0x02, 0x01, 0x00, 0x04, 0x00])]),
        LDAPMessage(messageID: 3, operation: .extendedRequest(name: LDAPControl.startTLSOID, value: nil)),
        LDAPMessage(messageID: 3, operation: .extendedResponse(LDAPResult(code: 0), name: LDAPControl.startTLSOID, value: [1, 2])),
        LDAPMessage(messageID: 4, operation: .intermediateResponse(name: LDAPControl.syncInfoOID, value: SyncInfo.newCookie([9]).encode())),
        LDAPMessage(messageID: 5, operation: .abandonRequest(4)),
        LDAPMessage(messageID: 300, operation: .abandonRequest(128)),
        LDAPMessage(messageID: Int32.max, operation: .unbindRequest),
    ]

    @Test(arguments: messages)
    func roundTrip(_ message: LDAPMessage) throws {
        #expect(try LDAPMessage(berBytes: message.encode()) == message)
    }

    @Test func knownEncodings() throws {
        // An anonymous bind as ldapwhoami sends it.
        #expect(
            LDAPMessage(messageID: 1, operation: .bindRequest(version: 3, dn: "", password: [])).encode()
                == [0x30, 0x0C, 0x02, 0x01, 0x01, 0x60, 0x07, 0x02, 0x01, 0x03, 0x04, 0x00, 0x80, 0x00])
        #expect(LDAPMessage(messageID: 2, operation: .unbindRequest).encode() == [0x30, 0x05, 0x02, 0x01, 0x02, 0x42, 0x00])
        #expect(LDAPMessage(messageID: 3, operation: .abandonRequest(2)).encode() == [0x30, 0x06, 0x02, 0x01, 0x03, 0x50, 0x01, 0x02])
        // Integers are minimal two's complement: 128 needs a leading zero.
        #expect(LDAPMessage(messageID: 128, operation: .unbindRequest).encode() == [0x30, 0x06, 0x02, 0x02, 0x00, 0x80, 0x42, 0x00])
    }

    @Test func decodesOpenLDAPStyleLongLengths() throws {
        // liblber writes 4-octet lengths (0x84) for constructed types: BER, not DER.
        let bindResponse: [UInt8] = [
            0x30, 0x84, 0x00, 0x00, 0x00, 0x10, 0x02, 0x01, 0x01,
            0x61, 0x84, 0x00, 0x00, 0x00, 0x07, 0x0A, 0x01, 0x31, 0x04, 0x00, 0x04, 0x00,
        ]
        let message = try LDAPMessage(berBytes: bindResponse)
        #expect(message == LDAPMessage(messageID: 1, operation: .bindResponse(LDAPResult(code: 49))))
        // BOOLEAN TRUE as any non-zero octet.
        let done: [UInt8] = [
            0x30, 0x2F, 0x02, 0x01, 0x02, 0x65, 0x07, 0x0A, 0x01, 0x00, 0x04, 0x00, 0x04, 0x00,
            0xA0, 0x21, 0x30, 0x1F, 0x04, 0x18] + Array("1.3.6.1.4.1.4203.1.9.1.3".utf8) + [0x01, 0x01, 0x01,
            0x04, 0x00,
        ]
        let parsed = try LDAPMessage(berBytes: done)
        #expect(parsed.controls.first?.critical == true)
    }

    @Test func entryAttributesAreCaseInsensitiveAndBinarySafe() throws {
        let message = try LDAPMessage(berBytes: LDAPMessage(messageID: 7, operation: .searchResultEntry(Self.entry)).encode())
        guard case .searchResultEntry(let entry) = message.operation else {
            Issue.record("not an entry")
            return
        }
        #expect(entry["CN"] == ["张伟"])
        #expect(entry.first("Mail") == "zhangwei@example.com")
        #expect(entry["mail"].count == 2)
        #expect(entry.firstValue("objectguid") == [0x00, 0xFF, 0xFE, 0x80, 0x0A, 0x0D, 0x00, 0x9C])
        #expect(entry["absent"] == [])
        #expect(!entry.contains("absent"))
    }

    @Test(arguments: [
        ("not a SEQUENCE", [0x31, 0x03, 0x02, 0x01, 0x01] as [UInt8]),
        ("indefinite length", [0x30, 0x80, 0x02, 0x01, 0x01, 0x42, 0x00, 0x00, 0x00]),
        ("length of 9 octets", [0x30, 0x89, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]),
    ])
    func framerRejectsMalformedHeaders(_ label: String, _ bytes: [UInt8]) throws {
        var buffer = ByteBuffer(bytes: bytes)
        #expect(throws: LDAPError.self, "\(label)") {
            _ = try LDAPMessageDecoder.nextMessage(from: &buffer, maximumMessageSize: 1 << 20)
        }
    }

    @Test func framerRejectsOversizedMessagesBeforeBuffering() throws {
        // Announces 16 MiB + 1 with only the header received.
        var buffer = ByteBuffer(bytes: [0x30, 0x84, 0x01, 0x00, 0x00, 0x01])
        #expect(throws: LDAPError.protocolError("message longer than the limit of 16777216 bytes")) {
            _ = try LDAPMessageDecoder.nextMessage(from: &buffer, maximumMessageSize: 16 * 1024 * 1024)
        }
        // An 8-octet length near Int.max cannot overflow into acceptance.
        buffer = ByteBuffer(bytes: [0x30, 0x88, 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF])
        #expect(throws: LDAPError.self) { _ = try LDAPMessageDecoder.nextMessage(from: &buffer, maximumMessageSize: 1 << 24) }
    }

    @Test(arguments: [
        ("truncated inner TLV", [0x30, 0x05, 0x02, 0x01, 0x01, 0x61, 0x05] as [UInt8]),
        ("message ID is not an INTEGER", [0x30, 0x05, 0x04, 0x01, 0x01, 0x42, 0x00]),
        ("negative message ID", [0x30, 0x05, 0x02, 0x01, 0xFF, 0x42, 0x00]),
        ("unknown application tag", [0x30, 0x05, 0x02, 0x01, 0x01, 0x5F, 0x1F, 0x00]),
        ("BindResponse missing fields", [0x30, 0x08, 0x02, 0x01, 0x01, 0x61, 0x03, 0x0A, 0x01, 0x00]),
        ("resultCode not ENUMERATED", [0x30, 0x0C, 0x02, 0x01, 0x01, 0x61, 0x07, 0x02, 0x01, 0x00, 0x04, 0x00, 0x04, 0x00]),
        ("primitive where constructed expected", [0x30, 0x06, 0x02, 0x01, 0x01, 0x41, 0x01, 0x00]),
        ("empty INTEGER", [0x30, 0x04, 0x02, 0x00, 0x42, 0x00]),
        ("trailing garbage after the PDU content", [0x30, 0x07, 0x02, 0x01, 0x01, 0x42, 0x00, 0xFF, 0xFF]),
    ])
    func decoderRejectsMalformedPDUs(_ label: String, _ bytes: [UInt8]) {
        #expect(throws: LDAPError.self, "\(label)") { _ = try LDAPMessage(berBytes: bytes) }
    }

    @Test func decoderPassesTheByteToMessageVerifier() throws {
        let inputs: [(ByteBuffer, [LDAPMessage])] = Self.messages.map { (ByteBuffer(bytes: $0.encode()), [$0]) }
        let all = ByteBuffer(bytes: Self.messages.flatMap { $0.encode() })
        try ByteToMessageDecoderVerifier.verifyDecoder(
            inputOutputPairs: inputs + [(all, Self.messages)],
            decoderFactory: { LDAPMessageDecoder() })
    }

    @Test func syncControlsRoundTrip() throws {
        let uuid = UUID()
        let uuidBytes = withUnsafeBytes(of: uuid.uuid) { Array($0) }
        let state = LDAPControl(
            oid: LDAPControl.syncStateOID, critical: false,
            value: LDAPControl.value { out in
                out.appendConstructedNode(identifier: .sequence) { seq in
                    seq.appendInteger(2, identifier: .enumerated)
                    seq.appendOctets(uuidBytes)
                    seq.appendOctets(Array("rid=000,csn=1".utf8))
                }
            })
        let parsed = try state.syncState()
        #expect(parsed.state == 2 && parsed.entryUUID == uuid && parsed.cookie == Array("rid=000,csn=1".utf8))
        for info in [
            SyncInfo.newCookie([1, 2]), .refreshDelete(cookie: [3], refreshDone: true), .refreshPresent(cookie: nil, refreshDone: false),
            .syncIdSet(cookie: [4], refreshDeletes: true, uuids: [uuid, UUID()]), .syncIdSet(cookie: nil, refreshDeletes: false, uuids: []),
        ] {
            #expect(try SyncInfo(value: info.encode()) == info)
        }
        // A syncUUID must be 16 octets.
        #expect(throws: LDAPError.self) { try LDAPControl.uuid([1, 2, 3]) }
    }

    @Test func syncResultFolding() throws {
        func entry(_ uid: String, state: Int, uuid: UUID) -> LDAPMessage {
            let control = LDAPControl(
                oid: LDAPControl.syncStateOID, critical: false,
                value: LDAPControl.value { out in
                    out.appendConstructedNode(identifier: .sequence) { seq in
                        seq.appendInteger(Int64(state), identifier: .enumerated)
                        seq.appendOctets(withUnsafeBytes(of: uuid.uuid) { Array($0) })
                    }
                })
            return LDAPMessage(
                messageID: 9, operation: .searchResultEntry(LDAPEntry(dn: "uid=\(uid),dc=example,dc=com", attributes: [])),
                controls: [control])
        }
        let (added, modified, deleted, deleted2, present) = (UUID(), UUID(), UUID(), UUID(), UUID())
        let done = LDAPControl(
            oid: LDAPControl.syncDoneOID, critical: false,
            value: LDAPControl.value { out in
                out.appendConstructedNode(identifier: .sequence) { seq in
                    seq.appendOctets(Array("new".utf8))
                    seq.appendBoolean(true)
                }
            })
        let messages = [
            LDAPMessage(
                messageID: 9,
                operation: .intermediateResponse(
                    name: LDAPControl.syncInfoOID, value: SyncInfo.syncIdSet(cookie: nil, refreshDeletes: true, uuids: [deleted]).encode())),
            entry("a", state: 1, uuid: added), entry("m", state: 2, uuid: modified), entry("d", state: 3, uuid: deleted2),
            entry("p", state: 0, uuid: present),
            LDAPMessage(messageID: 9, operation: .searchResultDone(LDAPResult(code: 0)), controls: [done]),
        ]
        let result = try LDAPConnection.syncResult(from: messages, previousCookie: Array("old".utf8))
        #expect(result.changes.map(\.entryUUID) == [added, modified])
        #expect(result.changes.map(\.kind) == [.add, .modify])
        #expect(result.deletedEntryUUIDs == [deleted, deleted2])
        #expect(result.presentEntryUUIDs == [present])
        #expect(result.cookie == Array("new".utf8))
        #expect(result.refreshDeletes && !result.isCompleteContent && !result.refreshRequired)

        let refresh = try LDAPConnection.syncResult(
            from: [LDAPMessage(messageID: 9, operation: .searchResultDone(LDAPResult(code: 4096)))], previousCookie: [1])
        #expect(refresh.refreshRequired && refresh.cookie == nil)
        // A refreshOnly search must end with a Sync Done control: without it the caller
        // could not tell a present phase from explicit deletions.
        #expect(throws: LDAPError.self) {
            try LDAPConnection.syncResult(
                from: [LDAPMessage(messageID: 9, operation: .searchResultDone(LDAPResult(code: 0)))], previousCookie: [1])
        }
        // An entry without a Sync State control is a protocol error.
        #expect(throws: LDAPError.self) {
            try LDAPConnection.syncResult(
                from: [LDAPMessage(messageID: 9, operation: .searchResultEntry(LDAPEntry(dn: "x", attributes: [])))], previousCookie: nil)
        }
    }

    @Test func configurationURLs() throws {
        let plain = try LDAPConfiguration(url: "ldap://ldap.example.com")
        #expect(plain.host == "ldap.example.com" && plain.port == 389 && !plain.isLDAPS && plain.transportSecurity == .none)
        let secure = try LDAPConfiguration(url: "LDAPS://10.0.0.5:1636/")
        #expect(secure.host == "10.0.0.5" && secure.port == 1636 && secure.transportSecurity == .ldaps)
        let v6 = try LDAPConfiguration(url: "ldap://[::1]:3389", startTLS: true)
        #expect(v6.host == "::1" && v6.port == 3389 && v6.transportSecurity == .startTLS && v6.url == "ldap://[::1]:3389")
        for bad in ["http://x", "ldap://", "ldap://x:0", "ldap://x:70000", "ldap://x:abc", "ldap://x/dc=example", "ldap://[::1"] {
            #expect(throws: LDAPError.self, "\(bad)") { try LDAPConfiguration(url: bad) }
        }
        #expect(throws: LDAPError.self) { try LDAPConfiguration(url: "ldaps://x", startTLS: true) }
    }

    @Test func errorHelpers() {
        let error = LDAPError.result(code: 49, diagnosticMessage: "bad")
        #expect(error.isInvalidCredentials && error.resultCode == 49)
        #expect(error == .result(code: 49, name: "invalidCredentials", diagnosticMessage: "bad", matchedDN: ""))
        #expect(LDAPError.result(code: 4096).isSyncRefreshRequired)
        #expect(!LDAPError.timeout.isInvalidCredentials && LDAPError.timeout.isTimeout)
    }
}
