import Foundation
import SwiftASN1

// Values of the controls and intermediate messages the client understands.

extension LDAPControl {
    static let pagedResultsOID = "1.2.840.113556.1.4.319"
    static let syncRequestOID = "1.3.6.1.4.1.4203.1.9.1.1"
    static let syncStateOID = "1.3.6.1.4.1.4203.1.9.1.2"
    static let syncDoneOID = "1.3.6.1.4.1.4203.1.9.1.3"
    static let syncInfoOID = "1.3.6.1.4.1.4203.1.9.1.4"
    static let startTLSOID = "1.3.6.1.4.1.1466.20037"
    static let noticeOfDisconnectionOID = "1.3.6.1.4.1.1466.20036"

    static func value(_ build: (inout DER.Serializer) -> Void) -> [UInt8] {
        var serializer = DER.Serializer()
        build(&serializer)
        return serializer.serializedBytes
    }

    static func parseValue(_ bytes: [UInt8]?, _ what: String) throws -> ASN1Node {
        guard let bytes else { throw LDAPError.protocolError("\(what): missing control value") }
        do {
            return try BER.parse(bytes)
        } catch {
            throw LDAPError.protocolError("\(what): malformed BER: \(error)")
        }
    }

    // MARK: RFC 2696 simple paged results

    /// `realSearchControlValue ::= SEQUENCE { size INTEGER (0..maxInt), cookie OCTET STRING }`
    static func pagedResults(size: Int, cookie: [UInt8]) -> LDAPControl {
        LDAPControl(
            oid: pagedResultsOID, critical: false,
            value: value { out in
                out.appendConstructedNode(identifier: .sequence) { seq in
                    seq.appendInteger(Int64(size))
                    seq.appendOctets(cookie)
                }
            })
    }

    /// The cookie of a paged-results response control (empty when the search is complete).
    func pagedResultsCookie() throws -> [UInt8] {
        var cursor = try Self.parseValue(value, "paged results").children(.sequence, "paged results")
        _ = try cursor.next("size").integer(.integer, "size")
        return try cursor.next("cookie").octets("cookie")
    }

    // MARK: RFC 4533 content synchronisation

    /// `syncRequestValue ::= SEQUENCE { mode ENUMERATED { refreshOnly (1), refreshAndPersist (3) }, cookie syncCookie OPTIONAL, reloadHint BOOLEAN DEFAULT FALSE }`
    static func syncRequest(cookie: [UInt8]?, reloadHint: Bool = false) -> LDAPControl {
        LDAPControl(
            oid: syncRequestOID, critical: true,
            value: value { out in
                out.appendConstructedNode(identifier: .sequence) { seq in
                    seq.appendInteger(1, identifier: .enumerated)
                    if let cookie { seq.appendOctets(cookie) }
                    if reloadHint { seq.appendBoolean(true) }
                }
            })
    }

    /// `syncStateValue ::= SEQUENCE { state ENUMERATED { present (0), add (1), modify (2), delete (3) }, entryUUID syncUUID, cookie syncCookie OPTIONAL }`
    func syncState() throws -> (state: Int, entryUUID: UUID, cookie: [UInt8]?) {
        var cursor = try Self.parseValue(value, "sync state").children(.sequence, "sync state")
        let state = try cursor.next("state").integer(.enumerated, "state")
        guard (0...3).contains(state) else { throw LDAPError.protocolError("sync state \(state)") }
        let uuid = try Self.uuid(try cursor.next("entryUUID").octets("entryUUID"))
        let cookie = try cursor.optional(.octetString).map { try $0.octets("cookie") }
        return (Int(state), uuid, cookie)
    }

    /// `syncDoneValue ::= SEQUENCE { cookie syncCookie OPTIONAL, refreshDeletes BOOLEAN DEFAULT FALSE }`
    func syncDone() throws -> (cookie: [UInt8]?, refreshDeletes: Bool) {
        var cursor = try Self.parseValue(value, "sync done").children(.sequence, "sync done")
        let cookie = try cursor.optional(.octetString).map { try $0.octets("cookie") }
        let refreshDeletes = try cursor.optional(.boolean).map { try $0.boolean("refreshDeletes") } ?? false
        return (cookie, refreshDeletes)
    }

    static func uuid(_ bytes: [UInt8]) throws -> UUID {
        guard bytes.count == 16 else { throw LDAPError.protocolError("syncUUID of \(bytes.count) octets") }
        return UUID(
            uuid: (
                bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5], bytes[6], bytes[7],
                bytes[8], bytes[9], bytes[10], bytes[11], bytes[12], bytes[13], bytes[14], bytes[15]
            ))
    }
}

/// RFC 4533 §2.5 Sync Info Message, carried in an IntermediateResponse.
///
/// ```
/// syncInfoValue ::= CHOICE {
///     newcookie      [0] syncCookie,
///     refreshDelete  [1] SEQUENCE { cookie syncCookie OPTIONAL, refreshDone BOOLEAN DEFAULT TRUE },
///     refreshPresent [2] SEQUENCE { cookie syncCookie OPTIONAL, refreshDone BOOLEAN DEFAULT TRUE },
///     syncIdSet      [3] SEQUENCE { cookie syncCookie OPTIONAL, refreshDeletes BOOLEAN DEFAULT FALSE,
///                                   syncUUIDs SET OF syncUUID } }
/// ```
enum SyncInfo: Hashable {
    case newCookie([UInt8])
    case refreshDelete(cookie: [UInt8]?, refreshDone: Bool)
    case refreshPresent(cookie: [UInt8]?, refreshDone: Bool)
    case syncIdSet(cookie: [UInt8]?, refreshDeletes: Bool, uuids: [UUID])

    init(value: [UInt8]?) throws {
        let node = try LDAPControl.parseValue(value, "sync info")
        guard node.identifier.tagClass == .contextSpecific else {
            throw LDAPError.protocolError("sync info: unexpected tag \(node.identifier)")
        }
        switch node.identifier.tagNumber {
        case 0:
            self = .newCookie(try node.octets(.context(0), "newcookie"))
        case 1, 2:
            var cursor = try node.children(node.identifier, "refresh info")
            let cookie = try cursor.optional(.octetString).map { try $0.octets("cookie") }
            let done = try cursor.optional(.boolean).map { try $0.boolean("refreshDone") } ?? true
            self = node.identifier.tagNumber == 1
                ? .refreshDelete(cookie: cookie, refreshDone: done) : .refreshPresent(cookie: cookie, refreshDone: done)
        case 3:
            var cursor = try node.children(.context(3), "syncIdSet")
            let cookie = try cursor.optional(.octetString).map { try $0.octets("cookie") }
            let deletes = try cursor.optional(.boolean).map { try $0.boolean("refreshDeletes") } ?? false
            let uuids = try cursor.next("syncUUIDs").children(.set, "syncUUIDs").remaining.map {
                try LDAPControl.uuid(try $0.octets("syncUUID"))
            }
            self = .syncIdSet(cookie: cookie, refreshDeletes: deletes, uuids: uuids)
        default:
            throw LDAPError.protocolError("sync info: unknown choice [\(node.identifier.tagNumber)]")
        }
    }

    func encode() -> [UInt8] {
        LDAPControl.value { out in
            switch self {
            case .newCookie(let cookie):
                out.appendOctets(cookie, identifier: .context(0))
            case .refreshDelete(let cookie, let done), .refreshPresent(let cookie, let done):
                let tag: UInt
                if case .refreshDelete = self { tag = 1 } else { tag = 2 }
                out.appendConstructedNode(identifier: .context(tag)) { seq in
                    if let cookie { seq.appendOctets(cookie) }
                    if !done { seq.appendBoolean(false) }
                }
            case .syncIdSet(let cookie, let deletes, let uuids):
                out.appendConstructedNode(identifier: .context(3)) { seq in
                    if let cookie { seq.appendOctets(cookie) }
                    if deletes { seq.appendBoolean(true) }
                    seq.appendConstructedNode(identifier: .set) { set in
                        for uuid in uuids { set.appendOctets(withUnsafeBytes(of: uuid.uuid) { Array($0) }) }
                    }
                }
            }
        }
    }
}
