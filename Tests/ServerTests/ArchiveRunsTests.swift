import Foundation
@testable import SQLiteStorage
import Storage
import Testing

/// The archive's log-structured owner index (schema step 15) against a plain in-memory model:
/// whatever order and batches copies arrive in, every query answers what filtering and sorting
/// all stored copies answers.
@Suite struct ArchiveRunsTests {
    /// A small deterministic generator (SplitMix64), so a failure can be replayed.
    struct Generator: RandomNumberGenerator {
        var state: UInt64
        mutating func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
    }

    private func count(_ stores: SQLiteStores, _ sql: String) async throws -> Int64 {
        try await stores.archiveDatabase.run { db in try db.query(sql) { $0.int(0) }.first ?? -1 }
    }

    private func record(_ position: Int64, owner: String, peer: String) -> ArchiveRecord {
        ArchiveRecord(
            id: position, uid: ArchiveUID(position: position, random: UInt64(position) &* 31).text, owner: owner, peer: peer,
            outgoing: position % 2 == 0, time: Double(position) / 10, stanza: "<m>\(position)</m>")
    }

    /// Every owner's runs are in order and do not overlap, their counts add up, their time
    /// bounds hold their copies' times, and together they list exactly the owner's stored copies.
    private func checkRuns(_ stores: SQLiteStores) async throws {
        let problems = try await stores.archiveDatabase.run { db -> [String] in
            var problems: [String] = []
            var previous: (owner: Int64, last: Int64)?
            var listed: [Int64: [Int64]] = [:]
            var times: [Int64: Double] = [:]
            try db.forEachRow("SELECT id, created_at FROM archive", []) { row in
                times[row.int(0)] = row.double(1)
                return true
            }
            try db.forEachRow("SELECT owner, first, last, count, entries, min_time, max_time FROM archive_runs ORDER BY owner, first", []) { row in
                let (owner, first, last) = (row.int(0), row.int(1), row.int(2))
                let positions = ArchiveRuns.decode(row.blob(4), first: first)
                if positions.count != Int(row.int(3)) || positions.first != first || positions.last != last {
                    problems.append("run \(owner)/\(first): count \(row.int(3)) last \(last), decoded \(positions)")
                }
                if positions.count > ArchiveRuns.maxEntries { problems.append("run \(owner)/\(first) too long") }
                if let previous, previous.owner == owner, previous.last >= first {
                    problems.append("runs of \(owner) overlap at \(first)")
                }
                previous = (owner, last)
                listed[owner, default: []] += positions
                let bounds = row.double(5)...row.double(6)
                if let outside = positions.first(where: { times[$0].map { !bounds.contains($0) } ?? false }) {
                    problems.append("run \(owner)/\(first): copy \(outside) at \(times[outside] ?? 0) outside \(bounds)")
                }
                return true
            }
            var stored: [Int64: [Int64]] = [:]
            try db.forEachRow("SELECT owner, id FROM archive ORDER BY id", []) { row in
                stored[row.int(0), default: []].append(row.int(1))
                return true
            }
            if listed != stored { problems.append("the runs do not list the stored copies") }
            return problems
        }
        #expect(problems.isEmpty, "\(problems)")
    }

    @Test func encodingRoundTrips() {
        let positions: [Int64] = [1_765_000_000_000_000, 1_765_000_000_000_001, 1_765_000_000_000_200, 1_765_000_900_000_000]
        var bytes: [UInt8] = []
        ArchiveRuns.encode(positions[...], after: positions[0], into: &bytes)
        #expect(ArchiveRuns.decode(bytes, first: positions[0]) == positions)
        #expect(bytes.count < positions.count * 5)
        // A cut-off or disordered tail ends the list; it never invents positions.
        #expect(ArchiveRuns.decode(Array(bytes.dropLast()), first: positions[0]) == Array(positions.dropLast()))
        #expect(ArchiveRuns.decode([0, 0], first: 5) == [5])
        #expect(ArchiveRuns.decode([1], first: 5).isEmpty)
    }

    @Test(arguments: [1, 2, 3])
    func queriesMatchTheModel(seed: UInt64) async throws {
        try await withTemporaryStores("sb-runs") { stores, _ in
            var random = Generator(state: seed)
            let users = ["a@x", "b@x", "c@x", "d@x"]
            // Positions with gaps, arriving in batches a little out of order (two event loops
            // journal in either order), one batch far longer than a run.
            var positions = (1...3_000).map { Int64($0 * 3) }
            for index in stride(from: 0, to: positions.count - 1, by: 7) where Bool.random(using: &random) {
                positions.swapAt(index, index + 1)
            }
            var model: [ArchiveRecord] = []
            var rest = positions[...]
            var sizes = [1, 1, 2, 5, 40, 1_500, 3, 300]
            while !rest.isEmpty {
                let size = sizes.isEmpty ? Int.random(in: 1...200, using: &random) : sizes.removeFirst()
                var batch: [ArchiveRecord] = []
                for position in rest.prefix(size) {
                    // "a" writes mostly to "b": a long run of one peer, and the others now and then.
                    let owner = position % 5 == 0 ? users[Int.random(in: 1..<4, using: &random)] : "a@x"
                    var peer = users.randomElement(using: &random) ?? "b@x"
                    if peer == owner || Int.random(in: 0..<3, using: &random) > 0 { peer = owner == "b@x" ? "a@x" : "b@x" }
                    batch.append(record(position, owner: owner, peer: peer))
                }
                rest = rest.dropFirst(size)
                try await stores.append(batch)
                model += batch
            }
            // Applied again (a journal replay): nothing changes.
            try await stores.append(Array(model.prefix(500)))
            try await checkRuns(stores)
            for owner in users {
                let mine = model.filter { $0.owner == owner }.sorted { $0.id < $1.id }
                #expect(try await stores.archiveCount(owner: owner) == mine.count)
                for with in [nil] + users {
                    let all = mine.filter { with == nil || $0.peer == with }
                    for _ in 0..<6 {
                        let limit = [0, 1, 7, 50, 5_000].randomElement(using: &random) ?? 7
                        let after = Bool.random(using: &random) ? all.randomElement(using: &random) : nil
                        let before = Bool.random(using: &random) ? all.randomElement(using: &random) : nil
                        let fromEnd = Bool.random(using: &random)
                        let start = Bool.random(using: &random) ? Double(Int.random(in: 0...900, using: &random)) : nil
                        let end = Bool.random(using: &random) ? Double(Int.random(in: 0...900, using: &random)) : nil
                        let query = ArchiveQuery(
                            owner: owner, with: with, start: start, end: end, after: after?.uid, before: before?.uid, fromEnd: fromEnd,
                            limit: limit)
                        var expected = all.filter { copy in
                            (after.map { copy.id > $0.id } ?? true) && (before.map { copy.id < $0.id } ?? true)
                                && (start.map { copy.time >= $0 } ?? true) && (end.map { copy.time <= $0 } ?? true)
                        }
                        let backwards = before != nil || fromEnd
                        let complete = expected.count <= limit
                        expected = backwards ? Array(expected.suffix(limit)) : Array(expected.prefix(limit))
                        let page = try await stores.query(query)
                        #expect(page?.records == expected, "\(query)")
                        #expect(page?.complete == complete, "\(query)")
                    }
                }
            }
            // An account's deletion takes its copies and its runs, and nobody else's.
            _ = try await stores.deleteAccount("a")
            #expect(try await stores.archiveCount(owner: "a@x") == 0)
            #expect(try await count(stores, "SELECT count(*) FROM archive_runs WHERE owner = (SELECT id FROM jid_keys WHERE jid = 'a@x')") == 0)
            #expect(try await stores.query(ArchiveQuery(owner: "a@x"))?.records.isEmpty == true)
            let others = model.filter { $0.owner != "a@x" }
            #expect(try await count(stores, "SELECT count(*) FROM archive") == Int64(others.count))
            #expect(try await stores.archiveCount(owner: "b@x") == others.filter { $0.owner == "b@x" }.count)
            try await checkRuns(stores)
        }
    }

    /// At low rates (a copy or two per apply) the newest run grows in place instead of a row
    /// per copy; past `extendBelow` a new run starts.
    @Test func smallAppliesExtendTheNewestRun() async throws {
        try await withTemporaryStores("sb-runs") { stores, _ in
            for position in 1...(ArchiveRuns.extendBelow + 10) {
                try await stores.append([record(Int64(position), owner: "a@x", peer: "b@x")])
            }
            let runs = try await count(stores, "SELECT count(*) FROM archive_runs")
            #expect(runs == 2)
            #expect(try await stores.archiveCount(owner: "a@x") == ArchiveRuns.extendBelow + 10)
            try await checkRuns(stores)
        }
    }

    /// Copies at new positions go in several rows per statement, the others one by one: a
    /// position twice in one apply, positions already stored mixed with new ones, a text id
    /// and a straggler below the newest stored position are each stored exactly once.
    @Test func groupedInsertsStoreEachCopyOnce() async throws {
        try await withTemporaryStores("sb-runs") { stores, _ in
            let first = (1...20).map { record(Int64($0 * 10), owner: "a@x", peer: "b@x") }
            try await stores.append(first + [first[3]])
            #expect(try await stores.archiveCount(owner: "a@x") == 20)
            var textID = record(205, owner: "a@x", peer: "c@x")
            textID.uid = "client-chosen-id"
            let straggler = record(15, owner: "a@x", peer: "b@x")
            let more = (21...37).map { record(Int64($0 * 10), owner: "a@x", peer: "b@x") }
            try await stores.append(Array(first[10...]) + more + [textID, straggler, more[0]])
            #expect(try await stores.archiveCount(owner: "a@x") == 20 + 17 + 2)
            #expect(try await count(stores, "SELECT count(*) FROM archive where owner = (SELECT id FROM jid_keys WHERE jid = 'a@x')") == 39)
            // A position twice while its first copy still waits for a group of eight; a text id
            // first and the same position with a made id later: each stored once, the first.
            let twice = [record(400, owner: "d@x", peer: "b@x"), record(400, owner: "d@x", peer: "b@x")]
                + (41...47).map { record(Int64($0 * 10), owner: "d@x", peer: "b@x") }
            var textFirst = record(500, owner: "d@x", peer: "b@x")
            textFirst.uid = "text-500"
            try await stores.append(twice + [textFirst] + (51...57).map { record(Int64($0 * 10), owner: "d@x", peer: "b@x") }
                + [record(500, owner: "d@x", peer: "b@x")])
            #expect(try await stores.archiveCount(owner: "d@x") == 16)
            #expect(try await stores.query(ArchiveQuery(owner: "d@x", limit: 100))?.records.first { $0.id == 500 }?.uid == "text-500")
            let page = try await stores.query(ArchiveQuery(owner: "a@x", limit: 100))
            let tens: [Int64] = (1...37).map { Int64($0 * 10) }
            let expected: [Int64] = ([15, 205] + tens).sorted()
            #expect(page?.records.map(\.id) == expected)
            #expect(page?.records.first { $0.id == 205 }?.uid == "client-chosen-id")
            try await checkRuns(stores)
        }
    }

    /// The archive connection remembers each key's newest run; deleting an account (on the
    /// other connection) removes runs it remembers, and the next copies still get indexed.
    @Test func aDeletedAccountsRememberedRunsAreReadAgain() async throws {
        try await withTemporaryStores("sb-runs") { stores, _ in
            let later = Date().timeIntervalSince1970 + 60
            func copy(_ position: Int64) -> ArchiveRecord {
                ArchiveRecord(id: position, uid: "u\(position)", owner: "a@x", peer: "b@x", outgoing: true, time: later, stanza: "<m/>")
            }
            try await stores.append([copy(1), copy(2)])
            #expect(try await stores.deleteAccount("a") == false)  // no account row, but its archive goes
            #expect(try await stores.archiveCount(owner: "a@x") == 0)
            try await stores.append([copy(3)])
            #expect(try await stores.query(ArchiveQuery(owner: "a@x"))?.records.map(\.id) == [3])
            #expect(try await stores.query(ArchiveQuery(owner: "a@x", with: "b@x"))?.records.map(\.id) == [3])
            try await checkRuns(stores)
        }
    }

    /// Copies a process that writes no runs stored (an older server still running after a newer
    /// command upgraded the database) are listed when the database is next opened; deleting the
    /// account takes them too.
    @Test func copiesWithoutRunsAreListedAtTheNextOpening() async throws {
        try await withTemporaryStores("sb-runs") { stores, path in
            try await stores.append([record(10, owner: "a@x", peer: "b@x"), record(11, owner: "b@x", peer: "a@x")])
            try await stores.archiveDatabase.run { db in
                try db.execute(
                    """
                    INSERT INTO archive (id, owner, peer, outgoing, created_at, stanza)
                        SELECT 20, id, (SELECT id FROM jid_keys WHERE jid = 'b@x'), 1, 2, '<m>20</m>' FROM jid_keys WHERE jid = 'a@x';
                    INSERT INTO archive (id, owner, peer, outgoing, created_at, stanza)
                        SELECT 21, id, (SELECT id FROM jid_keys WHERE jid = 'b@x'), 1, 2.1, '<m>21</m>' FROM jid_keys WHERE jid = 'a@x';
                    """)
            }
            #expect(try await stores.query(ArchiveQuery(owner: "a@x"))?.records.map(\.id) == [10])
            let reopened = try SQLiteStores(directory: path)
            #expect(try await reopened.query(ArchiveQuery(owner: "a@x"))?.records.map(\.id) == [10, 20, 21])
            #expect(try await reopened.query(ArchiveQuery(owner: "a@x", start: 2.05))?.records.map(\.id) == [21])
            #expect(try await reopened.archiveCount(owner: "a@x") == 3)
            try await checkRuns(reopened)
            _ = try await reopened.deleteAccount("a")
            #expect(try await count(reopened, "SELECT count(*) FROM archive WHERE owner = (SELECT id FROM jid_keys WHERE jid = 'a@x')") == 0)
        }
    }

    /// Copies stored before step 15 get their runs on the upgrade, and the index they replace goes.
    @Test func upgradeBuildsTheRuns() async throws {
        try await withTemporaryStores("sb-runs") { _, path in
            let older = try olderDatabase(
                under: path, version: 14,
                """
                INSERT INTO jid_keys (id, jid) VALUES (1, 'a@x'), (2, 'b@x'), (3, 'c@x');
                INSERT INTO archive (id, owner, peer, outgoing, created_at, stanza) VALUES
                    (10, 1, 2, 1, 1, '<m>10</m>'), (11, 2, 1, 0, 1, '<m>11</m>'), (20, 1, 3, 1, 2, '<m>20</m>'),
                    (30, 1, 2, 1, 3, '<m>30</m>'), (31, 2, 1, 0, 3, '<m>31</m>');
                """)
            let upgraded = try SQLiteStores(directory: older)
            #expect(try await upgraded.query(ArchiveQuery(owner: "a@x"))?.records.map(\.id) == [10, 20, 30])
            #expect(try await upgraded.query(ArchiveQuery(owner: "a@x", with: "b@x"))?.records.map(\.id) == [10, 30])
            #expect(try await upgraded.query(ArchiveQuery(owner: "b@x", fromEnd: true, limit: 1))?.records.map(\.id) == [31])
            #expect(try await upgraded.archiveCount(owner: "a@x") == 3)
            #expect(try await count(upgraded, "SELECT count(*) FROM sqlite_master WHERE name = 'archive_owner'") == 0)
            #expect(try await count(upgraded, "SELECT count(*) FROM sqlite_master WHERE name = 'archive_owner_peer'") == 1)
            try await checkRuns(upgraded)
            // New copies go on from there.
            try await upgraded.append([record(40, owner: "a@x", peer: "b@x")])
            #expect(try await upgraded.query(ArchiveQuery(owner: "a@x", with: "b@x"))?.records.map(\.id) == [10, 30, 40])
        }
    }
}
