import Foundation
import NIOConcurrencyHelpers
import Storage
import XMLStream
import XMPPCore

/// HTTP file upload (XEP-0363) on the server side: upload slots, their URLs, and where the
/// files live. The HTTP handler takes PUT and GET for `/upload/TOKEN/NAME`; the upload module
/// hands out slots over XMPP.
public final class FileShare: Sendable {
    /// Permission to PUT one file of a known size, valid for a few minutes.
    struct Slot: Sendable {
        let token: String
        let owner: String
        let filename: String
        let size: Int
        let contentType: String
        let expires: Double
    }

    public let configuration: ServerConfiguration.Upload
    let directory: String
    private let slots = NIOLockedValueBox<[String: Slot]>([:])
    private let baseURL = NIOLockedValueBox<String?>(nil)
    private static let slotLifetime: Double = 300

    init(configuration: ServerConfiguration) {
        self.configuration = configuration.upload
        self.directory = configuration.dataDir + "/uploads"
        if let url = configuration.upload.publicURL {
            baseURL.withLockedValue { $0 = url.hasSuffix("/") ? String(url.dropLast()) : url }
        }
    }

    /// Called once the HTTP listener is bound, for the default public URL.
    func listenerBound(domain: String, port: Int) {
        baseURL.withLockedValue { if $0 == nil { $0 = "http://\(domain):\(port)" } }
        try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
    }

    /// Grants a slot; returns the PUT and GET URLs.
    /// - Throws: `StanzaError` naming the problem (size, quota, name).
    public func makeSlot(owner: String, filename: String, size: Int, contentType: String?, stores: Stores) async throws -> (put: String, get: String) {
        guard configuration.enabled, let base = baseURL.withLockedValue({ $0 }) else { throw StanzaError.serviceUnavailable }
        guard !filename.isEmpty, filename.utf8.count <= 255, !filename.contains("/"), !filename.contains("\\"),
            !filename.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F }), filename != ".", filename != ".."
        else { throw StanzaError(.badRequest, text: "invalid file name") }
        guard size > 0 else { throw StanzaError(.badRequest, text: "size must be positive") }
        guard size <= configuration.maxFileBytes else {
            var tooLarge = XMLElement("file-too-large", xmlns: "urn:xmpp:http:upload:0")
            tooLarge.append(XMLElement("max-file-size", xmlns: "urn:xmpp:http:upload:0").withText(String(configuration.maxFileBytes)))
            throw StanzaError(.notAcceptable, text: "file too large", applicationCondition: tooLarge)
        }
        let pending = slots.withLockedValue { $0.values.filter { $0.owner == owner }.reduce(0) { $0 + $1.size } }
        let used = try await stores.uploads.usage(of: owner)
        guard used + pending + size <= configuration.quotaBytesPerUser else {
            throw StanzaError(.resourceConstraint, type: .wait, text: "upload quota of \(configuration.quotaBytesPerUser) bytes reached")
        }
        var generator = SystemRandomNumberGenerator()
        let token = (0..<16).map { _ in String(format: "%02x", UInt8.random(in: .min ... .max, using: &generator)) }.joined()
        let slot = Slot(
            token: token, owner: owner, filename: filename, size: size,
            contentType: Self.safeContentType(contentType), expires: Date().timeIntervalSince1970 + Self.slotLifetime)
        slots.withLockedValue { slots in
            let now = Date().timeIntervalSince1970
            slots = slots.filter { $0.value.expires > now }
            slots[token] = slot
        }
        let name = filename.addingPercentEncoding(withAllowedCharacters: .urlPathAllowed.subtracting(CharacterSet(charactersIn: "/?#;"))) ?? token
        let url = "\(base)/upload/\(token)/\(name)"
        return (url, url)
    }

    /// Takes the slot for a PUT (each slot is used once).
    func claimSlot(_ token: String) -> Slot? {
        slots.withLockedValue { slots in
            guard let slot = slots.removeValue(forKey: token), slot.expires > Date().timeIntervalSince1970 else { return nil }
            return slot
        }
    }

    func path(_ token: String) -> String { directory + "/" + token }

    /// Content types that cannot turn a shared file into a script on our origin.
    public static func safeContentType(_ type: String?) -> String {
        guard let type = type?.lowercased(), !type.isEmpty, type.utf8.count < 128,
            type.allSatisfy({ $0.isLetter || $0.isNumber || "/+-.".contains($0) })
        else { return "application/octet-stream" }
        let active = ["text/html", "application/xhtml+xml", "image/svg+xml", "text/xml", "application/xml", "application/javascript", "text/javascript"]
        return active.contains(type) ? "application/octet-stream" : type
    }

    /// Deletes files past `expire_after_days`; returns how many.
    public func expire(stores: Stores, now: Double = Date().timeIntervalSince1970) async throws -> Int {
        guard configuration.expireAfterDays > 0 else { return 0 }
        let removed = try await stores.uploads.removeUploads(before: now - Double(configuration.expireAfterDays) * 86400)
        for file in removed { try? FileManager.default.removeItem(atPath: path(file.token)) }
        return removed.count
    }
}

