import Directory
import Foundation
import NIOConcurrencyHelpers
import Server
import Storage
import Vault
import XMLStream
import XMPPCore

/// The trail of this server process, shared by the modules that record into it.
public final class TrailService: Sendable {
    private let box = NIOLockedValueBox<Trail?>(nil)

    public init() {}

    public var trail: Trail? { box.withLockedValue { $0 } }

    func set(_ trail: Trail) { box.withLockedValue { $0 = trail } }

    /// Appends an entry; a failure is logged, never thrown at the caller (the action happened).
    public func record(actor: String, action: String, details: [String: String] = [:], server: ServerContext) async {
        guard let trail else { return }
        do {
            try await trail.record(actor: actor, action: action, details: details)
        } catch {
            server.logger.critical("cannot append to the audit trail", metadata: ["action": "\(action)", "error": "\(error)"])
        }
    }
}

/// The audit record and the auditors' access to it (docs/audit.md):
///
/// * every routed message (1:1, headline, and each group-chat message once) is recorded with
///   sender, recipients, time and attachment metadata, sealed at rest, independent of users'
///   archives (a retraction there changes nothing here); retention per policy, enforced hourly;
/// * auditors file access requests (named users or rooms, a time range, a reason), a different
///   person with the approver role decides, the grant expires; only then can the auditor search,
///   view and export — within the scope and nothing else. System admins have no access;
/// * every request, decision, view, search and export goes to the hash-chained trail.
///
/// HTTP API under /api/audit/ (HTTP Basic with the person's own account; run the HTTP listener
/// behind TLS): see `AuditAPI`.
public struct AuditModule: ServerModule {
    public let id = "audit"
    let configuration: ServerConfiguration
    let directory: DirectoryRuntime
    let trail: TrailService

    public init(configuration: ServerConfiguration, directory: DirectoryRuntime, trail: TrailService) {
        self.configuration = configuration
        self.directory = directory
        self.trail = trail
    }

    public func register(in registry: inout ModuleRegistry) {
        let configuration = self.configuration
        let trail = self.trail
        let directory = self.directory
        registry.provide(trail)
        registry.onStart { server in
            let key = try Trail.signingKey(in: configuration.keysDirectory, create: true)
            trail.set(Trail(store: server.stores.trail, signingKey: key, anchorsPath: configuration.trailAnchorsFile))
            await trail.record(
                actor: "server", action: "server.start",
                details: ["domain": configuration.domain, "encryption": String(configuration.security.encryption),
                          "audit": String(configuration.security.audit), "configuration": Self.fingerprint(configuration)],
                server: server)
        }
        guard configuration.security.audit else { return }
        registry.onMessageRouted(.low) { event in
            guard let record = Self.record(event.stanza, to: event.toBareKey, from: event.sender, text: event.text)
            else { return }
            event.journalEntries.append(.audit(record))
        }
        registry.onGroupMessage { event in
            guard let record = Self.record(event.stanza, room: event.room, sender: event.sender, text: event.text) else { return }
            event.journalEntries.append(.audit(record))
        }
        registry.addBackgroundTask { server in
            while !Task.isCancelled {
                await Self.enforceRetention(configuration.security, directory: directory, trail: trail, server: server)
                try? await Task.sleep(for: .seconds(3600))
            }
        }
        let api = AuditAPI(configuration: configuration.security, directory: directory, trail: trail)
        registry.addHTTPRoute(prefix: "/api/audit/") { request, server in await api.handle(request, server: server) }
    }

    /// A fingerprint of the effective configuration, so the trail shows when it changed.
    static func fingerprint(_ configuration: ServerConfiguration) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        var safe = configuration
        safe.ldap.bindPassword = safe.ldap.bindPassword == nil ? nil : "(set)"
        guard let data = try? encoder.encode(safe) else { return "" }
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in data {
            hash ^= UInt64(byte)
            hash = hash &* 0x100_0000_01b3
        }
        return String(hash, radix: 16)
    }

    /// Whether a message carries content worth auditing (not a bare chat state or receipt).
    static func hasContent(_ stanza: XMLElement) -> Bool {
        stanza.containsElement {
            $0.name == "body" || $0.name == "subject" || $0.namespace == "jabber:x:oob" || $0.namespace == "urn:xmpp:message-retract:1"
                || $0.namespace == "urn:xmpp:message-moderate:1"
        }
    }

    static func attachments(_ stanza: XMLElement) -> [String] {
        guard stanza.containsElement(where: { $0.namespace == "jabber:x:oob" }) else { return [] }
        return stanza.elements.filter { $0.namespace == "jabber:x:oob" }.compactMap { $0.child("url")?.text }
    }

    /// - Parameters:
    ///   - to: the addressee's bare JID.
    ///   - from: the local session that sent it, if any (else `from` is parsed).
    static func record(_ stanza: XMLElement, to: String, from session: SessionHandle? = nil, text: String? = nil) -> AuditRecord? {
        guard stanza.stanzaType != "error", stanza.stanzaType != "groupchat", hasContent(stanza),
            let sender = session?.bareKey ?? stanza[attribute: "from"].flatMap({ try? JID($0) })?.bare.description
        else { return nil }
        return AuditRecord(
            id: ArchiveIDGenerator.shared.next(), time: Date().timeIntervalSince1970, sender: sender, recipients: [to],
            type: stanza.stanzaType ?? "normal", stanza: text ?? XMLSerializer.string(stanza), attachments: attachments(stanza))
    }

    static func record(_ stanza: XMLElement, room: String, sender: String, text: String? = nil) -> AuditRecord? {
        guard hasContent(stanza) else { return nil }
        return AuditRecord(
            id: ArchiveIDGenerator.shared.next(), time: Date().timeIntervalSince1970, sender: sender, recipients: [room], type: "groupchat", room: room,
            stanza: text ?? XMLSerializer.string(stanza), attachments: attachments(stanza))
    }

    /// Deletes what the retention policy no longer keeps, and says so in the log and the trail.
    static func enforceRetention(
        _ security: ServerConfiguration.Security, directory: DirectoryRuntime, trail: TrailService, server: ServerContext
    ) async {
        let now = Date().timeIntervalSince1970
        do {
            for (unit, days) in security.auditRetentionByUnit.sorted(by: { $0.key < $1.key }) {
                let members = (directory.snapshot.membersByUnit[unit] ?? []).map { "\($0)@\(server.domain)" }
                guard !members.isEmpty else { continue }
                let removed = try await server.stores.audit.purgeAudit(before: now - Double(days) * 86400, users: members)
                if removed > 0 {
                    server.logger.notice("audit retention", metadata: ["unit": "\(unit)", "days": "\(days)", "deleted": "\(removed)"])
                    await trail.record(
                        actor: "server", action: "audit.retention",
                        details: ["unit": unit, "days": String(days), "deleted": String(removed)], server: server)
                }
            }
            guard security.auditRetentionDays > 0 else { return }
            let removed = try await server.stores.audit.purgeAudit(before: now - Double(security.auditRetentionDays) * 86400, users: nil)
            if removed > 0 {
                server.logger.notice("audit retention", metadata: ["days": "\(security.auditRetentionDays)", "deleted": "\(removed)"])
                await trail.record(
                    actor: "server", action: "audit.retention",
                    details: ["days": String(security.auditRetentionDays), "deleted": String(removed)], server: server)
            }
        } catch {
            server.logger.error("audit retention failed", metadata: ["error": "\(error)"])
        }
    }
}
