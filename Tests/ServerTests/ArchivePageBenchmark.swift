import Foundation
import SQLiteStorage
import Storage
import Testing
import Vault

/// A benchmark, not a test: `MAM_BENCH_MESSAGES=1000000 swift test --filter ArchivePageBenchmark`
/// prints how long a MAM page of 50 takes from an archive of that many sealed messages (first
/// page, last page, a page in the middle after an id, and one peer). Skipped otherwise.
@Suite struct ArchivePageBenchmark {
    static let messages = Int(ProcessInfo.processInfo.environment["MAM_BENCH_MESSAGES"] ?? "") ?? 0

    @Test(.enabled(if: messages > 0)) func pageOf50() async throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("sb-mam-bench-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        let plain = try SQLiteStores(directory: path)
        let stores = plain.encrypted(with: try await KeyRing.open(master: try MasterKey.fromFile(path + "/k", create: true), store: plain))
        var batch: [ArchiveRecord] = []
        for index in 0..<Self.messages {
            let peer = "peer\(index % 200)@example.com"
            batch.append(
                ArchiveRecord(
                    id: Int64(index + 1), uid: "uid\(index)", owner: "owner@example.com", peer: peer, outgoing: index % 2 == 0,
                    time: 1_700_000_000 + Double(index), stanza: "<message xmlns='jabber:client' type='chat'><body>message \(index)</body></message>"))
            if batch.count == 10_000 {
                try await stores.append(batch)
                batch = []
            }
        }
        try await stores.append(batch)
        func time(_ query: ArchiveQuery) async throws -> Double {
            var best = Double.infinity
            for _ in 0..<7 {
                let began = ContinuousClock.now
                let page = try await stores.query(query)
                let elapsed = ContinuousClock.now - began
                #expect(page?.records.count == 50)
                best = min(best, Double(elapsed.components.seconds) * 1000 + Double(elapsed.components.attoseconds) / 1e15)
            }
            return best
        }
        let first = try await time(ArchiveQuery(owner: "owner@example.com", limit: 50))
        let last = try await time(ArchiveQuery(owner: "owner@example.com", fromEnd: true, limit: 50))
        let middle = try await time(ArchiveQuery(owner: "owner@example.com", after: "uid\(Self.messages / 2)", limit: 50))
        let peer = try await time(ArchiveQuery(owner: "owner@example.com", with: "peer7@example.com", fromEnd: true, limit: 50))
        print(String(
            format: "MAM page of 50 from %d sealed messages (best of 7): first %.2f ms, last %.2f ms, after an id in the middle %.2f ms, last of one peer %.2f ms (target < 5 ms)",
            Self.messages, first, last, middle, peer))
    }
}
