/// The message archive's per-owner index, log-structured (schema step 15).
///
/// An index entry per archive copy (`archive_owner (owner, id)` until step 14) was a large part
/// of what storing a message cost: every copy a b-tree insert on a page of its own owner, page
/// splits in the middle of the tree, and those pages written again to the WAL and the database.
/// Here an apply writes, per owner it stored copies for, one row listing the positions of those
/// copies: rows per apply and owner, not per copy. ("with" queries keep their index,
/// `archive_owner_peer`: the same runs per (owner, peer) measured cheaper only when one pair
/// exchanges many messages per apply, and far dearer when owners' copies spread over many peers,
/// as conversations do; see docs/performance.md, "Session 9".)
///
/// A row ("run") holds up to `maxEntries` ascending positions of one owner, varint-encoded as
/// differences (`first` itself is the first). An owner's runs never overlap, so they are ordered
/// by `first` and by `last` alike and a query reads them in key order. Positions arrive nearly in
/// order (they are taken from one clock, but two event loops may journal theirs in either order),
/// so a new position at or below the owner's newest `last` merges the runs it overlaps. An
/// owner's newest run shorter than `extendBelow` takes the next apply's positions in place, so
/// that at low rates runs do not stay one copy long. Each run also keeps the earliest and the
/// latest time of its copies (`min_time`, `max_time`: bounds, widened by merges), so that a
/// query over a time range skips the runs outside it without reading their copies.
enum ArchiveRuns {
    /// Positions per run at most: a query decodes at most one run more than it needs.
    static let maxEntries = 1024
    /// A newest run this short is extended in place rather than followed by another.
    static let extendBelow = 128
    /// The columns `Run.init` reads.
    static let runColumns = "first, last, count, entries, min_time, max_time"

    struct Run {
        var first: Int64
        var last: Int64
        var count: Int
        var entries: [UInt8]
        var minTime: Double
        var maxTime: Double

        init(_ row: Statement) {
            first = row.int(0)
            last = row.int(1)
            count = Int(row.int(2))
            entries = row.blob(3)
            minTime = row.double(4)
            maxTime = row.double(5)
        }

        var positions: [Int64] { ArchiveRuns.decode(entries, first: first) }
    }

    /// A stored copy to list: its position and time.
    struct Entry {
        var position: Int64
        var time: Double
    }

    // MARK: - Encoding

    /// Appends `positions` (ascending, each above `previous`) as varint differences.
    static func encode(_ positions: some Sequence<Int64>, after previous: Int64, into bytes: inout [UInt8]) {
        var previous = previous
        for position in positions {
            Varint.append(UInt64(bitPattern: position &- previous), to: &bytes)
            previous = position
        }
    }

    /// The positions of a run (the first difference is from `first`). A malformed tail (not
    /// expected: only this type writes runs) ends the list rather than inventing positions.
    static func decode(_ bytes: [UInt8], first: Int64) -> [Int64] {
        var positions: [Int64] = []
        positions.reserveCapacity(bytes.count)
        var previous = first
        var index = 0
        while index < bytes.count {
            guard let delta = Varint.read(bytes, at: &index) else { break }
            let position = previous &+ Int64(bitPattern: delta)
            guard positions.isEmpty ? position == first : position > previous else { break }
            positions.append(position)
            previous = position
        }
        return positions
    }

    // MARK: - Writing

    /// Indexes copies an apply stored in their owners' runs.
    static func index(_ copies: [(owner: Int64, entry: Entry)], in db: Connection) throws {
        guard !copies.isEmpty else { return }
        var byOwner: [Int64: [Entry]] = [:]
        var order: [Int64] = []
        for copy in copies {
            if byOwner[copy.owner]?.append(copy.entry) == nil {
                byOwner[copy.owner] = [copy.entry]
                order.append(copy.owner)
            }
        }
        for owner in order {
            guard var entries = byOwner[owner] else { continue }
            // Nearly sorted already (journal order); one copy per position.
            if zip(entries, entries.dropFirst()).contains(where: { $0.position >= $1.position }) {
                entries.sort { $0.position < $1.position }
            }
            try add(entries, owner: owner, in: db)
        }
    }

    /// An owner's newest run, as the archive connection remembers it (`Connection.runTails`).
    struct Tail {
        var first: Int64
        var last: Int64
        var count: Int
    }

    /// Adds new positions (ascending) to an owner's runs.
    ///
    /// One statement per owner and apply when the owner's newest run is remembered: it grows in
    /// place (its bytes appended in SQL: the new differences follow its `last`), or a run
    /// follows it. The connection remembers the newest runs it wrote; only an account's
    /// deletion (another connection) removes runs, and then the growth changes no row and
    /// the owner's runs are read again.
    static func add(_ entries: [Entry], owner: Int64, in db: Connection) throws {
        guard let first = entries.first?.position else { return }
        let remembered = db.runTails[owner]
        let tail =
            try remembered
            ?? db.query(
                "SELECT first, last, count FROM archive_runs WHERE owner = ? ORDER BY first DESC LIMIT 1", [.int(owner)]
            ) { Tail(first: $0.int(0), last: $0.int(1), count: Int($0.int(2))) }.first
        guard let tail else {
            try insert(entries[...], owner: owner, in: db)
            return
        }
        guard tail.last < first else {
            try merge(entries, owner: owner, in: db)
            return
        }
        var rest = entries[...]
        if tail.count < extendBelow {
            let taken = rest.prefix(maxEntries - tail.count)
            var appended: [UInt8] = []
            encode(taken.lazy.map(\.position), after: tail.last, into: &appended)
            let last = taken.last?.position ?? tail.last
            let times = bounds(taken)
            // Only the run as remembered (its last and count too): a run changed or gone since
            // (an account deleted on the other connection) is read again, never appended to.
            let grown = try db.run(
                """
                UPDATE archive_runs SET last = ?, count = ?, entries = CAST(entries || ? AS BLOB),
                    min_time = min(min_time, ?), max_time = max(max_time, ?)
                WHERE owner = ? AND first = ? AND last = ? AND count = ?
                """,
                [.int(last), .int(Int64(tail.count + taken.count)), .blob(appended), .double(times.lowerBound), .double(times.upperBound),
                 .int(owner), .int(tail.first), .int(tail.last), .int(Int64(tail.count))])
            guard grown == 1 else {
                // Read the owner's runs again (a run just read cannot have changed: new runs then,
                // never a lost position).
                db.runTails[owner] = nil
                if remembered != nil { try add(entries, owner: owner, in: db) } else { try insert(entries[...], owner: owner, in: db) }
                return
            }
            remember(Tail(first: tail.first, last: last, count: tail.count + taken.count), for: owner, in: db)
            rest = rest.dropFirst(taken.count)
        }
        try insert(rest, owner: owner, in: db)
    }

    private static func remember(_ tail: Tail, for owner: Int64, in db: Connection) {
        // Bounded: past it, owners' newest runs are read again once per apply.
        if db.runTails.count >= 262_144 { db.runTails.removeAll() }
        db.runTails[owner] = tail
    }

    /// The earliest and latest time of `entries` (not empty).
    private static func bounds(_ entries: ArraySlice<Entry>) -> ClosedRange<Double> {
        var lower = Double.infinity
        var upper = -Double.infinity
        for entry in entries {
            lower = min(lower, entry.time)
            upper = max(upper, entry.time)
        }
        return lower <= upper ? lower...upper : 0...0
    }

    /// New runs for ascending positions above every run of the owner; `widen` widens every new
    /// run's time bounds (a merge's, for positions whose own times it does not know).
    static func insert(_ entries: ArraySlice<Entry>, owner: Int64, widen: ClosedRange<Double>? = nil, in db: Connection) throws {
        var rest = entries
        while let first = rest.first?.position {
            let chunk = rest.prefix(maxEntries)
            rest = rest.dropFirst(chunk.count)
            var bytes: [UInt8] = []
            bytes.reserveCapacity(chunk.count * 3)
            encode(chunk.lazy.map(\.position), after: first, into: &bytes)
            let last = chunk.last?.position ?? first
            var times = bounds(chunk)
            if let widen { times = min(times.lowerBound, widen.lowerBound)...max(times.upperBound, widen.upperBound) }
            try db.run(
                "INSERT INTO archive_runs (owner, first, last, count, entries, min_time, max_time) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [.int(owner), .int(first), .int(last), .int(Int64(chunk.count)), .blob(bytes), .double(times.lowerBound), .double(times.upperBound)])
            remember(Tail(first: first, last: last, count: chunk.count), for: owner, in: db)
        }
    }

    /// Positions that do not all follow the owner's runs: the runs they overlap are read, merged
    /// with them and written again.
    private static func merge(_ entries: [Entry], owner: Int64, in db: Connection) throws {
        guard let first = entries.first?.position else { return }
        var overlapped: [Run] = []
        try db.forEachRow(
            "SELECT \(runColumns) FROM archive_runs WHERE owner = ? ORDER BY first DESC", [.int(owner)]
        ) { row in
            let run = Run(row)
            guard run.last >= first else { return false }
            overlapped.append(run)
            return true
        }
        // The old runs' positions keep their runs' bounds: every new run gets them (wider than
        // needed, never narrower).
        var merged: [Int64: Entry] = [:]
        var widen = bounds(entries[...])
        for run in overlapped {
            widen = min(widen.lowerBound, run.minTime)...max(widen.upperBound, run.maxTime)
            for position in run.positions { merged[position] = Entry(position: position, time: run.minTime) }
            try db.run("DELETE FROM archive_runs WHERE owner = ? AND first = ?", [.int(owner), .int(run.first)])
        }
        for entry in entries { merged[entry.position] = entry }
        try insert(merged.values.sorted { $0.position < $1.position }[...], owner: owner, widen: widen, in: db)
    }

    /// Runs for every copy stored before step 15 (the upgrade), then the index they replace goes.
    static func build(in db: Connection) throws {
        var owner: Int64?
        var entries: [Entry] = []
        func flush() throws {
            guard let owner else { return }
            try insert(entries[...], owner: owner, in: db)
            entries.removeAll(keepingCapacity: true)
        }
        // One owner in memory at a time (the archive_owner index gives them in order).
        try db.forEachRow("SELECT owner, id, created_at FROM archive ORDER BY owner, id", []) { row in
            if row.int(0) != owner {
                try flush()
                owner = row.int(0)
            }
            entries.append(Entry(position: row.int(1), time: row.double(2)))
            return true
        }
        try flush()
        try db.execute("DROP INDEX archive_owner")
        db.runTails.removeAll()
    }

    /// Lists copies stored by a process that writes no runs: a server of an older version still
    /// running while a newer command upgraded the database. Their positions are above every run
    /// (they came after the upgrade), so the newest copies are checked downwards until one is
    /// listed: one step when nothing is missing. Returns how many were listed now.
    @discardableResult
    static func catchUp(in db: Connection) throws -> Int {
        var unlisted: [(owner: Int64, entry: Entry)] = []
        try db.forEachRow("SELECT id, owner, created_at FROM archive ORDER BY id DESC", []) { row in
            let (position, owner) = (row.int(0), row.int(1))
            let newest = try db.query(
                "SELECT last FROM archive_runs WHERE owner = ? ORDER BY first DESC LIMIT 1", [.int(owner)]
            ) { $0.int(0) }.first
            if let newest, newest >= position { return false }
            unlisted.append((owner, Entry(position: position, time: row.double(2))))
            return true
        }
        try index(unlisted.reversed(), in: db)
        db.runTails.removeAll()
        return unlisted.count
    }

    // MARK: - Reading

    /// Calls `body` with the owner's positions strictly between `lower` and `upper` (either may be
    /// nil: no bound), ascending or descending, until it returns false.
    /// Runs whose copies all lie outside `start…end` (times; either may be nil) are skipped.
    static func forEach(
        owner: Int64, after lower: Int64?, before upper: Int64?, start: Double? = nil, end: Double? = nil, descending: Bool,
        in db: Connection, _ body: (Int64) throws -> Bool
    ) throws {
        let lowest = lower ?? Int64.min
        let highest = upper ?? Int64.max
        func visit(_ run: Run) throws -> Bool {
            if let start, run.maxTime < start { return true }
            if let end, run.minTime > end { return true }
            let positions = run.positions
            for offset in positions.indices {
                let position = positions[descending ? positions.count - 1 - offset : offset]
                guard position > lowest, position < highest else { continue }
                guard try body(position) else { return false }
            }
            return true
        }
        if descending {
            try db.forEachRow(
                "SELECT \(runColumns) FROM archive_runs WHERE owner = ? AND first < ? ORDER BY first DESC",
                [.int(owner), .int(highest)]
            ) { row in
                let run = Run(row)
                guard run.last > lowest else { return false }
                return try visit(run)
            }
            return
        }
        // The run that holds `lower` (it may start before it), then those that start after.
        if let lower,
            let run = try db.query(
                "SELECT \(runColumns) FROM archive_runs WHERE owner = ? AND first <= ? ORDER BY first DESC LIMIT 1",
                [.int(owner), .int(lower)], Run.init
            ).first, run.last > lower
        {
            guard try visit(run) else { return }
        }
        try db.forEachRow(
            "SELECT \(runColumns) FROM archive_runs WHERE owner = ? AND first > ? ORDER BY first ASC",
            [.int(owner), .int(lowest)]
        ) { row in
            let run = Run(row)
            guard run.first < highest else { return false }
            return try visit(run)
        }
    }

    /// How many copies the owner's runs list.
    static func count(owner: Int64, in db: Connection) throws -> Int {
        Int(
            try db.query(
                "SELECT coalesce(sum(count), 0) FROM archive_runs WHERE owner = ?", [.int(owner)]
            ) { $0.int(0) }.first ?? 0)
    }

    /// Deletes the owner's copies and runs (the copies through `archive_owner_peer`'s leading
    /// column, so copies no run lists go too).
    static func deleteArchive(owner: Int64, in db: Connection) throws {
        try db.run("DELETE FROM archive WHERE owner = ?", [.int(owner)])
        try db.run("DELETE FROM archive_runs WHERE owner = ?", [.int(owner)])
    }
}
