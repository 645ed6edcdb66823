import Directory
import Foundation
import Server
import Storage
import XMLStream
import XMPPCore

/// The auditors' HTTP API (JSON; errors as problem details). Every call authenticates the
/// person with HTTP Basic and their own account password, then checks their roles in the
/// directory:
///
///     POST /api/audit/requests                      auditor: {users, rooms, from, to, reason} → 201
///     GET  /api/audit/requests[?status=pending]     auditor: own requests; approver, security-admin: all
///     POST /api/audit/requests/ID/approve           approver (not the requester): {hours?, note?}
///     POST /api/audit/requests/ID/reject            approver: {note?}
///     GET  /api/audit/requests/ID/messages[?q=TEXT&after=ID&limit=N]   the requester, approved, unexpired
///     GET  /api/audit/requests/ID/export?format=json|text              idem, everything in scope
///
/// Nothing outside an approved, unexpired scope is ever read; system admins get 403.
struct AuditAPI: Sendable {
    let configuration: ServerConfiguration.Security
    let directory: DirectoryRuntime
    let trail: TrailService

    struct Failure: Error {
        let response: HTTPResponse
        static func status(_ status: Int, _ title: String, _ detail: String) -> Failure {
            Failure(response: .problem(status, title, detail))
        }
    }

    func handle(_ request: HTTPRequest, server: ServerContext) async -> HTTPResponse {
        do {
            let person = try await authenticate(request, server: server)
            let parts = request.path.split(separator: "/").map(String.init)  // ["api", "audit", "requests", …]
            guard parts.count >= 3, parts[0] == "api", parts[1] == "audit", parts[2] == "requests" else {
                throw Failure.status(404, "Not Found", "no resource at \(request.path)")
            }
            switch (request.method, parts.count) {
            case ("POST", 3): return try await create(request, person: person, server: server)
            case ("GET", 3): return try await list(request, person: person, server: server)
            case ("POST", 5) where parts[4] == "approve" || parts[4] == "reject":
                return try await decide(request, id: parts[3], approve: parts[4] == "approve", person: person, server: server)
            case ("GET", 5) where parts[4] == "messages":
                return try await messages(request, id: parts[3], person: person, server: server, export: false)
            case ("GET", 5) where parts[4] == "export":
                return try await messages(request, id: parts[3], person: person, server: server, export: true)
            default:
                throw Failure.status(404, "Not Found", "no resource at \(request.method) \(request.path)")
            }
        } catch let failure as Failure {
            return failure.response
        } catch {
            server.logger.error("audit API failed", metadata: ["error": "\(error)"])
            return .problem(500, "Internal Server Error", "the request could not be completed; see the server log")
        }
    }

    // MARK: - Who

    struct Person {
        let username: String
        let permissions: Set<String>
        var actor: String { "xmpp:\(username)" }
    }

    private func authenticate(_ request: HTTPRequest, server: ServerContext) async throws -> Person {
        guard let (name, password) = request.basicCredentials else {
            throw Failure.status(401, "Unauthorized", "authenticate with your account (HTTP Basic)")
        }
        let username = (try? JID(name)).flatMap { $0.localpart } ?? name.lowercased()
        if server.passwordRetryAfter(account: username) != nil {
            throw Failure.status(429, "Too Many Requests", "too many failed logins; wait and try again")
        }
        if let failure = try await server.verifyPassword(username, password) {
            if failure.condition == .notAuthorized { server.recordPasswordFailure(account: username) }
            if failure.condition == .temporaryAuthFailure { throw Failure.status(503, "Service Unavailable", failure.text ?? "try again") }
            throw Failure.status(401, "Unauthorized", "wrong user name or password, or the account is disabled")
        }
        return Person(username: username, permissions: directory.snapshot.permissions(of: username))
    }

    private func require(_ person: Person, _ permission: String) throws {
        guard person.permissions.contains(permission) else {
            throw Failure.status(403, "Forbidden", "this needs the permission \(permission) (a role such as auditor or approver)")
        }
    }

    // MARK: - Requests

    struct NewRequest: Decodable {
        var users: [String]?
        var rooms: [String]?
        var from: String
        var to: String
        var reason: String
    }

    struct Decision: Decodable {
        var hours: Int?
        var note: String?
    }

    private static func date(_ text: String, field: String) throws -> Double {
        let formatter = ISO8601DateFormatter()
        if let date = formatter.date(from: text) { return date.timeIntervalSince1970 }
        formatter.formatOptions = [.withFullDate]
        if let date = formatter.date(from: text) { return date.timeIntervalSince1970 }
        throw Failure.status(400, "Bad Request", "\(field) must be an ISO 8601 date or time (e.g. 2026-11-01 or 2026-11-01T08:00:00Z)")
    }

    private func decode<T: Decodable>(_ type: T.Type, _ request: HTTPRequest) throws -> T {
        do {
            return try JSONDecoder().decode(type, from: Data(request.body.isEmpty ? Array("{}".utf8) : request.body))
        } catch {
            throw Failure.status(400, "Bad Request", "the body must be JSON: \(error)")
        }
    }

    private func create(_ request: HTTPRequest, person: Person, server: ServerContext) async throws -> HTTPResponse {
        try require(person, "audit.request")
        let body = try decode(NewRequest.self, request)
        let start = try Self.date(body.from, field: "from")
        let end = try Self.date(body.to, field: "to")
        guard start < end else { throw Failure.status(400, "Bad Request", "from must be before to") }
        guard end - start <= Double(configuration.maxRequestDays) * 86400 else {
            throw Failure.status(400, "Bad Request", "a request may cover at most \(configuration.maxRequestDays) days")
        }
        let reason = body.reason.trimmingCharacters(in: .whitespacesAndNewlines)
        guard !reason.isEmpty, reason.utf8.count <= 4000 else { throw Failure.status(400, "Bad Request", "give a reason (at most 4000 bytes)") }
        var users: [String] = []
        for name in body.users ?? [] {
            guard let jid = try? (name.contains("@") ? JID(name) : JID(localpart: name, domainpart: server.domain, resourcepart: nil)),
                jid.localpart != nil, try await server.accountExists(jid.bare)
            else { throw Failure.status(400, "Bad Request", "no user \(name)") }
            users.append(jid.bare.description)
        }
        var rooms: [String] = []
        for name in body.rooms ?? [] {
            guard let jid = try? JID(name), jid.localpart != nil else { throw Failure.status(400, "Bad Request", "a room is a bare JID (got \(name))") }
            rooms.append(jid.bare.description)
        }
        guard !users.isEmpty || !rooms.isEmpty else { throw Failure.status(400, "Bad Request", "name at least one user or room") }
        guard users.count + rooms.count <= 100 else { throw Failure.status(400, "Bad Request", "at most 100 users and rooms per request") }
        var access = AccessRequest(
            auditor: person.username, scope: AuditScope(users: users, rooms: rooms, start: start, end: end), reason: reason,
            createdAt: Date().timeIntervalSince1970)
        access.id = try await server.stores.accessRequests.createAccessRequest(access)
        await trail.record(
            actor: person.actor, action: "audit.request",
            details: ["request": String(access.id), "users": users.joined(separator: ","), "rooms": rooms.joined(separator: ","),
                      "from": body.from, "to": body.to, "reason": reason],
            server: server)
        return .json(access, status: 201)
    }

    private func list(_ request: HTTPRequest, person: Person, server: ServerContext) async throws -> HTTPResponse {
        let status = try request.query["status"].map { text -> AccessRequest.Status in
            guard let status = AccessRequest.Status(rawValue: text) else {
                throw Failure.status(400, "Bad Request", "status is pending, approved, rejected or expired")
            }
            return status
        }
        let all = try await server.stores.accessRequests.accessRequests(status: status, limit: 500).map(expire)
        if person.permissions.contains("audit.approve") || person.permissions.contains("audit.verify") {
            return .json(all)
        }
        try require(person, "audit.request")
        return .json(all.filter { $0.auditor == person.username })
    }

    /// Approved requests past their end read as expired.
    private func expire(_ request: AccessRequest) -> AccessRequest {
        var request = request
        if request.status == .approved, let end = request.expiresAt, end < Date().timeIntervalSince1970 { request.status = .expired }
        return request
    }

    private func load(_ id: String, server: ServerContext) async throws -> AccessRequest {
        guard let number = Int64(id), let request = try await server.stores.accessRequests.accessRequest(number) else {
            throw Failure.status(404, "Not Found", "no access request \(id)")
        }
        return expire(request)
    }

    private func decide(_ request: HTTPRequest, id: String, approve: Bool, person: Person, server: ServerContext) async throws -> HTTPResponse {
        try require(person, "audit.approve")
        var access = try await load(id, server: server)
        guard access.auditor != person.username else {
            throw Failure.status(403, "Forbidden", "a request must be decided by someone other than the auditor who filed it")
        }
        guard access.status == .pending else { throw Failure.status(409, "Conflict", "the request is already \(access.status.rawValue)") }
        let body = try decode(Decision.self, request)
        let hours = min(max(1, body.hours ?? configuration.grantHours), configuration.grantHours)
        let now = Date().timeIntervalSince1970
        access.status = approve ? .approved : .rejected
        access.approver = person.username
        access.decidedAt = now
        access.expiresAt = approve ? now + Double(hours) * 3600 : nil
        access.decisionNote = body.note
        guard try await server.stores.accessRequests.decideAccessRequest(access) else {
            throw Failure.status(409, "Conflict", "the request was decided meanwhile")
        }
        await trail.record(
            actor: person.actor, action: approve ? "audit.approve" : "audit.reject",
            details: ["request": id, "auditor": access.auditor, "hours": approve ? String(hours) : "", "note": body.note ?? ""],
            server: server)
        return .json(access)
    }

    // MARK: - Reading within scope

    struct Message: Encodable {
        let id: Int64
        let time: String
        let from: String
        let to: [String]
        let type: String
        let room: String?
        let body: String?
        let attachments: [String]
    }

    private func messages(_ request: HTTPRequest, id: String, person: Person, server: ServerContext, export: Bool) async throws -> HTTPResponse {
        try require(person, "audit.read")
        let access = try await load(id, server: server)
        guard access.auditor == person.username else {
            throw Failure.status(403, "Forbidden", "only the auditor who filed request \(id) may use it")
        }
        guard access.status == .approved else {
            throw Failure.status(403, "Forbidden", "request \(id) is \(access.status.rawValue), not approved")
        }
        await server.journal.applied()
        let query = request.query["q"].map { $0.lowercased() }.flatMap { $0.isEmpty ? nil : $0 }
        let limit = export ? 100_000 : min(max(1, Int(request.query["limit"] ?? "") ?? 100), 1000)
        var after = Int64(request.query["after"] ?? "") ?? 0
        var found: [Message] = []
        let formatter = ISO8601DateFormatter()
        // Decrypt and scan, page by page, only within the approved scope.
        scan: while found.count < limit {
            let page = try await server.stores.audit.auditRecords(in: access.scope, afterID: after, limit: 1000)
            if page.isEmpty { break }
            for record in page {
                after = record.id
                let body = (try? XMLElement.parse(record.stanza))?.child("body")?.text
                if let query, !(body?.lowercased().contains(query) ?? false) { continue }
                found.append(
                    Message(
                        id: record.id, time: formatter.string(from: Date(timeIntervalSince1970: record.time)), from: record.sender,
                        to: record.recipients, type: record.type, room: record.room, body: body, attachments: record.attachments))
                if found.count >= limit { break scan }
            }
        }
        let format = request.query["format"] ?? "json"
        await trail.record(
            actor: person.actor, action: export ? "audit.export" : (query == nil ? "audit.view" : "audit.search"),
            details: ["request": id, "results": String(found.count), "query": query ?? "", "format": export ? format : ""],
            server: server)
        if export, format == "text" {
            var text = "Audit export, request \(id) by \(access.auditor), approved by \(access.approver ?? "?")\n"
            text += "Scope: \(access.scope.users + access.scope.rooms) from \(formatter.string(from: Date(timeIntervalSince1970: access.scope.start))) "
            text += "to \(formatter.string(from: Date(timeIntervalSince1970: access.scope.end)))\nReason: \(access.reason)\n\n"
            for message in found {
                text += "[\(message.time)] \(message.from) → \(message.to.joined(separator: ", "))"
                if let room = message.room { text += " (in \(room))" }
                text += ": \(message.body ?? "")"
                if !message.attachments.isEmpty { text += " [attachments: \(message.attachments.joined(separator: ", "))]" }
                text += "\n"
            }
            var response = HTTPResponse.text(text)
            response.headers.append(("Content-Disposition", "attachment; filename=\"audit-\(id).txt\""))
            return response
        }
        if export, format != "json" { throw Failure.status(400, "Bad Request", "format is json or text") }
        return .json(found)
    }
}
