import SwiftASN1

/// The scope of a search (RFC 4511 §4.5.1.2).
public enum LDAPSearchScope: Int, Sendable, Hashable {
    /// Only the base entry.
    case base = 0
    /// The immediate children of the base.
    case oneLevel = 1
    /// The base and everything below it.
    case subtree = 2
}

/// The outcome of an operation (RFC 4511 §4.1.9).
struct LDAPResult: Sendable, Hashable {
    var code: Int
    var matchedDN: String
    var diagnosticMessage: String
    var referrals: [String]

    init(code: Int, matchedDN: String = "", diagnosticMessage: String = "", referrals: [String] = []) {
        self.code = code
        self.matchedDN = matchedDN
        self.diagnosticMessage = diagnosticMessage
        self.referrals = referrals
    }

    var isSuccess: Bool { code == LDAPResultCode.success }
    var error: LDAPError { .result(code: code, diagnosticMessage: diagnosticMessage, matchedDN: matchedDN) }
}

/// `Control ::= SEQUENCE { controlType LDAPOID, criticality BOOLEAN DEFAULT FALSE, controlValue OCTET STRING OPTIONAL }`
struct LDAPControl: Sendable, Hashable {
    var oid: String
    var critical: Bool
    var value: [UInt8]?
}

struct LDAPSearchRequest: Sendable, Hashable {
    var base: String
    var scope: LDAPSearchScope
    /// 0 never, 1 in searching, 2 finding base, 3 always.
    var derefAliases: Int = 0
    var sizeLimit: Int
    var timeLimit: Int
    var typesOnly: Bool = false
    var filter: LDAPFilter
    var attributes: [String]
}

/// The protocolOp CHOICE, limited to what this client sends and receives.
enum LDAPOperation: Sendable, Hashable {
    case bindRequest(version: Int, dn: String, password: [UInt8])
    case bindResponse(LDAPResult)
    case unbindRequest
    case searchRequest(LDAPSearchRequest)
    case searchResultEntry(LDAPEntry)
    case searchResultDone(LDAPResult)
    case searchResultReference([String])
    case abandonRequest(Int32)
    case extendedRequest(name: String, value: [UInt8]?)
    case extendedResponse(LDAPResult, name: String?, value: [UInt8]?)
    case intermediateResponse(name: String?, value: [UInt8]?)
    /// A response to an operation this client never sends (modify, add, …): carried so the
    /// multiplexer can still finish whatever waits on that message ID.
    case otherResponse(tag: UInt, LDAPResult)
}

/// One LDAP PDU.
///
/// ```
/// LDAPMessage ::= SEQUENCE {
///      messageID       MessageID,              -- INTEGER (0 .. maxInt)
///      protocolOp      CHOICE { bindRequest [APPLICATION 0] ..., ... },
///      controls       [0] Controls OPTIONAL }
/// ```
struct LDAPMessage: Sendable, Hashable {
    var messageID: Int32
    var operation: LDAPOperation
    var controls: [LDAPControl]

    init(messageID: Int32, operation: LDAPOperation, controls: [LDAPControl] = []) {
        self.messageID = messageID
        self.operation = operation
        self.controls = controls
    }

    func control(_ oid: String) -> LDAPControl? { controls.first { $0.oid == oid } }
}

// MARK: - Encoding

extension LDAPMessage {
    func encode() -> [UInt8] {
        var serializer = DER.Serializer()
        serializer.appendConstructedNode(identifier: .sequence) { message in
            message.appendInteger(Int64(messageID))
            operation.encode(into: &message)
            if !controls.isEmpty {
                message.appendConstructedNode(identifier: .context(0)) { list in
                    for control in controls {
                        list.appendConstructedNode(identifier: .sequence) { item in
                            item.appendString(control.oid)
                            if control.critical { item.appendBoolean(true) }
                            if let value = control.value { item.appendOctets(value) }
                        }
                    }
                }
            }
        }
        return serializer.serializedBytes
    }
}

extension LDAPResult {
    func encodeComponents(into serializer: inout DER.Serializer) {
        serializer.appendInteger(Int64(code), identifier: .enumerated)
        serializer.appendString(matchedDN)
        serializer.appendString(diagnosticMessage)
        if !referrals.isEmpty {
            serializer.appendConstructedNode(identifier: .context(3)) { list in
                for uri in referrals { list.appendString(uri) }
            }
        }
    }

    static func decodeComponents(_ cursor: inout NodeCursor) throws -> LDAPResult {
        let code = try cursor.next("resultCode").integer(.enumerated, "resultCode")
        guard code >= 0 && code <= Int64(Int32.max) else { throw LDAPError.protocolError("resultCode \(code) out of range") }
        let matchedDN = try cursor.next("matchedDN").string("matchedDN")
        let message = try cursor.next("diagnosticMessage").string("diagnosticMessage")
        var referrals: [String] = []
        if let node = cursor.optional(.context(3)) {
            referrals = try node.children(.context(3), "referral").remaining.map { try $0.string("referral URI") }
        }
        return LDAPResult(code: Int(code), matchedDN: matchedDN, diagnosticMessage: message, referrals: referrals)
    }
}

extension LDAPOperation {
    func encode(into serializer: inout DER.Serializer) {
        switch self {
        case .bindRequest(let version, let dn, let password):
            serializer.appendConstructedNode(identifier: .application(0)) { bind in
                bind.appendInteger(Int64(version))
                bind.appendString(dn)
                bind.appendOctets(password, identifier: .context(0))  // simple [0] OCTET STRING
            }
        case .bindResponse(let result):
            serializer.appendConstructedNode(identifier: .application(1)) { result.encodeComponents(into: &$0) }
        case .unbindRequest:
            serializer.appendPrimitiveNode(identifier: .application(2)) { _ in }
        case .searchRequest(let request):
            serializer.appendConstructedNode(identifier: .application(3)) { search in
                search.appendString(request.base)
                search.appendInteger(Int64(request.scope.rawValue), identifier: .enumerated)
                search.appendInteger(Int64(request.derefAliases), identifier: .enumerated)
                search.appendInteger(Int64(request.sizeLimit))
                search.appendInteger(Int64(request.timeLimit))
                search.appendBoolean(request.typesOnly)
                request.filter.encode(into: &search)
                search.appendConstructedNode(identifier: .sequence) { list in
                    for attribute in request.attributes { list.appendString(attribute) }
                }
            }
        case .searchResultEntry(let entry):
            serializer.appendConstructedNode(identifier: .application(4)) { out in
                out.appendString(entry.dn)
                out.appendConstructedNode(identifier: .sequence) { list in
                    for attribute in entry.attributes {
                        list.appendConstructedNode(identifier: .sequence) { item in
                            item.appendString(attribute.name)
                            item.appendConstructedNode(identifier: .set) { values in
                                for value in attribute.values { values.appendOctets(value) }
                            }
                        }
                    }
                }
            }
        case .searchResultDone(let result):
            serializer.appendConstructedNode(identifier: .application(5)) { result.encodeComponents(into: &$0) }
        case .searchResultReference(let uris):
            serializer.appendConstructedNode(identifier: .application(19)) { list in
                for uri in uris { list.appendString(uri) }
            }
        case .abandonRequest(let id):
            serializer.appendInteger(Int64(id), identifier: .application(16))
        case .extendedRequest(let name, let value):
            serializer.appendConstructedNode(identifier: .application(23)) { out in
                out.appendString(name, identifier: .context(0))
                if let value { out.appendOctets(value, identifier: .context(1)) }
            }
        case .extendedResponse(let result, let name, let value):
            serializer.appendConstructedNode(identifier: .application(24)) { out in
                result.encodeComponents(into: &out)
                if let name { out.appendString(name, identifier: .context(10)) }
                if let value { out.appendOctets(value, identifier: .context(11)) }
            }
        case .intermediateResponse(let name, let value):
            serializer.appendConstructedNode(identifier: .application(25)) { out in
                if let name { out.appendString(name, identifier: .context(0)) }
                if let value { out.appendOctets(value, identifier: .context(1)) }
            }
        case .otherResponse(let tag, let result):
            serializer.appendConstructedNode(identifier: .application(tag)) { result.encodeComponents(into: &$0) }
        }
    }
}

// MARK: - Decoding

extension LDAPMessage {
    /// Decodes one complete PDU (the framer has already checked its length).
    init(berBytes bytes: [UInt8]) throws {
        let root: ASN1Node
        do {
            root = try BER.parse(bytes)
        } catch let error as LDAPError {
            throw error
        } catch {
            throw LDAPError.protocolError("malformed BER: \(error)")
        }
        try self.init(node: root)
    }

    init(node: ASN1Node) throws {
        var cursor = try node.children(.sequence, "LDAPMessage")
        let id = try cursor.next("messageID").integer(.integer, "messageID")
        guard id >= 0 && id <= Int64(Int32.max) else { throw LDAPError.protocolError("messageID \(id) out of range") }
        messageID = Int32(id)
        operation = try LDAPOperation(node: try cursor.next("protocolOp"))
        controls = []
        if let list = cursor.optional(.context(0)) {
            for item in try list.children(.context(0), "controls").remaining {
                var fields = try item.children(.sequence, "control")
                let oid = try fields.next("controlType").string("controlType")
                let critical = try fields.optional(.boolean).map { try $0.boolean("criticality") } ?? false
                let value = try fields.optional(.octetString).map { try $0.octets("controlValue") }
                controls.append(LDAPControl(oid: oid, critical: critical, value: value))
            }
        }
    }
}

extension LDAPOperation {
    init(node: ASN1Node) throws {
        guard node.identifier.tagClass == .application else {
            throw LDAPError.protocolError("protocolOp: unexpected tag \(node.identifier)")
        }
        let tag = node.identifier.tagNumber
        switch tag {
        case 0:
            var cursor = try node.children(node.identifier, "BindRequest")
            let version = try cursor.next("version").integer(.integer, "version")
            let dn = try cursor.next("name").string("name")
            let password = try cursor.next("authentication").octets(.context(0), "simple authentication")
            self = .bindRequest(version: Int(version), dn: dn, password: password)
        case 1:
            var cursor = try node.children(node.identifier, "BindResponse")
            self = .bindResponse(try LDAPResult.decodeComponents(&cursor))
        case 2:
            _ = try node.primitiveBytes(node.identifier, "UnbindRequest")
            self = .unbindRequest
        case 3:
            var cursor = try node.children(node.identifier, "SearchRequest")
            let base = try cursor.next("baseObject").string("baseObject")
            let scopeValue = try cursor.next("scope").integer(.enumerated, "scope")
            guard let scope = LDAPSearchScope(rawValue: Int(truncatingIfNeeded: scopeValue)) else {
                throw LDAPError.protocolError("unknown search scope \(scopeValue)")
            }
            let deref = try cursor.next("derefAliases").integer(.enumerated, "derefAliases")
            let sizeLimit = try cursor.next("sizeLimit").integer(.integer, "sizeLimit")
            let timeLimit = try cursor.next("timeLimit").integer(.integer, "timeLimit")
            let typesOnly = try cursor.next("typesOnly").boolean("typesOnly")
            let filter = try LDAPFilter(node: try cursor.next("filter"))
            let attributes = try cursor.next("attributes").children(.sequence, "attributes").remaining.map {
                try $0.string("attribute selector")
            }
            self = .searchRequest(
                LDAPSearchRequest(
                    base: base, scope: scope, derefAliases: Int(truncatingIfNeeded: deref),
                    sizeLimit: Int(truncatingIfNeeded: sizeLimit), timeLimit: Int(truncatingIfNeeded: timeLimit),
                    typesOnly: typesOnly, filter: filter, attributes: attributes))
        case 4:
            var cursor = try node.children(node.identifier, "SearchResultEntry")
            let dn = try cursor.next("objectName").string("objectName")
            var entry = LDAPEntry(dn: dn, attributes: [])
            for item in try cursor.next("attributes").children(.sequence, "attributes").remaining {
                var fields = try item.children(.sequence, "PartialAttribute")
                let name = try fields.next("type").string("attribute type")
                let values = try fields.next("vals").children(.set, "vals").remaining.map { try $0.octets("value") }
                entry.append(LDAPEntry.Attribute(name: name, values: values))
            }
            self = .searchResultEntry(entry)
        case 5:
            var cursor = try node.children(node.identifier, "SearchResultDone")
            self = .searchResultDone(try LDAPResult.decodeComponents(&cursor))
        case 19:
            let cursor = try node.children(node.identifier, "SearchResultReference")
            self = .searchResultReference(try cursor.remaining.map { try $0.string("reference URI") })
        case 16:
            let id = try node.integer(node.identifier, "AbandonRequest")
            guard id >= 0 && id <= Int64(Int32.max) else { throw LDAPError.protocolError("abandon id out of range") }
            self = .abandonRequest(Int32(id))
        case 23:
            var cursor = try node.children(node.identifier, "ExtendedRequest")
            let name = try cursor.next("requestName").string(.context(0), "requestName")
            let value = try cursor.optional(.context(1)).map { try $0.octets(.context(1), "requestValue") }
            self = .extendedRequest(name: name, value: value)
        case 24:
            var cursor = try node.children(node.identifier, "ExtendedResponse")
            let result = try LDAPResult.decodeComponents(&cursor)
            let name = try cursor.optional(.context(10)).map { try $0.string(.context(10), "responseName") }
            let value = try cursor.optional(.context(11)).map { try $0.octets(.context(11), "responseValue") }
            self = .extendedResponse(result, name: name, value: value)
        case 25:
            var cursor = try node.children(node.identifier, "IntermediateResponse")
            let name = try cursor.optional(.context(0)).map { try $0.string(.context(0), "responseName") }
            let value = try cursor.optional(.context(1)).map { try $0.octets(.context(1), "responseValue") }
            self = .intermediateResponse(name: name, value: value)
        case 7, 9, 11, 13, 15:
            var cursor = try node.children(node.identifier, "response")
            self = .otherResponse(tag: tag, try LDAPResult.decodeComponents(&cursor))
        default:
            throw LDAPError.protocolError("unsupported protocolOp [APPLICATION \(tag)]")
        }
    }
}
