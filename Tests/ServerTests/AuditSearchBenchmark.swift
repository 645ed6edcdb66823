import Foundation
import SQLiteStorage
import Storage
import Testing
import Vault
import XMLStream

/// A benchmark, not a test: run with `AUDIT_BENCH_MESSAGES=1000000 swift test -c release --filter
/// AuditSearchBenchmark` to print how long an approved auditor's search takes over that many
/// sealed audit records (one user, one month). Skipped otherwise; asserts nothing on timing.
@Suite struct AuditSearchBenchmark {
    static let messages = Int(ProcessInfo.processInfo.environment["AUDIT_BENCH_MESSAGES"] ?? "") ?? 0

    @Test(.enabled(if: messages > 0)) func searchOneUserOneMonth() async throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("sb-audit-bench-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        let plain = try SQLiteStores(directory: path)
        let ring = try await KeyRing.open(master: try MasterKey.fromFile(path + "/keys/master.key", create: true), store: plain)
        let stores = plain.encrypted(with: ring)
        // 1,000 users over a year; user0 (a busy manager) is in 5% of all messages.
        let year = 365.0 * 86400
        let start = Date().timeIntervalSince1970 - year
        var generator = SystemRandomNumberGenerator()
        let clock = ContinuousClock.now
        var batch: [AuditRecord] = []
        for index in 0..<Self.messages {
            let sender = index % 20 == 0 ? "user0@example.com" : "user\(Int.random(in: 1..<1000, using: &generator))@example.com"
            let recipient = "user\(Int.random(in: 1..<1000, using: &generator))@example.com"
            let time = start + year * Double(index) / Double(Self.messages)
            let word = index % 1000 == 0 ? "quarterly-forecast" : "hello"
            batch.append(
                AuditRecord(
                    time: time, sender: sender, recipients: [recipient], type: "chat",
                    stanza: "<message xmlns='jabber:client' from='\(sender)/pc' to='\(recipient)' type='chat'><body>\(word) number \(index)</body></message>"))
            if batch.count == 5000 {
                try await stores.appendAudit(batch)
                batch = []
            }
        }
        try await stores.appendAudit(batch)
        let loaded = ContinuousClock.now - clock
        let monthStart = start + year / 2
        let scope = AuditScope(users: ["user0@example.com"], rooms: [], start: monthStart, end: monthStart + 30 * 86400)
        var timings: [Double] = []
        var matches = 0
        var scanned = 0
        for _ in 0..<5 {
            let began = ContinuousClock.now
            var after: Int64 = 0
            matches = 0
            scanned = 0
            while true {
                let page = try await stores.auditRecords(in: scope, afterID: after, limit: 1000)
                if page.isEmpty { break }
                for record in page {
                    after = record.id
                    scanned += 1
                    if (try? XMLElement.parse(record.stanza))?.child("body")?.text.contains("quarterly") == true { matches += 1 }
                }
            }
            let elapsed = ContinuousClock.now - began
            timings.append(Double(elapsed.components.seconds) * 1000 + Double(elapsed.components.attoseconds) / 1e15)
        }
        timings.sort()
        print(
            "audit search: \(Self.messages) sealed records (loaded in \(loaded)); one user, one month: \(scanned) records decrypted and scanned, "
                + "\(matches) matches; median \(String(format: "%.1f", timings[2])) ms, worst \(String(format: "%.1f", timings[4])) ms (target < 200 ms)")
        #expect(scanned > 0)
    }
}
