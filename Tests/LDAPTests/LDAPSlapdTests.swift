import Foundation
import Logging
import NIOCore
import NIOPosix
import SwitchboardTestSupport
import Testing

@testable import LDAP

/// The client against a real OpenLDAP slapd loaded with Tests/Fixtures/ldap/company.ldif.
///
/// Serialized: every test starts its own slapd, and on two cores a dozen of them starting at
/// once would turn the timing assertions (timeouts, failure detection) into load tests.
@Suite("LDAP client against slapd", .serialized)
struct LDAPSlapdTests {
    static let departments = "ou=Departments,dc=example,dc=com"
    static let zhangweiDN = "uid=zhangwei,ou=存储组,ou=平台部,ou=研发中心,ou=Departments,dc=example,dc=com"
    let company = CompanyLDIF.shared

    private func withSlapd<T>(
        tls: Bool = false, sessionLog: Bool = true, sizeLimit: Int? = nil,
        certificateNames: [String] = ["127.0.0.1", "localhost"], _ body: (SlapdServer) async throws -> T
    ) async throws -> T {
        let slapd = try await SlapdServer.start(
            ldif: SlapdServer.companyLDIF, tls: tls, sessionLog: sessionLog, sizeLimit: sizeLimit,
            certificateNames: certificateNames)
        defer { slapd.stop() }
        return try await body(slapd)
    }

    private func withConnection<T>(
        _ url: String, configure: (inout LDAPConfiguration) -> Void = { _ in }, _ body: (LDAPConnection) async throws -> T
    ) async throws -> T {
        var configuration = try LDAPConfiguration(url: url, connectTimeout: .seconds(5), operationTimeout: .seconds(10))
        configure(&configuration)
        let connection = try await LDAPConnection.connect(configuration)
        do {
            let result = try await body(connection)
            await connection.close()
            return result
        } catch {
            await connection.close()
            throw error
        }
    }

    // MARK: Bind

    @Test func bindWithTheRightPassword() async throws {
        try await withSlapd { slapd in
            try await withConnection(slapd.url) { connection in
                try await connection.bind(dn: Self.zhangweiDN, password: "secret-zhangwei")
                try await connection.bind(dn: slapd.adminDN, password: slapd.adminPassword)
            }
        }
    }

    @Test func bindWithAWrongPasswordIsInvalidCredentials() async throws {
        try await withSlapd { slapd in
            try await withConnection(slapd.url) { connection in
                let error = await #expect(throws: LDAPError.self) {
                    try await connection.bind(dn: Self.zhangweiDN, password: "secret-zhangwei2")
                }
                #expect(error?.isInvalidCredentials == true)
                // An unknown DN is reported the same way (no account enumeration).
                let unknown = await #expect(throws: LDAPError.self) {
                    try await connection.bind(dn: "uid=nobody,ou=Departments,dc=example,dc=com", password: "x")
                }
                #expect(unknown?.isInvalidCredentials == true)
                // The connection stays usable after a failed bind.
                try await connection.bind(dn: Self.zhangweiDN, password: "secret-zhangwei")
            }
        }
    }

    @Test func emptyPasswordIsRefusedBeforeReachingTheServer() async throws {
        try await withSlapd { slapd in
            try await withConnection(slapd.url) { connection in
                let error = await #expect(throws: LDAPError.self) {
                    try await connection.bind(dn: Self.zhangweiDN, password: "")
                }
                guard case .invalidArgument = error else {
                    Issue.record("expected .invalidArgument, got \(String(describing: error))")
                    return
                }
                // Why: sent anyway, the server (like AD, here `allow bind_anon_dn`) answers an
                // unauthenticated bind with success, which a login check would take for a
                // correct password.
                let raw = try await connection.perform(.bindRequest(version: 3, dn: Self.zhangweiDN, password: []))
                guard case .bindResponse(let result) = raw.last?.operation else {
                    Issue.record("no BindResponse")
                    return
                }
                #expect(result.code == LDAPResultCode.success)
            }
        }
    }

    // MARK: Search and filters

    @Test func equalityWithAChineseValue() async throws {
        try await withSlapd { slapd in
            try await withConnection(slapd.url) { connection in
                let entries = try await connection.search(base: slapd.baseDN, filter: "(cn=张伟)")
                let expected = company.people.filter { $0.values("cn").contains("张伟") }
                #expect(entries.count == expected.count)
                #expect(Set(entries.map(\.dn)) == Set(expected.map(\.dn)))
                let zhangwei = try #require(entries.first { $0.first("uid") == "zhangwei" })
                #expect(zhangwei.dn == Self.zhangweiDN)
                #expect(zhangwei["cn"] == ["张伟"] && zhangwei.first("displayName") == "张伟" && zhangwei.first("sn") == "张")
                #expect(zhangwei["userPassword"].isEmpty, "ACL hides passwords from anonymous searches")
            }
        }
    }

    @Test func substringFilters() async throws {
        try await withSlapd { slapd in
            try await withConnection(slapd.url) { connection in
                let zhang = try await connection.search(base: slapd.baseDN, filter: "(uid=zhang*)", attributes: ["uid"])
                let expected = company.people.filter { $0.values("uid")[0].hasPrefix("zhang") }
                #expect(zhang.count == expected.count && zhang.count > 1)
                #expect(zhang.allSatisfy { $0.first("uid")?.hasPrefix("zhang") == true })

                let chinese = try await connection.search(base: Self.departments, filter: "(cn=*伟)", attributes: ["cn"])
                let expectedChinese = company.departmentPeople.filter { $0.values("cn")[0].hasSuffix("伟") }
                #expect(chinese.count == expectedChinese.count && !chinese.isEmpty)
            }
        }
    }

    @Test func andOrNot() async throws {
        try await withSlapd { slapd in
            try await withConnection(slapd.url) { connection in
                let filter = try LDAPFilter(
                    "(&(objectClass=inetOrgPerson)(|(title=会计)(title=出纳)(title=工程师))(!(employeeType=disabled)))")
                let entries = try await connection.search(base: slapd.baseDN, filter: filter, attributes: ["title"])
                let expected = company.people.filter {
                    ["会计", "出纳", "工程师"].contains($0.values("title")[0]) && !$0.values("employeeType").contains("disabled")
                }
                #expect(entries.count == expected.count && entries.count > 5)
                #expect(Set(entries.map(\.dn)) == Set(expected.map(\.dn)))

                let disabled = try await connection.search(base: slapd.baseDN, filter: "(employeeType=disabled)")
                #expect(disabled.count == company.people.filter { $0.values("employeeType").contains("disabled") }.count)
                #expect(disabled.count >= 3)
            }
        }
    }

    @Test func extensibleMatch() async throws {
        try await withSlapd { slapd in
            try await withConnection(slapd.url) { connection in
                let exact = try await connection.search(base: slapd.baseDN, filter: "(cn:caseExactMatch:=张伟)")
                #expect(exact.contains { $0.dn == Self.zhangweiDN })
                // dnAttributes: every entry with ou=存储组 in its DN (the unit and its members).
                let inUnit = try await connection.search(base: slapd.baseDN, filter: "(ou:dn:=存储组)", attributes: ["1.1"])
                let expected = company.entries.filter { $0.dn.contains("ou=存储组,") }
                #expect(Set(inUnit.map(\.dn)) == Set(expected.map(\.dn)))
                #expect(inUnit.count > 2)
            }
        }
    }

    @Test func pagedSearchReturnsEveryUserBeyondTheSizeLimit() async throws {
        // The server stops ordinary searches at 100 entries; paging must get all of them.
        try await withSlapd(sizeLimit: 100) { slapd in
            try await withConnection(slapd.url) { connection in
                let unpaged = await #expect(throws: LDAPError.self) {
                    try await connection.search(base: Self.departments, filter: "(objectClass=inetOrgPerson)")
                }
                #expect(unpaged?.resultCode == LDAPResultCode.sizeLimitExceeded)

                let clock = ContinuousClock()
                let start = clock.now
                let users = try await connection.search(
                    base: Self.departments, filter: "(objectClass=inetOrgPerson)", pageSize: 50)
                let elapsed = clock.now - start
                print("paged search: \(users.count) entries in pages of 50 took \(elapsed)")
                #expect(users.count == company.departmentPeople.count)
                #expect(users.count == 300)
                #expect(Set(users.map(\.dn)).count == users.count, "no entry twice")

                // Streaming: the same entries one at a time.
                var streamed = 0
                try await connection.search(
                    base: Self.departments, filter: .equality("objectClass", "inetOrgPerson"), attributes: ["uid"], pageSize: 64
                ) { entry in
                    if entry.first("uid") != nil { streamed += 1 }
                }
                #expect(streamed == 300)

                // A caller's size limit below the server's is not an error.
                let few = try await connection.search(base: Self.departments, filter: "(objectClass=inetOrgPerson)", sizeLimit: 7)
                #expect(few.count == 7)
            }
        }
    }

    @Test func concurrentOperationsAreMultiplexed() async throws {
        try await withSlapd { slapd in
            try await withConnection(slapd.url) { connection in
                let uids = Array(company.departmentPeople.prefix(20).map { $0.values("uid")[0] })
                try await withThrowingTaskGroup(of: (String, [LDAPEntry]).self) { group in
                    for uid in uids {
                        group.addTask {
                            (uid, try await connection.search(base: slapd.baseDN, filter: .equality("uid", uid), attributes: ["uid"]))
                        }
                    }
                    group.addTask { ("*", try await connection.search(base: Self.departments, filter: "(objectClass=inetOrgPerson)", pageSize: 30)) }
                    for try await (uid, entries) in group {
                        if uid == "*" {
                            #expect(entries.count == 300)
                        } else {
                            #expect(entries.map { $0.first("uid") } == [uid])
                        }
                    }
                }
            }
        }
    }

    @Test func searchErrorsCarryTheResult() async throws {
        try await withSlapd { slapd in
            try await withConnection(slapd.url) { connection in
                let error = await #expect(throws: LDAPError.self) {
                    try await connection.search(base: "ou=Nowhere,dc=example,dc=com", filter: "(objectClass=*)")
                }
                #expect(error?.isNoSuchObject == true)
                guard case .result(_, _, _, let matchedDN) = error else { return }
                #expect(matchedDN == "dc=example,dc=com")
            }
        }
    }

    // MARK: TLS

    @Test func startTLSAndLDAPSWithTheFixtureCA() async throws {
        try await withSlapd(tls: true) { slapd in
            let caPath = try #require(slapd.caPath)
            try await withConnection(slapd.url, configure: { $0.startTLS = true; $0.caCertificatePath = caPath }) { connection in
                try await connection.bind(dn: Self.zhangweiDN, password: "secret-zhangwei")
                #expect(try await connection.search(base: slapd.baseDN, filter: "(uid=zhangwei)").count == 1)
            }
            let ldaps = try #require(slapd.ldapsURL)
            try await withConnection(ldaps, configure: { $0.caCertificatePath = caPath }) { connection in
                try await connection.bind(dn: Self.zhangweiDN, password: "secret-zhangwei")
                #expect(try await connection.search(base: slapd.baseDN, filter: "(cn=张伟)").contains { $0.dn == Self.zhangweiDN })
            }
            // The certificate names 127.0.0.1 and localhost; a DNS name check works as well.
            let localhost = ldaps.replacingOccurrences(of: "127.0.0.1", with: "localhost")
            try await withConnection(localhost, configure: { $0.caCertificatePath = caPath }) { connection in
                try await connection.bind(dn: slapd.adminDN, password: slapd.adminPassword)
            }
        }
    }

    @Test func hostnameVerification() async throws {
        // A certificate that names only localhost, served on 127.0.0.1.
        try await withSlapd(tls: true, certificateNames: ["localhost"]) { slapd in
            let caPath = try #require(slapd.caPath)
            let ldaps = try #require(slapd.ldapsURL)
            let error = await #expect(throws: LDAPError.self) {
                try await LDAPConnection.connect(try LDAPConfiguration(url: ldaps, caCertificatePath: caPath, connectTimeout: .seconds(5)))
            }
            if case .tlsFailure = error {} else { Issue.record("expected .tlsFailure, got \(String(describing: error))") }
            // The documented escape hatch for servers reached by an address their certificate lacks.
            try await withConnection(ldaps, configure: { $0.caCertificatePath = caPath; $0.verifyHostname = false }) { connection in
                try await connection.bind(dn: slapd.adminDN, password: slapd.adminPassword)
            }
            // The name it does carry verifies.
            try await withConnection(ldaps.replacingOccurrences(of: "127.0.0.1", with: "localhost"), configure: { $0.caCertificatePath = caPath }) {
                connection in
                try await connection.bind(dn: slapd.adminDN, password: slapd.adminPassword)
            }
        }
    }

    @Test func untrustedCAIsATLSFailure() async throws {
        try await withSlapd(tls: true) { slapd in
            let other = slapd.directory.appendingPathComponent("other-ca.pem").path
            try TestCertificateAuthority.writeUnrelatedCA(to: other)
            let ldaps = try #require(slapd.ldapsURL)
            for (url, startTLS) in [(ldaps, false), (slapd.url, true)] {
                var configuration = try LDAPConfiguration(url: url, startTLS: startTLS, caCertificatePath: other, connectTimeout: .seconds(5))
                configuration.verifyHostname = true
                let error = await #expect(throws: LDAPError.self) { try await LDAPConnection.connect(configuration) }
                guard case .tlsFailure = error else {
                    Issue.record("expected .tlsFailure for \(url) (startTLS \(startTLS)), got \(String(describing: error))")
                    continue
                }
            }
            // Without a CA file the system roots do not know the fixture's CA either.
            let error = await #expect(throws: LDAPError.self) {
                try await LDAPConnection.connect(try LDAPConfiguration(url: ldaps, connectTimeout: .seconds(5)))
            }
            if case .tlsFailure = error {} else { Issue.record("expected .tlsFailure, got \(String(describing: error))") }
        }
    }

    // MARK: RFC 4533 content synchronisation

    @Test func refreshOnlyReportsExactlyTheChanges() async throws {
        try await withSlapd { slapd in
            try await withConnection(slapd.url) { connection in
                try await connection.bind(dn: slapd.adminDN, password: slapd.adminPassword)
                let filter = try LDAPFilter("(objectClass=inetOrgPerson)")
                let first = try await connection.syncRefresh(base: slapd.baseDN, filter: filter, attributes: ["*", "entryUUID"], cookie: nil)
                #expect(first.changes.count == company.people.count)
                #expect(first.deletedEntryUUIDs.isEmpty && first.isCompleteContent)
                let cookie = try #require(first.cookie)
                #expect(!cookie.isEmpty)
                // The Sync State UUID is the entry's entryUUID.
                let zhangwei = try #require(first.changes.first { $0.entry.dn == Self.zhangweiDN })
                #expect(zhangwei.entry.first("entryUUID")?.lowercased() == zhangwei.entryUUID.uuidString.lowercased())

                let people = company.departmentPeople
                let retitled = people[10].dn
                let moved = people[20]
                let deleted = people[30].dn
                let movedUID = moved.values("uid")[0]
                let target = "ou=财务部,ou=Departments,dc=example,dc=com"
                let newDN = "uid=\(movedUID),\(target)"
                let deletedUUID = try #require(first.changes.first { $0.entry.dn == deleted }?.entryUUID)
                let movedUUID = try #require(first.changes.first { $0.entry.dn == moved.dn }?.entryUUID)
                try await slapd.modify(
                    ldif: """
                        dn: uid=newhire,\(Self.departments)
                        changetype: add
                        objectClass: inetOrgPerson
                        uid: newhire
                        cn: 新员工
                        sn: 新
                        title: 实习生

                        dn: \(retitled)
                        changetype: modify
                        replace: title
                        title: 首席架构师

                        dn: \(moved.dn)
                        changetype: modrdn
                        newrdn: uid=\(movedUID)
                        deleteoldrdn: 1
                        newsuperior: \(target)

                        dn: \(deleted)
                        changetype: delete

                        """)

                let second = try await connection.syncRefresh(base: slapd.baseDN, filter: filter, cookie: cookie)
                #expect(second.refreshDeletes, "with a session log slapd reports deletions explicitly")
                #expect(!second.refreshRequired)
                #expect(Set(second.changes.map(\.entry.dn)) == ["uid=newhire,\(Self.departments)", retitled, newDN])
                #expect(second.deletedEntryUUIDs == [deletedUUID])
                #expect(second.changes.first { $0.entry.dn == retitled }?.entry.first("title") == "首席架构师")
                #expect(second.changes.first { $0.entry.dn == newDN }?.entryUUID == movedUUID, "a rename keeps the UUID")
                #expect(second.changes.first { $0.entry.dn.hasPrefix("uid=newhire,") }?.entry.first("cn") == "新员工")
                let nextCookie = try #require(second.cookie)
                #expect(nextCookie != cookie)

                // Nothing changed since: an empty refresh.
                let third = try await connection.syncRefresh(base: slapd.baseDN, filter: filter, cookie: nextCookie)
                #expect(third.changes.isEmpty && third.deletedEntryUUIDs.isEmpty)

                // Partial sync: one subtree only.
                let contractors = try await connection.syncRefresh(base: "ou=Contractors,dc=example,dc=com", filter: filter, cookie: nil)
                #expect(contractors.changes.count == company.people.filter { $0.dn.hasSuffix("ou=Contractors,dc=example,dc=com") }.count)
                #expect(contractors.changes.count == 10)
            }
        }
    }

    @Test func refreshOnlyWithoutSessionLogUsesThePresentPhase() async throws {
        try await withSlapd(sessionLog: false) { slapd in
            try await withConnection(slapd.url) { connection in
                try await connection.bind(dn: slapd.adminDN, password: slapd.adminPassword)
                let filter = try LDAPFilter("(objectClass=inetOrgPerson)")
                let first = try await connection.syncRefresh(base: Self.departments, filter: filter, cookie: nil)
                #expect(first.changes.count == 300 && first.isCompleteContent)
                let people = company.departmentPeople
                let deleted = try #require(first.changes.first { $0.entry.dn == people[5].dn }?.entryUUID)
                let retitled = people[6].dn
                try await slapd.modify(
                    ldif: """
                        dn: \(people[5].dn)
                        changetype: delete

                        dn: \(retitled)
                        changetype: modify
                        replace: title
                        title: 顾问

                        """)
                let second = try await connection.syncRefresh(base: Self.departments, filter: filter, cookie: first.cookie)
                // No explicit deletions: the server lists what still exists, the client infers the rest.
                #expect(!second.refreshDeletes && second.isCompleteContent)
                #expect(second.deletedEntryUUIDs.isEmpty)
                #expect(second.changes.map(\.entry.dn) == [retitled])
                let remaining = Set(second.presentEntryUUIDs).union(second.changes.map(\.entryUUID))
                #expect(remaining.count == 299)
                let before = Set(first.changes.map(\.entryUUID))
                #expect(before.subtracting(remaining) == [deleted])
            }
        }
    }

    // MARK: Failures

    @Test func aHungServerTimesOut() async throws {
        try await withSlapd { slapd in
            try await withConnection(slapd.url, configure: { $0.operationTimeout = .seconds(2) }) { connection in
                try await connection.bind(dn: slapd.adminDN, password: slapd.adminPassword)
                slapd.suspend()
                let clock = ContinuousClock()
                let start = clock.now
                let error = await #expect(throws: LDAPError.self) {
                    try await connection.search(base: slapd.baseDN, filter: "(uid=zhangwei)")
                }
                let elapsed = clock.now - start
                slapd.resume()
                #expect(error == .timeout)
                // Bounds loose enough for a loaded CI machine, far from "never" or the 10 s default.
                #expect(elapsed >= .milliseconds(1_900) && elapsed < .seconds(9), "timed out after \(elapsed)")
                // The search was abandoned; the connection still works once the server is back.
                #expect(try await connection.search(base: slapd.baseDN, filter: "(uid=zhangwei)").count == 1)
            }
        }
    }

    @Test func cancellingATaskAbandonsItsOperation() async throws {
        try await withSlapd { slapd in
            try await withConnection(slapd.url, configure: { $0.operationTimeout = .seconds(30) }) { connection in
                slapd.suspend()
                let search = Task { try await connection.search(base: slapd.baseDN, filter: "(objectClass=*)") }
                try await Task.sleep(for: .milliseconds(100))
                let clock = ContinuousClock()
                let start = clock.now
                search.cancel()
                await #expect(throws: CancellationError.self) { _ = try await search.value }
                #expect(clock.now - start < .seconds(9), "cancelled at once, not at the 30 s timeout")
                slapd.resume()
                #expect(try await connection.search(base: slapd.baseDN, filter: "(uid=zhangwei)").count == 1)
            }
        }
    }

    @Test func refusedConnectionIsConnectionFailed() async throws {
        // The port of a slapd that has exited: nothing listens there any more.
        let slapd = try await SlapdServer.start(ldif: SlapdServer.companyLDIF)
        let port = slapd.port
        await slapd.stopAndWait()
        let error = await #expect(throws: LDAPError.self) {
            try await LDAPConnection.connect(try LDAPConfiguration(url: "ldap://127.0.0.1:\(port)", connectTimeout: .seconds(5)))
        }
        guard case .connectionFailed = error else {
            Issue.record("expected .connectionFailed, got \(String(describing: error))")
            return
        }
    }

    @Test func operationsAfterCloseFail() async throws {
        try await withSlapd { slapd in
            let connection = try await LDAPConnection.connect(try LDAPConfiguration(url: slapd.url))
            await connection.close()
            #expect(!connection.isActive)
            await #expect(throws: LDAPError.closed) { try await connection.bind(dn: slapd.adminDN, password: slapd.adminPassword) }
        }
    }

    @Test func serverGoingAwayFailsInFlightOperations() async throws {
        try await withSlapd { slapd in
            let connection = try await LDAPConnection.connect(try LDAPConfiguration(url: slapd.url, operationTimeout: .seconds(20)))
            try await connection.bind(dn: slapd.adminDN, password: slapd.adminPassword)
            slapd.suspend()
            let search = Task { try await connection.search(base: slapd.baseDN, filter: "(objectClass=*)") }
            try await Task.sleep(for: .milliseconds(200))
            let clock = ContinuousClock()
            let start = clock.now
            slapd.crash()
            await #expect(throws: LDAPError.closed) { _ = try await search.value }
            #expect(clock.now - start < .seconds(9), "failed when the socket closed, not at the 20 s timeout")
            #expect(!connection.isActive)
            await connection.close()
        }
    }
}
