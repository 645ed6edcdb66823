import ArgumentParser
import Assembly
import Foundation
import Server
import Storage

/// `switchboard bench`: measurements of the server's own parts, in this process, without a
/// network. The side-by-side benchmark against other servers is `bench/compare.sh`.
struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure parts of the server in this process (for developers; see bench/README.md).",
        discussion: """
            These commands time one part of the message path in isolation, on a temporary database, \
            so that a change to it can be compared run against run without the noise of a whole \
            server under load. The side-by-side benchmark against other XMPP servers is \
            bench/compare.sh with the switchboard-bench load generator.
            """,
        subcommands: [Store.self])

    struct Store: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "CPU per message of the message journal's storage work.",
            discussion: """
                Builds the journal entries the router makes for 1:1 messages between local users \
                (two archive copies and an audit record each), then, in rounds, writes them as \
                journal frames (encoding and sealing, without the file write) and applies them to a \
                fresh database in a temporary directory with encryption on (the default \
                configuration), as the server's journal does. Prints the process CPU time per \
                message of each part, every round and the minimum over the rounds after the first \
                (the least disturbed by other processes).

                Example: switchboard bench store --users 1000 --apply 21845 --rounds 8
                """)

        @Option(help: "Users exchanging messages.")
        var users = 1000

        @Option(help: "Messages per apply (the journal applies 65,536 entries, 21,845 messages, at a time under load).")
        var apply = 21_845

        @Option(help: "Messages per journal frame (what one write and fsync carries).")
        var frame = 64

        @Option(help: "Applies timed; the first warms the caches and is left out of the minimum.")
        var rounds = 8

        @Option(help: "Bytes of message body.")
        var bodySize = 64

        @Flag(help: "Every message goes to a random user (default: each user writes to one fixed partner, as the load generator does).")
        var random = false

        @Option(help: "Directory for the database (default: a new temporary directory, removed at the end).")
        var directory: String?

        func validate() throws {
            guard users >= 2 else { throw ValidationError("--users must be at least 2") }
            guard apply >= 1, frame >= 1, rounds >= 1, bodySize >= 0 else {
                throw ValidationError("--apply, --frame and --rounds must be at least 1, --body-size at least 0")
            }
        }

        func run() async throws {
            try await withConfigurationErrors {
                let fileManager = FileManager.default
                let base = directory ?? NSTemporaryDirectory() + "switchboard-bench-store-\(getpid())"
                try fileManager.createDirectory(atPath: base, withIntermediateDirectories: true)
                defer { if directory == nil { try? fileManager.removeItem(atPath: base) } }
                var configuration = ServerConfiguration()
                configuration.dataDir = base
                let stores = try await ServerAssembly.openStores(configuration).0.stores
                let cipher = stores.cipher

                var generator = SystemRandomNumberGenerator()
                let body = String(repeating: "x", count: bodySize)
                let domain = "bench.test"
                // One text per user, as a session's bare JID is (the router hands the same text out).
                let jids = (0..<users).map { "bench\($0)@\(domain)" }
                func round() -> [JournalEntry] {
                    var entries: [JournalEntry] = []
                    entries.reserveCapacity(apply * 3)
                    for index in 0..<apply {
                        let from = Int.random(in: 0..<users, using: &generator)
                        let to = random ? (from + Int.random(in: 1..<users, using: &generator)) % users : from ^ 1 == users ? from - 1 : from ^ 1
                        let sender = jids[from]
                        let recipient = jids[to]
                        let incoming = ArchiveIDGenerator.shared.next()
                        let outgoing = ArchiveIDGenerator.shared.next()
                        let uid = ArchiveIDGenerator.uid(position: incoming)
                        // One text shared by the three entries, as the router's serialisation is.
                        let text = "<message xmlns='jabber:client' to='\(recipient)' type='chat' id='m\(index)' from='\(sender)/bench'>"
                            + "<body>\(body)</body><stanza-id xmlns='urn:xmpp:sid:0' id='\(uid)' by='\(recipient)'/></message>"
                        let time = Date().timeIntervalSince1970
                        entries.append(.archive(ArchiveRecord(id: incoming, uid: uid, owner: recipient, peer: sender, outgoing: false, time: time, stanza: text)))
                        entries.append(
                            .archive(
                                ArchiveRecord(
                                    id: outgoing, uid: ArchiveIDGenerator.uid(position: outgoing), owner: sender, peer: recipient, outgoing: true,
                                    time: time, stanza: text)))
                        entries.append(
                            .audit(
                                AuditRecord(
                                    id: ArchiveIDGenerator.shared.next(), time: time, sender: sender, recipients: [recipient], type: "chat",
                                    stanza: text)))
                    }
                    return entries
                }

                print("store: \(users) users, \(random ? "random partners" : "fixed pairs"), \(apply) messages per apply, frames of \(frame), body \(bodySize) B, encryption \(cipher == nil ? "off" : "on")")
                var frameCosts: [Double] = []
                var applyCosts: [Double] = []
                for number in 1...rounds {
                    let entries = round()
                    let perFrame = frame * 3
                    let framing = try await processCPU {
                        var start = 0
                        while start < entries.count {
                            let end = min(start + perFrame, entries.count)
                            _ = try MessageJournal.frame(Array(entries[start..<end]), cipher: cipher)
                            start = end
                        }
                    }
                    // Moved into the apply, as the journal moves its batches (the round's count kept).
                    let before = processCPUSeconds()
                    try await MessageJournal.store(consume entries, in: stores)
                    let applying = processCPUSeconds() - before
                    let frameMicros = framing * 1e6 / Double(apply)
                    let applyMicros = applying * 1e6 / Double(apply)
                    print(String(format: "round %d: frames %.2f µs/msg, apply %.2f µs/msg", number, frameMicros, applyMicros))
                    if number > 1 || rounds == 1 {
                        frameCosts.append(frameMicros)
                        applyCosts.append(applyMicros)
                    }
                }
                let stored = try await stores.archive.archiveCount(owner: "bench0@\(domain)")
                guard stored > 0 else { throw StorageError.backend("the apply stored nothing") }
                print(
                    String(
                        format: "store: frames min %.2f median %.2f µs/msg; apply min %.2f median %.2f µs/msg",
                        frameCosts.min() ?? 0, median(frameCosts), applyCosts.min() ?? 0, median(applyCosts)))
            }
        }

        private func median(_ values: [Double]) -> Double {
            guard !values.isEmpty else { return 0 }
            let sorted = values.sorted()
            return sorted.count % 2 == 1 ? sorted[sorted.count / 2] : (sorted[sorted.count / 2 - 1] + sorted[sorted.count / 2]) / 2
        }
    }
}

/// User + system CPU seconds of this process (every thread) spent in `body`.
private func processCPU(_ body: () async throws -> Void) async rethrows -> Double {
    let before = processCPUSeconds()
    try await body()
    return processCPUSeconds() - before
}

private func processCPUSeconds() -> Double {
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    return Double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) + Double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6
}
