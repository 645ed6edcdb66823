import CSQLite
import Dispatch
import Foundation
import Storage

/// One SQLite connection, used from one serial queue.
///
/// Every call runs on `queue`, so the connection needs no SQLite-level mutex and the
/// event loops never block on disk. WAL journal with `synchronous=FULL`: a call that
/// returned has been committed to disk.
public final class SQLiteDatabase: @unchecked Sendable {
    // @unchecked: all mutable state (the connection and the statement cache) is touched only on `queue`.
    private let queue: DispatchQueue
    private let worker: BackgroundWorker?
    private var connection: Connection

    /// The oldest SQLite the stores work with: the archive's apply uses `INSERT … RETURNING` (3.35).
    public static let minimumSQLiteVersion: Int32 = 3_035_000

    /// Opens (creating if needed) the database at `path` and migrates it to the current schema.
    /// - Parameter background: run this connection's work on a thread of its own at a lower
    ///   CPU priority (nice 10), so bulk writes yield the core to the event loops at once.
    public init(path: String, background: Bool = false) throws {
        guard sqlite3_libversion_number() >= Self.minimumSQLiteVersion else {
            throw StorageError.backend(
                "SQLite \(String(cString: sqlite3_libversion())) is too old: Switchboard needs 3.35 or newer (Debian 12 and Ubuntu 22.04 ship it)")
        }
        queue = DispatchQueue(label: "switchboard.sqlite")
        worker = background ? BackgroundWorker(name: "sb-archive-db", nice: 10) : nil
        // A new database file is created 0600 before SQLite opens it: SQLite gives the -wal
        // and -shm files the database file's mode, so none of the three is ever readable by
        // others. Only when it does not exist yet: closing a descriptor of a file that a
        // connection of this process has open drops that connection's POSIX locks, and other
        // processes (the CLI) would then checkpoint and reset the WAL under it.
        if access(path, F_OK) != 0 {
            let created = Foundation.open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
            if created >= 0 { Foundation.close(created) }
        }
        connection = try Connection(path: path)
        try connection.execute("PRAGMA journal_mode=WAL")
        try connection.execute("PRAGMA synchronous=FULL")
        try connection.execute("PRAGMA foreign_keys=ON")
        try connection.execute("PRAGMA busy_timeout=10000")
        // The archive's indexes take inserts all over (one page per owner): keep the hot pages in
        // memory (64 MiB at most per connection, used only as the database grows) and let the
        // WAL grow to 256 MiB before a checkpoint, so a page changed by many transactions is
        // copied into the database once per checkpoint rather than once per transaction
        // (measured at saturation: 6.9 → 5.1 KB written per message with 32 MiB, +10% messages
        // per second). After a checkpoint the WAL file is cut back to 64 MiB.
        // The connection whose commit finds the WAL past its threshold runs the checkpoint: the
        // background (archive) connection's is the lower, so a login's or a roster's commit on
        // the main connection never copies the archive's pages (its 1 GiB is a backstop for a
        // server that stores no messages).
        try connection.execute("PRAGMA cache_size=-65536")
        try connection.execute("PRAGMA wal_autocheckpoint=\(background ? 65536 : 262_144)")
        try connection.execute("PRAGMA journal_size_limit=67108864")
        try Migrations.migrate(connection)
        try Migrations.verify(connection)
        // Files made by older versions.
        for file in [path, path + "-wal", path + "-shm"] { chmod(file, 0o600) }
    }

    deinit { worker?.stop() }

    /// Runs `body` on the database queue.
    @discardableResult
    public func run<T: Sendable>(_ body: @escaping @Sendable (Connection) throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            let job: @Sendable () -> Void = { continuation.resume(with: Result { try body(self.connection) }) }
            if let worker {
                worker.submit(job)
            } else {
                queue.async(execute: job)
            }
        }
    }

    /// Runs `body` inside one transaction on the database queue.
    public func transaction<T: Sendable>(_ body: @escaping @Sendable (Connection) throws -> T) async throws -> T {
        try await run { connection in try connection.transaction { try body(connection) } }
    }
}

/// A serial executor on a thread of its own with a lower CPU priority: the archive's bulk writes
/// run there, so a message arriving meanwhile gets the core at once (the kernel prefers the
/// event loop whenever both are runnable) instead of waiting behind a transaction.
final class BackgroundWorker: @unchecked Sendable {
    // @unchecked: `jobs` is guarded by `condition`.
    private let condition = NSCondition()
    private var jobs: [@Sendable () -> Void] = []
    private var stopping = false

    init(name: String, nice: Int32) {
        let thread = Thread { [self] in
            // On Linux, PRIO_PROCESS with 0 sets the calling thread's nice value only. Raising it
            // needs no privilege (lowering it would).
            #if os(Linux)
            setpriority(__priority_which_t(PRIO_PROCESS.rawValue), 0, nice)
            #else
            setpriority(PRIO_PROCESS, 0, nice)
            #endif
            // Named from the thread itself (Foundation passes a name set before start on to
            // nothing Linux shows); at most 15 bytes, or Linux refuses it.
            Thread.current.name = name
            self.loop()
        }
        thread.start()
    }

    func submit(_ job: @escaping @Sendable () -> Void) {
        condition.lock()
        jobs.append(job)
        condition.signal()
        condition.unlock()
    }

    /// Ends the thread once the jobs submitted so far have run.
    func stop() {
        condition.lock()
        stopping = true
        condition.signal()
        condition.unlock()
    }

    private func loop() {
        while true {
            condition.lock()
            while jobs.isEmpty, !stopping { condition.wait() }
            if jobs.isEmpty {
                condition.unlock()
                return
            }
            let batch = jobs
            jobs = []
            condition.unlock()
            for job in batch { job() }
        }
    }
}

/// A raw SQLite connection with a prepared-statement cache.
public final class Connection {
    private var handle: OpaquePointer?
    private var cache: [String: Statement] = [:]
    /// Keys of `jid_keys` rows this connection has read or made (`jidKey`). Keys are never
    /// deleted or reused, so only a rolled-back transaction can leave an entry wrong: the
    /// cache is emptied then.
    var jidKeys: [String: Int64] = [:]
    /// The newest archive run of each owner (by JID key) this connection wrote or read
    /// (`ArchiveRuns.add`); emptied with `jidKeys` when a transaction rolls back.
    var runTails: [Int64: ArchiveRuns.Tail] = [:]

    /// Library settings made once, before the first connection opens (and initialises SQLite).
    private static let configured: Bool = switchboard_sqlite3_disable_memstatus() == SQLITE_OK

    init(path: String) throws {
        _ = Self.configured
        let flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX
        var db: OpaquePointer?
        let rc = sqlite3_open_v2(path, &db, flags, nil)
        guard rc == SQLITE_OK, let db else {
            let message = db.map { String(cString: sqlite3_errmsg($0)) } ?? "out of memory"
            sqlite3_close(db)
            throw StorageError.backend("cannot open database \(path): \(message)")
        }
        handle = db
    }

    deinit {
        for statement in cache.values { statement.finalize() }
        sqlite3_close_v2(handle)
    }

    var errorMessage: String { handle.map { String(cString: sqlite3_errmsg($0)) } ?? "closed" }

    /// Executes one or more statements without results.
    public func execute(_ sql: String) throws {
        var error: UnsafeMutablePointer<CChar>?
        if sqlite3_exec(handle, sql, nil, nil, &error) != SQLITE_OK {
            let message = error.map { String(cString: $0) } ?? errorMessage
            sqlite3_free(error)
            throw StorageError.backend(message)
        }
    }

    /// A cached prepared statement, reset and with bindings cleared.
    public func prepare(_ sql: String) throws -> Statement {
        if let statement = cache[sql] {
            statement.reset()
            return statement
        }
        var raw: OpaquePointer?
        guard sqlite3_prepare_v2(handle, sql, -1, &raw, nil) == SQLITE_OK, let raw else {
            throw StorageError.backend("\(errorMessage) in: \(sql)")
        }
        let statement = Statement(raw, connection: self)
        cache[sql] = statement
        return statement
    }

    /// Runs a statement that returns no rows.
    @discardableResult
    public func run(_ sql: String, _ values: [SQLValue] = []) throws -> Int {
        let statement = try prepare(sql)
        try statement.bind(values)
        while try statement.step() {}
        return Int(sqlite3_changes(handle))
    }

    /// Runs a query and maps each row.
    public func query<T>(_ sql: String, _ values: [SQLValue] = [], _ map: (Statement) throws -> T) throws -> [T] {
        let statement = try prepare(sql)
        try statement.bind(values)
        var rows: [T] = []
        while try statement.step() {
            rows.append(try map(statement))
        }
        return rows
    }

    /// Steps through a query's rows while `body` returns true (rows read as needed, not all at
    /// once). `body` must not run this same SQL (it shares the cached statement).
    public func forEachRow(_ sql: String, _ values: [SQLValue], _ body: (Statement) throws -> Bool) throws {
        let statement = try prepare(sql)
        try statement.bind(values)
        defer { statement.reset() }
        while try statement.step() {
            guard try body(statement) else { return }
        }
    }

    public var lastInsertRowID: Int64 { sqlite3_last_insert_rowid(handle) }

    /// Runs `body` in `BEGIN IMMEDIATE … COMMIT`, rolling back if it throws.
    public func transaction<T>(_ body: () throws -> T) throws -> T {
        try execute("BEGIN IMMEDIATE")
        do {
            let result = try body()
            try execute("COMMIT")
            return result
        } catch {
            try? execute("ROLLBACK")
            jidKeys.removeAll()
            runTails.removeAll()
            throw error
        }
    }
}

/// A value bound to a statement parameter.
public enum SQLValue: Sendable {
    case int(Int64)
    case double(Double)
    case text(String)
    case blob([UInt8])
    case null

    public static func optional(_ text: String?) -> SQLValue { text.map { .text($0) } ?? .null }
}

/// A prepared statement owned by its connection's cache.
public final class Statement {
    private let raw: OpaquePointer
    private unowned let connection: Connection
    private static let transient = unsafeBitCast(-1, to: sqlite3_destructor_type.self)

    init(_ raw: OpaquePointer, connection: Connection) {
        self.raw = raw
        self.connection = connection
    }

    func finalize() { sqlite3_finalize(raw) }

    func reset() {
        sqlite3_reset(raw)
        sqlite3_clear_bindings(raw)
    }

    func bind(_ values: [SQLValue]) throws {
        for (offset, value) in values.enumerated() { try bind(Int32(offset + 1), value) }
    }

    // Parameters one at a time (1-based), for statements run many times in one transaction:
    // no array of values per row, and texts bound by length rather than by `strlen`.

    public func bind(_ index: Int32, _ value: SQLValue) throws {
        switch value {
        case .int(let v): try bind(index, v)
        case .double(let v): try bind(index, v)
        case .text(let v): try bind(index, v)
        case .blob(let v): try bind(index, v)
        case .null: try check(sqlite3_bind_null(raw, index))
        }
    }

    public func bind(_ index: Int32, _ value: Int64) throws { try check(sqlite3_bind_int64(raw, index, value)) }
    public func bind(_ index: Int32, _ value: Double) throws { try check(sqlite3_bind_double(raw, index, value)) }

    public func bind(_ index: Int32, _ value: String) throws {
        var text = value
        let rc = text.withUTF8 { bytes in
            bytes.withMemoryRebound(to: CChar.self) { chars in
                // An empty text's buffer may have no address, which would bind NULL.
                chars.isEmpty ? sqlite3_bind_text(raw, index, "", 0, Self.transient)
                    : sqlite3_bind_text(raw, index, chars.baseAddress, Int32(chars.count), Self.transient)
            }
        }
        try check(rc)
    }

    public func bind(_ index: Int32, _ value: [UInt8]) throws {
        // Not through a pointer when empty: a nil one would bind NULL instead of an empty value.
        try check(
            value.isEmpty ? sqlite3_bind_zeroblob(raw, index, 0)
                : value.withUnsafeBytes { sqlite3_bind_blob(raw, index, $0.baseAddress, Int32($0.count), Self.transient) })
    }

    /// Steps to the end with the parameters bound since the last run; returns the rows changed.
    /// The statement is then reset for the next run (its parameters stay bound until replaced).
    @discardableResult
    public func execute() throws -> Int {
        defer { sqlite3_reset(raw) }
        while try step() {}
        return Int(sqlite3_changes(sqlite3_db_handle(raw)))
    }

    /// Steps to the end, calling `body` with each row (e.g. an `INSERT … RETURNING`); then resets.
    public func execute(eachRow body: (Statement) throws -> Void) throws {
        defer { sqlite3_reset(raw) }
        while try step() { try body(self) }
    }

    private func check(_ rc: Int32) throws {
        guard rc == SQLITE_OK else { throw StorageError.backend(connection.errorMessage) }
    }

    /// Advances; true while a row is available.
    func step() throws -> Bool {
        switch sqlite3_step(raw) {
        case SQLITE_ROW: return true
        case SQLITE_DONE: return false
        case SQLITE_CONSTRAINT: throw StorageError.conflict(connection.errorMessage)
        default: throw StorageError.backend(connection.errorMessage)
        }
    }

    public func int(_ column: Int32) -> Int64 { sqlite3_column_int64(raw, column) }
    public func double(_ column: Int32) -> Double { sqlite3_column_double(raw, column) }
    public func isNull(_ column: Int32) -> Bool { sqlite3_column_type(raw, column) == SQLITE_NULL }

    public func text(_ column: Int32) -> String? {
        guard let pointer = sqlite3_column_text(raw, column) else { return nil }
        return String(cString: pointer)
    }

    public func blob(_ column: Int32) -> [UInt8] {
        let count = Int(sqlite3_column_bytes(raw, column))
        guard count > 0, let pointer = sqlite3_column_blob(raw, column) else { return [] }
        return Array(UnsafeRawBufferPointer(start: pointer, count: count))
    }
}
