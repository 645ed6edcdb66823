import Foundation
import SwitchboardTestSupport
import Testing

@testable import LDAP

/// Directory-sync figures on a big generated company. Off by default (slapadd of 50,000
/// entries takes a while); run with
///
///     LDAP_BENCH_USERS=50000 swift test --filter LDAPSyncBenchmark
///
/// It prints timings and checks only counts.
@Suite("LDAP sync benchmark", .serialized, .enabled(if: ProcessInfo.processInfo.environment["LDAP_BENCH_USERS"] != nil))
struct LDAPSyncBenchmarkTests {
    @Test func bigCompany() async throws {
        let users = Int(ProcessInfo.processInfo.environment["LDAP_BENCH_USERS"] ?? "") ?? 50_000
        let script = SlapdServer.companyLDIF.deletingLastPathComponent().appendingPathComponent("make_company.py")
        let ldif = FileManager.default.temporaryDirectory.appendingPathComponent("company-\(users)-\(UUID().uuidString).ldif")
        defer { try? FileManager.default.removeItem(at: ldif) }
        let clock = ContinuousClock()
        var start = clock.now
        let generator = Process()
        generator.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        generator.arguments = ["python3", script.path, "--users", String(users), "-o", ldif.path]
        try generator.run()
        generator.waitUntilExit()
        #expect(generator.terminationStatus == 0)
        print("bench: generated \(users) users in \(clock.now - start)")

        start = clock.now
        let slapd = try await SlapdServer.start(ldif: ldif)
        defer { slapd.stop() }
        print("bench: slapadd + start in \(clock.now - start)")

        let connection = try await LDAPConnection.connect(try LDAPConfiguration(url: slapd.url, operationTimeout: .seconds(120)))
        try await connection.bind(dn: slapd.adminDN, password: slapd.adminPassword)
        let filter = try LDAPFilter("(objectClass=inetOrgPerson)")
        let base = "ou=Departments,dc=example,dc=com"

        start = clock.now
        var streamed = 0
        try await connection.search(base: base, filter: filter, pageSize: 1000) { _ in streamed += 1 }
        print("bench: paged search (1000 per page, streamed) of \(streamed) entries in \(clock.now - start)")
        #expect(streamed == users)

        start = clock.now
        let full = try await connection.syncRefresh(base: base, filter: filter, cookie: nil)
        print("bench: refreshOnly full load of \(full.changes.count) entries in \(clock.now - start)")
        #expect(full.changes.count == users)

        let victims = full.changes.prefix(10).map(\.entry.dn)
        try await slapd.modify(
            ldif: victims.map { "dn: \($0)\nchangetype: modify\nreplace: title\ntitle: benchmark\n" }.joined(separator: "\n"))
        start = clock.now
        let delta = try await connection.syncRefresh(base: base, filter: filter, cookie: full.cookie)
        print("bench: refreshOnly incremental (10 changed) in \(clock.now - start): \(delta.changes.count) changes")
        #expect(Set(delta.changes.map(\.entry.dn)) == Set(victims))
        await connection.close()
    }
}
