import Server
import XMLStream
import XMPPCore

/// XEP-0363 HTTP file upload: the server hands out an unguessable PUT/GET URL on its own
/// HTTP listener, within the per-file limit and the user's quota.
public struct UploadModule: ServerModule {
    public let id = "upload"
    static let ns = "urn:xmpp:http:upload:0"
    private let maxFileBytes: Int

    public init(maxFileBytes: Int) {
        self.maxFileBytes = maxFileBytes
    }

    public func register(in registry: inout ModuleRegistry) {
        registry.addServerFeature(Self.ns)
        var form = XMLElement("x", xmlns: NS.dataForms, ["type": "result"])
        var formType = XMLElement("field", xmlns: NS.dataForms, ["var": "FORM_TYPE", "type": "hidden"])
        formType.append(XMLElement("value", xmlns: NS.dataForms).withText(Self.ns))
        form.append(formType)
        var maxSize = XMLElement("field", xmlns: NS.dataForms, ["var": "max-file-size"])
        maxSize.append(XMLElement("value", xmlns: NS.dataForms).withText(String(maxFileBytes)))
        form.append(maxSize)
        registry.addServerInfoForm(form)
        registry.handleIQ(Self.ns, target: .server) { request in
            guard !request.isSet, request.payload.name == "request" else { throw StanzaError.badRequest }
            let payload = request.payload
            guard let filename = payload[attribute: "filename"], let size = payload[attribute: "size"].flatMap(Int.init) else {
                throw StanzaError(.badRequest, text: "filename and size are required")
            }
            let urls = try await request.server.fileShare.makeSlot(
                owner: request.from.bare.description, filename: filename, size: size,
                contentType: payload[attribute: "content-type"], stores: request.server.stores)
            var slot = XMLElement("slot", xmlns: Self.ns)
            slot.append(XMLElement("put", xmlns: Self.ns, ["url": urls.put]))
            slot.append(XMLElement("get", xmlns: Self.ns, ["url": urls.get]))
            return slot
        }
    }
}
