import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import Storage
import XMLStream

/// One record the journal carries to the stores.
public enum JournalEntry: Sendable, Hashable {
    /// A copy of a message for one user's (or one room's) archive.
    case archive(ArchiveRecord)
    /// A message for the audit record.
    case audit(AuditRecord)

    /// What is left in an array's place when an entry is moved out of it (the journal moves
    /// entries from list to list: a copy retains every text an entry holds, and a batch's
    /// entries are out of the CPU's caches by the time it is applied). Holds no storage: empty
    /// texts are stored inline.
    static let placeholder = JournalEntry.archive(ArchiveRecord(id: 0, uid: "", owner: "", peer: "", outgoing: false, time: 0, stanza: ""))
}

/// The durable log in front of the message archive and the audit record.
///
/// Every routed message produces two archive copies and an audit record. Writing them straight
/// into SQLite costs a transaction per batch whose page writes grow with the number of records
/// (each record lands on another index page: one per owner, peer, participant), and at low rates
/// every batch is small, so a message costs several 4 KiB page writes and a share of an fsync
/// on the server's core. The journal splits durability from indexing:
///
/// * **append** (hot path): entries join an in-memory batch; the journal thread writes each
///   batch as one frame (sealed with the data key when encryption is on) at the end of an
///   append-only segment file and fdatasyncs it: sequential bytes proportional to the messages,
///   one fsync per batch. `durable()` (stream-management acknowledgements) waits for that;
/// * **apply** (background): about once a second, or sooner when many entries wait or a
///   reader asks (`applied()`), everything durable is inserted into the stores in one
///   transaction each, so a user's index page is written once per second, not once per message;
///   a segment is deleted once every entry in it is applied;
/// * **recovery** (`open`): segments left by a crash are read back and applied before the
///   server listens. The inserts are idempotent (archive positions and audit ids come from the
///   journal's entries), so an entry applied before the crash is not stored twice. A torn frame
///   at the end of the last segment was never acknowledged and is dropped.
///
/// Readers of the archive or the audit record call `applied()` first, so they see every
/// message accepted before their request.
public final class MessageJournal: @unchecked Sendable {
    // @unchecked: mutable state is guarded by `condition`'s mutex; the segment file descriptor
    // and frame buffer are touched only by the journal thread (and by `open` before it starts).
    public struct Options: Sendable {
        /// How long the journal thread waits for more entries before writing a small batch
        /// (one write and fdatasync per batch). Not while anyone waits in `durable()` or
        /// `applied()`: an XEP-0198 ack or a reader has the batch written at once.
        /// (10 → 50 ms: at 1,000 messages/s a third less CPU; the price is that a message nobody
        /// waits for may sit in memory for 50 ms, delivered but not yet durable.)
        public var linger: Duration = .milliseconds(50)
        /// No lingering once this many entries wait.
        public var lingerBelow = 256
        /// Applies at least this often while entries wait. Readers never wait for it (they ask
        /// for an apply); a longer interval makes low-rate applies bigger and cheaper per entry
        /// (1 → 5 s: 36 → 13 µs of apply per message at 1,000 messages/s on a fresh database;
        /// 5 → 15 s on one a closed-loop run had grown: 28.3 / 44.9 → 23.5 / 20.3 µs). Memory
        /// stays bounded by `applyAbove`, which applies at once whatever the interval.
        public var applyInterval: Duration = .seconds(15)
        /// Applies at once when this many entries wait. Larger batches cost less per entry: the
        /// archive's per-owner index pages are written once per transaction however many rows
        /// they take (measured at saturation: 16,384 → 32,768 carried 13% more messages,
        /// 32,768 → 65,536 another 10%; the price is a longer backpressure hold, p99 ≈ 0.7 s).
        public var applyAbove = 65_536
        /// Past this many entries waiting for the stores, `backedUp` turns on and client
        /// connections stop reading new stanzas until the stores catch up (TCP backpressure):
        /// memory stays bounded and the stores are never left behind by more than a moment.
        /// A message's entries share its text, some 400 bytes an entry: about 80 MB at most.
        public var backlogLimit = 196_608
        /// The same, in bytes of text (each entry counted whole, shared or not): large stanzas
        /// (up to the stanza size limit) reach this long before the count.
        public var backlogBytes = 256 << 20
        /// A new segment starts after this many bytes (old segments are deleted when applied).
        public var segmentBytes = 64 << 20
        public init() {}
    }

    private struct Segment {
        var written = 0
        var applied = 0
        var closed = false
    }

    /// Entries written in one frame (or what is left of them after a capped apply).
    private struct Chunk {
        var entries: [JournalEntry]
        var segment: Int
        /// Their `byteCount`s, summed once when written.
        var bytes: Int
    }

    private struct State {
        var pending: [JournalEntry] = []
        /// Entries appended so far (sequence numbers are 1-based counts).
        var appended: UInt64 = 0
        var durable: UInt64 = 0
        var applied: UInt64 = 0
        /// Durable entries not yet in the stores, as the journal thread wrote them (a chunk per
        /// frame: moved, never copied entry by entry under the appenders' lock).
        var unapplied: [Chunk] = []
        var unappliedCount = 0
        var unappliedUpTo: UInt64 = 0
        var segments: [Int: Segment] = [:]
        var currentSegment = 0
        var rotate = false
        var applying = false
        var applyRequested = false
        var lastApply = ContinuousClock.now
        var applyFailures = 0
        /// Every failed apply since the journal opened.
        var failedApplies = 0
        /// After a failed apply, none before this.
        var applyRetryAt: ContinuousClock.Instant?
        var durableWaiters: [(UInt64, CheckedContinuation<Void, Never>)] = []
        var appliedWaiters: [(UInt64, CheckedContinuation<Void, Never>)] = []
        var closing = false
        var threadRunning = false
        var writeFailures = 0
        /// Entries in the apply under way.
        var applyingCount = 0
        /// Text bytes of the entries not yet applied (pending, unapplied, applying).
        var waitingBytes = 0
        var backedUp = false
        var backlogEpisodes = 0
        var caughtUpWaiters: [@Sendable () -> Void] = []
    }

    public let directory: String
    private let options: Options
    private let logger: Logger
    private let condition = ConditionVariable()
    private let backlog = NIOLockedValueBox(false)
    private var state = State()
    private var stores: Stores?
    private var fd: Int32 = -1
    private var segmentSize = 0
    private var threadDone: CheckedContinuation<Void, Never>?

    public init(directory: String, logger: Logger, options: Options = Options()) {
        self.directory = directory
        self.logger = logger
        self.options = options
    }

    // MARK: - Lifecycle

    /// Applies whatever a previous process left in the journal, then starts the journal thread.
    /// Call once, before any `append`.
    public func open(stores: Stores) async throws {
        self.stores = stores
        if mkdir(directory, 0o700) != 0, errno != EEXIST {
            throw ConfigurationError("cannot create the journal directory \(directory): \(String(cString: strerror(errno)))")
        }
        chmod(directory, 0o700)
        let leftovers = try segmentNumbers()
        var recovered = 0
        for number in leftovers {
            let path = segmentPath(number)
            let entries = try readSegment(path, cipher: stores.cipher, last: number == leftovers.last)
            for chunk in stride(from: 0, to: entries.count, by: options.applyAbove) {
                try await Self.store(Array(entries[chunk..<min(chunk + options.applyAbove, entries.count)]), in: stores)
            }
            recovered += entries.count
            unlink(path)
        }
        if recovered > 0 || !leftovers.isEmpty {
            logger.notice(
                "journal recovered", metadata: ["journal.entries": "\(recovered)", "journal.segments": "\(leftovers.count)"])
        }
        let first = (leftovers.last ?? 0) + 1
        try openSegment(first)
        condition.withLock {
            state.currentSegment = first
            state.segments[first] = Segment()
            state.threadRunning = true
        }
        let thread = Thread { [self] in
            // Named from the thread itself (Foundation passes a name set before start on to
            // nothing Linux shows); at most 15 bytes, or Linux refuses it.
            Thread.current.name = "sb-journal"
            self.run()
        }
        thread.start()
    }

    /// Writes and applies everything appended, stops the thread and deletes the applied segments.
    public func close() async {
        await applied()
        let running = condition.withLock { () -> Bool in
            state.closing = true
            condition.signal()
            return state.threadRunning
        }
        guard running else { return }
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let finished = condition.withLock { () -> Bool in
                if !state.threadRunning { return true }
                threadDone = continuation
                return false
            }
            if finished { continuation.resume() }
        }
    }

    // MARK: - Appending and waiting

    /// Applies that failed since the journal opened (each is retried with a back-off; the entries
    /// stay in the journal meanwhile).
    public var failedApplies: Int { condition.withLock { state.failedApplies } }

    /// Entries accepted but not yet in the stores (waiting to be written, written and waiting
    /// for an apply, or being applied).
    public var waitingEntries: Int { condition.withLock { state.pending.count + state.unappliedCount + state.applyingCount } }

    /// Whether more entries wait for the stores than `backlogLimit`: sessions hold new stanzas back.
    public var backedUp: Bool { backlog.withLockedValue { $0 } }

    /// Runs `resume` once the backlog is under `backlogLimit` (at once if it is).
    public func whenCaughtUp(_ resume: @escaping @Sendable () -> Void) {
        let now = condition.withLock { () -> Bool in
            guard state.backedUp else { return true }
            state.caughtUpWaiters.append(resume)
            return false
        }
        if now { resume() }
    }

    /// Updates `backedUp`. Called with the lock held; returns the callbacks to run (unlocked).
    private func updateBacklog() -> [@Sendable () -> Void] {
        let waiting = state.unappliedCount + state.pending.count + state.applyingCount
        let backedUp = waiting > options.backlogLimit || state.waitingBytes > options.backlogBytes
        guard backedUp != state.backedUp else { return [] }
        state.backedUp = backedUp
        backlog.withLockedValue { $0 = backedUp }
        guard !backedUp else {
            state.backlogEpisodes += 1
            // Logged once per hundred episodes: under sustained overload this is the steady state.
            if state.backlogEpisodes % 100 == 1 {
                logger.notice(
                    "message journal backlog: holding client input until the stores catch up",
                    metadata: ["journal.entries": "\(waiting)", "journal.episodes": "\(state.backlogEpisodes)"])
            }
            return []
        }
        var waiters: [@Sendable () -> Void] = []
        swap(&waiters, &state.caughtUpWaiters)
        return waiters
    }

    /// Adds entries to the next batch. Never blocks on disk. (Moved in, not copied, when the
    /// caller passes its last use.)
    public func append(_ entries: consuming [JournalEntry]) {
        guard !entries.isEmpty else { return }
        let bytes = entries.reduce(0) { $0 + $1.byteCount }
        let count = entries.count
        let refused = condition.withLock { () -> Bool in
            // After `close()` nothing writes any more (shutdown waited for the sessions' work).
            guard state.threadRunning || !state.closing else { return true }
            entries.moveEach(leaving: .placeholder) { state.pending.append($0) }
            state.appended += UInt64(count)
            state.waitingBytes += bytes
            // Only ever raised here; it is lowered (and held sessions called back) by the thread.
            if !state.backedUp,
                state.pending.count + state.unappliedCount + state.applyingCount > options.backlogLimit
                    || state.waitingBytes > options.backlogBytes
            {
                state.backedUp = true
                backlog.withLockedValue { $0 = true }
            }
            if state.pending.count == count || state.pending.count >= options.lingerBelow { condition.signal() }
            return false
        }
        if refused {
            logger.error("message journal already closed: entries not stored", metadata: ["journal.entries": "\(count)"])
        }
    }

    /// Returns once everything appended before the call is on disk.
    public func durable() async {
        await wait { state, continuation in
            if state.durable >= state.appended { return true }
            state.durableWaiters.append((state.appended, continuation))
            return false
        }
    }

    /// Returns once everything appended before the call is in the stores (readers call this).
    public func applied() async {
        await wait { state, continuation in
            if state.applied >= state.appended { return true }
            state.appliedWaiters.append((state.appended, continuation))
            state.applyRequested = true
            return false
        }
    }

    private func wait(_ register: (inout State, CheckedContinuation<Void, Never>) -> Bool) async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let done = condition.withLock { () -> Bool in
                // A closed journal has nothing more to wait for.
                if state.closing, !state.threadRunning { return true }
                let done = register(&state, continuation)
                if !done { condition.signal() }
                return done
            }
            if done { continuation.resume() }
        }
    }

    // MARK: - The journal thread

    private func run() {
        condition.lock()
        while true {
            // Sleep until there is something to write, an apply falls due, or we close.
            var finished = false
            while state.pending.isEmpty, !applyDue() {
                if state.closing, !state.applying, state.unapplied.isEmpty {
                    finished = true
                    break
                }
                if state.unapplied.isEmpty || state.applying {
                    condition.wait()
                } else {
                    // An apply that is wanted now (closing, waited for, a full batch) goes as soon
                    // as a failed apply's back-off allows; otherwise at the interval.
                    let due = applyWanted() ? ContinuousClock.now : state.lastApply + options.applyInterval
                    condition.wait(until: max(due, state.applyRetryAt ?? due))
                }
            }
            if finished { break }
            if !state.pending.isEmpty, state.pending.count < options.lingerBelow, !state.applyRequested, !state.closing,
                state.durableWaiters.isEmpty
            {
                condition.wait(until: ContinuousClock.now + options.linger)
            }
            var batch: [JournalEntry] = []
            swap(&batch, &state.pending)
            // The next batch is likely about as big: grow once, not by doubling under the
            // appenders' lock (not much more: the array is kept, spare room too, until applied).
            state.pending.reserveCapacity(max(batch.count + batch.count / 4, options.lingerBelow))
            let upTo = state.appended
            let rotate = state.rotate
            state.rotate = false
            let segment = state.currentSegment
            condition.unlock()

            var written = segment
            var failure: (any Error)?
            let bytes = batch.reduce(0) { $0 + $1.byteCount }
            if !batch.isEmpty {
                do {
                    written = try writeBatch(batch, segment: segment, rotate: rotate || segmentSize >= options.segmentBytes)
                } catch {
                    failure = error
                }
            }

            condition.lock()
            if let failure {
                // Nothing is acknowledged: the batch goes back and is retried with back-off.
                state.writeFailures += 1
                state.pending.insert(contentsOf: batch, at: 0)
                state.rotate = state.rotate || rotate
                logger.error("journal write failed; retrying", metadata: ["error": "\(failure)", "journal.batch": "\(batch.count)"])
                let retry = ContinuousClock.now + .milliseconds(min(5000, 50 * state.writeFailures))
                while ContinuousClock.now < retry { condition.wait(until: retry) }
                continue
            }
            state.writeFailures = 0
            var ready: [CheckedContinuation<Void, Never>] = []
            var caughtUp: [@Sendable () -> Void] = []
            if !batch.isEmpty {
                if written != segment {
                    state.segments[segment]?.closed = true
                    deleteAppliedSegments()
                    state.segments[written] = Segment()
                    state.currentSegment = written
                }
                state.segments[written]?.written += batch.count
                state.unapplied.append(Chunk(entries: batch, segment: written, bytes: bytes))
                state.unappliedCount += batch.count
                state.durable = upTo
                state.unappliedUpTo = state.durable
                ready = takeWaiters(&state.durableWaiters, upTo: state.durable)
                caughtUp = updateBacklog()
            }
            let startApply = applyDue()
            if startApply {
                state.applying = true
                state.applyRequested = false
            }
            condition.unlock()
            for waiter in ready { waiter.resume() }
            for resume in caughtUp { resume() }
            if startApply { Task { await self.applyOnce() } }
            condition.lock()
        }
        state.threadRunning = false
        if fd >= 0 {
            Foundation.close(fd)
            fd = -1
        }
        state.segments[state.currentSegment]?.closed = true
        deleteAppliedSegments()
        let done = threadDone
        threadDone = nil
        condition.unlock()
        done?.resume()
    }

    /// Whether the stores should get the waiting entries now (never during a failed apply's
    /// back-off). Called with the lock held.
    private func applyDue() -> Bool {
        guard !state.applying, !state.unapplied.isEmpty else { return false }
        if let retry = state.applyRetryAt, ContinuousClock.now < retry { return false }
        return applyWanted() || ContinuousClock.now >= state.lastApply + options.applyInterval
    }

    /// Whether an apply is wanted before the interval is up. Called with the lock held.
    private func applyWanted() -> Bool {
        state.closing || state.applyRequested || !state.appliedWaiters.isEmpty || state.unappliedCount >= options.applyAbove
    }

    private func takeWaiters(_ waiters: inout [(UInt64, CheckedContinuation<Void, Never>)], upTo: UInt64) -> [CheckedContinuation<Void, Never>] {
        guard !waiters.isEmpty else { return [] }
        var ready: [CheckedContinuation<Void, Never>] = []
        waiters.removeAll { waiter in
            guard waiter.0 <= upTo else { return false }
            ready.append(waiter.1)
            return true
        }
        return ready
    }

    /// Deletes closed segments whose entries are all applied. Called with the lock held.
    private func deleteAppliedSegments() {
        for (number, segment) in state.segments where segment.closed && segment.applied >= segment.written {
            unlink(segmentPath(number))
            state.segments[number] = nil
        }
    }

    // MARK: - Applying

    private func applyOnce() async {
        let (chunks, upTo, taken) = condition.withLock { () -> ([Chunk], UInt64, Int) in
            // At most `applyAbove` entries at a time: under overload, sessions held back by the
            // backlog limit wait for one such batch, not for everything that piled up.
            var batch: [Chunk] = []
            var taken = 0
            var chunks = 0
            while chunks < state.unapplied.count, taken < options.applyAbove {
                let count = state.unapplied[chunks].entries.count
                guard taken + count > options.applyAbove else {
                    taken += count
                    chunks += 1
                    continue
                }
                // Split the chunk that crosses the cap (the only entries ever copied).
                let cut = options.applyAbove - taken
                let head = Array(state.unapplied[chunks].entries[..<cut])
                let headBytes = head.reduce(0) { $0 + $1.byteCount }
                state.unapplied[chunks].entries.removeFirst(cut)
                state.unapplied[chunks].bytes -= headBytes
                batch.append(Chunk(entries: head, segment: state.unapplied[chunks].segment, bytes: headBytes))
                taken += cut
            }
            batch.insert(contentsOf: state.unapplied[..<chunks], at: 0)
            state.unapplied.removeFirst(chunks)
            state.unappliedCount -= taken
            state.applyingCount = taken
            // The segment being written is closed at the next write, so that it can go once applied.
            state.rotate = true
            return (batch, state.unappliedUpTo - UInt64(state.unappliedCount), taken)
        }
        // The entries are moved out of their chunks (the lists remember which came from which,
        // to give them back if the apply fails).
        var batch = consume chunks
        var lists = StoreLists(capacity: taken)
        for index in batch.indices { lists.take(&batch[index].entries) }
        do {
            guard let stores else { throw ConfigurationError("the journal is not open") }
            try await lists.store(in: stores)
            let ready = condition.withLock { () -> ([CheckedContinuation<Void, Never>], [@Sendable () -> Void]) in
                for (index, chunk) in batch.enumerated() {
                    state.segments[chunk.segment]?.applied += lists.count(ofList: index)
                    state.waitingBytes -= chunk.bytes
                }
                deleteAppliedSegments()
                state.applied = max(state.applied, upTo)
                state.applying = false
                state.applyingCount = 0
                state.applyFailures = 0
                state.applyRetryAt = nil
                state.lastApply = .now
                condition.signal()
                return (takeWaiters(&state.appliedWaiters, upTo: state.applied), updateBacklog())
            }
            for waiter in ready.0 { waiter.resume() }
            for resume in ready.1 { resume() }
        } catch {
            for index in batch.indices {
                batch[index].entries = lists.entries(ofList: index)
            }
            let failures = condition.withLock { () -> Int in
                state.unapplied.insert(contentsOf: batch, at: 0)
                state.unappliedCount += batch.reduce(0) { $0 + $1.entries.count }
                state.applyFailures += 1
                state.failedApplies += 1
                state.applying = false
                state.applyingCount = 0
                // Retry after a back-off (the entries are durable in the journal meanwhile).
                state.applyRetryAt = .now + .milliseconds(min(5000, 50 * state.applyFailures))
                state.lastApply = .now
                condition.signal()
                return state.applyFailures
            }
            logger.error("journal apply failed; retrying", metadata: ["error": "\(error)", "journal.failures": "\(failures)"])
        }
    }

    /// Inserts entries into their stores (idempotently: recovery may repeat an applied entry).
    /// (Moved in: the entries are not copied when the caller passes its last use.)
    package static func store(_ entries: consuming [JournalEntry], in stores: Stores) async throws {
        var taken = entries
        var records = StoreLists(capacity: taken.count)
        records.take(&taken)
        try await records.store(in: stores)
    }

    /// A batch's entries as the stores take them: archive copies and audit records apart.
    /// Entries are moved in, not copied: a copy retains every text an entry holds, and by the
    /// time a batch is applied its entries are out of the CPU's caches, so each of those
    /// reference counts is a memory access.
    struct StoreLists {
        var archive: [ArchiveRecord] = []
        var audit: [AuditRecord] = []
        /// Each taken list's entries, in order: true for an archive copy (to give a failed apply
        /// its entries back as they were).
        private var kinds: [Bool] = []
        /// Where each taken list's entries begin in `kinds`, `archive` and `audit`.
        private var starts: [(entry: Int, archive: Int, audit: Int)] = []

        init(capacity: Int) {
            archive.reserveCapacity(capacity)
            audit.reserveCapacity(capacity / 2)
            kinds.reserveCapacity(capacity)
        }

        /// Moves `entries` in (leaving it empty).
        mutating func take(_ entries: inout [JournalEntry]) {
            starts.append((kinds.count, archive.count, audit.count))
            entries.moveEach(leaving: .placeholder) { add($0) }
        }

        private mutating func add(_ entry: consuming JournalEntry) {
            switch consume entry {
            case .archive(let record):
                archive.append(record)
                kinds.append(true)
            case .audit(let record):
                audit.append(record)
                kinds.append(false)
            }
        }

        /// How many entries the `list`th `take` moved in.
        func count(ofList list: Int) -> Int {
            (list + 1 < starts.count ? starts[list + 1].entry : kinds.count) - starts[list].entry
        }

        /// The entries the `list`th `take` moved in, in their order (copies: what a failed apply
        /// puts back).
        func entries(ofList list: Int) -> [JournalEntry] {
            var (archiveIndex, auditIndex) = (starts[list].archive, starts[list].audit)
            var entries: [JournalEntry] = []
            entries.reserveCapacity(count(ofList: list))
            for entry in starts[list].entry..<(starts[list].entry + count(ofList: list)) {
                if kinds[entry] {
                    entries.append(.archive(archive[archiveIndex]))
                    archiveIndex += 1
                } else {
                    entries.append(.audit(audit[auditIndex]))
                    auditIndex += 1
                }
            }
            return entries
        }

        /// One transaction: an archive copy then shares its audit record's stored text.
        func store(in stores: Stores) async throws {
            if !archive.isEmpty || !audit.isEmpty { try await stores.archive.append(archive, audit: audit) }
        }
    }

    // MARK: - Segment files

    private static let suffix = ".journal"
    /// Frame headers: magic, payload length, CRC-32 of a plain payload (little-endian UInt32 each).
    private static let plainFrame: UInt32 = 0x314A_4253  // "SBJ1": entries as they are
    private static let sealedFrame: UInt32 = 0x324A_4253  // "SBJ2": entries sealed with the data key

    private func segmentPath(_ number: Int) -> String {
        directory + "/" + String(repeating: "0", count: max(0, 10 - String(number).count)) + String(number) + Self.suffix
    }

    private func segmentNumbers() throws -> [Int] {
        let names = try FileManager.default.contentsOfDirectory(atPath: directory)
        return names.compactMap { name in name.hasSuffix(Self.suffix) ? Int(name.dropLast(Self.suffix.count)) : nil }.sorted()
    }

    private func openSegment(_ number: Int) throws {
        let path = segmentPath(number)
        let descriptor = Foundation.open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o600)
        guard descriptor >= 0 else {
            throw ConfigurationError("cannot create the journal segment \(path): \(String(cString: strerror(errno)))")
        }
        fchmod(descriptor, 0o600)
        // The new file's directory entry must be durable before anything in it is acknowledged.
        let directoryFD = Foundation.open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if directoryFD >= 0 {
            fsync(directoryFD)
            Foundation.close(directoryFD)
        }
        if fd >= 0 { Foundation.close(fd) }
        fd = descriptor
        segmentSize = 0
    }

    /// Writes one frame and syncs it; returns the segment it went to (a new one after rotation).
    private func writeBatch(_ batch: [JournalEntry], segment: Int, rotate: Bool) throws -> Int {
        var target = segment
        if rotate {
            target = segment + 1
            try openSegment(target)
        }
        let frame = try Self.frame(batch, cipher: stores?.cipher)
        do {
            try frame.withUnsafeBytes { bytes in
                guard let base = bytes.baseAddress else { return }
                var offset = 0
                while offset < bytes.count {
                    let count = Foundation.write(fd, base + offset, bytes.count - offset)
                    if count < 0 {
                        if errno == EINTR { continue }
                        throw ConfigurationError("journal write failed: \(String(cString: strerror(errno)))")
                    }
                    offset += count
                }
            }
            guard fdatasync(fd) == 0 else { throw ConfigurationError("journal sync failed: \(String(cString: strerror(errno)))") }
        } catch {
            // A partial frame (disk full) must not stay in front of the retried one: cut the
            // segment back to its last complete frame.
            _ = ftruncate(fd, off_t(segmentSize))
            throw error
        }
        segmentSize += frame.count
        return target
    }

    /// A batch as one frame: header, then the entries (sealed with the data key when there is one).
    package static func frame(_ batch: [JournalEntry], cipher: (any FieldCipher)?) throws -> [UInt8] {
        var body = ByteBuffer()
        body.reserveCapacity(batch.count * 512)
        var previousText: String?
        for entry in batch { entry.encode(into: &body, previousText: &previousText) }
        var payload = Array(body.readableBytesView)
        if let cipher { payload = try cipher.seal(payload, context: "journal") }
        var frame: [UInt8] = []
        frame.reserveCapacity(payload.count + 12)
        frame.appendInteger(cipher == nil ? Self.plainFrame : Self.sealedFrame)
        frame.appendInteger(UInt32(payload.count))
        // A sealed payload is authenticated by its GCM tag, which also tells a torn frame.
        frame.appendInteger(cipher == nil ? CRC32.checksum(payload) : 0)
        frame.append(contentsOf: payload)
        return frame
    }

    /// The entries on disk in a journal directory, oldest first (inspection and tests).
    public static func entries(inDirectory directory: String, cipher: (any FieldCipher)?, logger: Logger) throws -> [JournalEntry] {
        let journal = MessageJournal(directory: directory, logger: logger)
        let numbers = try journal.segmentNumbers()
        return try numbers.flatMap { try journal.readSegment(journal.segmentPath($0), cipher: cipher, last: $0 == numbers.last) }
    }

    /// Reads a segment's entries. Only the end of the last segment may hold an incomplete frame
    /// (the process died writing it, before acknowledging anything in it); it is dropped with a
    /// warning. A bad frame anywhere else means acknowledged messages are damaged: refuse to go
    /// on rather than drop them.
    private func readSegment(_ path: String, cipher: (any FieldCipher)?, last: Bool = true) throws -> [JournalEntry] {
        guard let data = FileManager.default.contents(atPath: path) else { return [] }
        let bytes = [UInt8](data)
        var entries: [JournalEntry] = []
        var offset = 0
        while offset < bytes.count, let (payload, end) = try frame(in: bytes, at: offset, cipher: cipher, path: path) {
            var buffer = ByteBuffer(bytes: payload)
            var previousText: String?
            while buffer.readableBytes > 0 { entries.append(try JournalEntry.decode(from: &buffer, previousText: &previousText)) }
            offset = end
        }
        guard offset < bytes.count else { return entries }
        // Torn or damaged? A complete, valid frame further on proves damage.
        let damagedFurtherOn = !last || (offset + 1..<bytes.count).contains { start in
            (try? frame(in: bytes, at: start, cipher: cipher, path: path)) != nil
        }
        if damagedFurtherOn {
            throw ConfigurationError(
                "the journal segment \(path) is damaged at byte \(offset) of \(bytes.count); it holds acknowledged "
                    + "messages: restore it, or move it out of the journal directory to start without them")
        }
        logger.warning(
            "journal segment ends in an incomplete frame (never acknowledged); ignored",
            metadata: ["journal.segment": "\(path)", "journal.bytes": "\(bytes.count - offset)"])
        return entries
    }

    /// The payload of the complete, valid frame at `offset` and where it ends; nil when there is
    /// none (bad magic, length past the end, failed check).
    private func frame(in bytes: [UInt8], at offset: Int, cipher: (any FieldCipher)?, path: String) throws -> ([UInt8], Int)? {
        guard offset + 12 <= bytes.count else { return nil }
        let magic = bytes.readInteger(at: offset)
        guard magic == Self.plainFrame || magic == Self.sealedFrame else { return nil }
        let length = Int(bytes.readInteger(at: offset + 4))
        let start = offset + 12
        guard length <= bytes.count - start else { return nil }
        let payload = Array(bytes[start..<start + length])
        if magic == Self.sealedFrame {
            guard let cipher else {
                throw ConfigurationError(
                    "the journal \(path) is encrypted but encryption is off; turn security.encryption back on to recover it")
            }
            guard let opened = try? cipher.open(payload, context: "journal") else { return nil }
            return (opened, start + length)
        }
        guard CRC32.checksum(payload) == bytes.readInteger(at: offset + 8) else { return nil }
        return (payload, start + length)
    }
}

// MARK: - Encoding

extension JournalEntry {
    /// What an entry holds in memory, roughly: its text and a fixed part (for the backlog limit).
    var byteCount: Int {
        switch self {
        case .archive(let record): return 128 + record.stanza.utf8.count
        case .audit(let record): return 128 + record.stanza.utf8.count + record.attachments.reduce(0) { $0 + $1.utf8.count }
        }
    }

    static let archiveTag: UInt8 = 1
    static let auditTag: UInt8 = 2

    /// A message's archive copies and audit record carry one text: written once per frame,
    /// the entries after it say "the previous entry's text" (a length of `UInt32.max`).
    static let sameText = UInt32.max

    func encode(into buffer: inout ByteBuffer, previousText: inout String?) {
        switch self {
        case .archive(let record):
            buffer.writeInteger(Self.archiveTag)
            buffer.writeInteger(record.id)
            buffer.writeJournalString(record.uid)
            buffer.writeJournalString(record.owner)
            buffer.writeJournalString(record.peer)
            buffer.writeInteger(UInt8(record.outgoing ? 1 : 0))
            buffer.writeInteger(record.time.bitPattern)
            buffer.writeJournalText(record.stanza, previous: &previousText)
        case .audit(let record):
            buffer.writeInteger(Self.auditTag)
            buffer.writeInteger(record.id)
            buffer.writeInteger(record.time.bitPattern)
            buffer.writeJournalString(record.sender)
            buffer.writeJournalStrings(record.recipients)
            buffer.writeJournalString(record.type)
            buffer.writeInteger(UInt8(record.room == nil ? 0 : 1))
            if let room = record.room { buffer.writeJournalString(room) }
            buffer.writeJournalText(record.stanza, previous: &previousText)
            buffer.writeJournalStrings(record.attachments)
        }
    }

    static func decode(from buffer: inout ByteBuffer, previousText: inout String?) throws -> JournalEntry {
        func fail() -> ConfigurationError { ConfigurationError("the journal holds an entry it cannot read") }
        guard let tag: UInt8 = buffer.readInteger() else { throw fail() }
        switch tag {
        case archiveTag:
            guard let id: Int64 = buffer.readInteger(), let uid = buffer.readJournalString(), let owner = buffer.readJournalString(),
                let peer = buffer.readJournalString(), let outgoing: UInt8 = buffer.readInteger(), let time: UInt64 = buffer.readInteger(),
                let stanza = buffer.readJournalText(previous: &previousText)
            else { throw fail() }
            return .archive(
                ArchiveRecord(
                    id: id, uid: uid, owner: owner, peer: peer, outgoing: outgoing == 1, time: Double(bitPattern: time), stanza: stanza))
        case auditTag:
            guard let id: Int64 = buffer.readInteger(), let time: UInt64 = buffer.readInteger(), let sender = buffer.readJournalString(),
                let recipients = buffer.readJournalStrings(), let type = buffer.readJournalString(), let hasRoom: UInt8 = buffer.readInteger()
            else { throw fail() }
            var room: String?
            if hasRoom == 1 {
                guard let name = buffer.readJournalString() else { throw fail() }
                room = name
            }
            guard let stanza = buffer.readJournalText(previous: &previousText), let attachments = buffer.readJournalStrings() else { throw fail() }
            return .audit(
                AuditRecord(
                    id: id, time: Double(bitPattern: time), sender: sender, recipients: recipients, type: type, room: room, stanza: stanza,
                    attachments: attachments))
        default:
            throw fail()
        }
    }
}

extension ByteBuffer {
    fileprivate mutating func writeJournalString(_ string: String) {
        let count = self.writeInteger(UInt32(0))
        let start = writerIndex
        let written = writeString(string)
        setInteger(UInt32(written), at: start - count)
    }

    /// A stanza's text, or a reference to the previous one when it is the same, byte for byte
    /// (String's `==` would also match a canonically equivalent text).
    fileprivate mutating func writeJournalText(_ text: String, previous: inout String?) {
        if let previous, text.hasSameBytes(as: previous) {
            writeInteger(JournalEntry.sameText)
        } else {
            writeJournalString(text)
            previous = text
        }
    }

    fileprivate mutating func writeJournalStrings(_ strings: [String]) {
        writeInteger(UInt32(strings.count))
        for string in strings { writeJournalString(string) }
    }

    fileprivate mutating func readJournalString() -> String? {
        guard let length: UInt32 = readInteger(), let string = readString(length: Int(length)) else { return nil }
        return string
    }

    fileprivate mutating func readJournalText(previous: inout String?) -> String? {
        if getInteger(at: readerIndex, as: UInt32.self) == JournalEntry.sameText {
            moveReaderIndex(forwardBy: 4)
            return previous
        }
        let text = readJournalString()
        if text != nil { previous = text }
        return text
    }

    fileprivate mutating func readJournalStrings() -> [String]? {
        guard let count: UInt32 = readInteger(), Int(count) <= readableBytes / 4 else { return nil }
        var strings: [String] = []
        strings.reserveCapacity(Int(count))
        for _ in 0..<count {
            guard let string = readJournalString() else { return nil }
            strings.append(string)
        }
        return strings
    }
}

extension [UInt8] {
    fileprivate mutating func appendInteger(_ value: UInt32) {
        Swift.withUnsafeBytes(of: value.littleEndian) { append(contentsOf: $0) }
    }

    fileprivate func readInteger(at offset: Int) -> UInt32 {
        var value: UInt32 = 0
        for index in 0..<4 { value |= UInt32(self[offset + index]) << (8 * index) }
        return value
    }
}

/// CRC-32 (IEEE), to tell a complete journal frame from a torn one.
enum CRC32 {
    private static let table: [UInt32] = (0..<256).map { index in
        var crc = UInt32(index)
        for _ in 0..<8 { crc = crc & 1 == 1 ? (crc >> 1) ^ 0xEDB8_8320 : crc >> 1 }
        return crc
    }

    static func checksum(_ bytes: [UInt8]) -> UInt32 {
        var crc: UInt32 = 0xFFFF_FFFF
        bytes.withUnsafeBufferPointer { buffer in
            for byte in buffer { crc = table[Int((crc ^ UInt32(byte)) & 0xFF)] ^ (crc >> 8) }
        }
        return crc ^ 0xFFFF_FFFF
    }
}

/// A mutex with a condition variable (the journal thread sleeps on it).
final class ConditionVariable: @unchecked Sendable {
    private var mutex = pthread_mutex_t()
    private var cond = pthread_cond_t()

    init() {
        pthread_mutex_init(&mutex, nil)
        var attributes = pthread_condattr_t()
        pthread_condattr_init(&attributes)
        pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)
        pthread_cond_init(&cond, &attributes)
        pthread_condattr_destroy(&attributes)
    }

    deinit {
        pthread_cond_destroy(&cond)
        pthread_mutex_destroy(&mutex)
    }

    func lock() { pthread_mutex_lock(&mutex) }
    func unlock() { pthread_mutex_unlock(&mutex) }
    func signal() { pthread_cond_signal(&cond) }
    func wait() { pthread_cond_wait(&cond, &mutex) }

    /// Waits until signalled or the deadline passes: the time left by `ContinuousClock`, added to
    /// CLOCK_MONOTONIC (the condition's clock).
    func wait(until deadline: ContinuousClock.Instant) {
        let remaining = ContinuousClock.now.duration(to: deadline)
        guard remaining > .zero else { return }
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        let (seconds, attoseconds) = remaining.components
        var nanoseconds = Int(now.tv_nsec) + Int(attoseconds / 1_000_000_000)
        var wholeSeconds = Int(now.tv_sec) + Int(seconds)
        if nanoseconds >= 1_000_000_000 {
            wholeSeconds += 1
            nanoseconds -= 1_000_000_000
        }
        var target = timespec(tv_sec: wholeSeconds, tv_nsec: nanoseconds)
        pthread_cond_timedwait(&cond, &mutex, &target)
    }

    func withLock<T>(_ body: () throws -> T) rethrows -> T {
        lock()
        defer { unlock() }
        return try body()
    }
}
