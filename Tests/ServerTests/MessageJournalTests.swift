import Assembly
import Foundation
import Logging
@testable import SQLiteStorage
import Server
import Storage
import SwitchboardTestSupport
import Testing

/// The message journal on its own, against the real SQLite stores and key ring: what was
/// acknowledged as durable survives a crash, exactly once; a torn frame is dropped; nothing on
/// disk is readable without the key.
@Suite struct MessageJournalTests {
    let logger = Logger(label: "switchboard.test.journal")

    func configuration() -> ServerConfiguration {
        var configuration = ServerConfiguration()
        configuration.dataDir = FileManager.default.temporaryDirectory.appendingPathComponent("journal-test-\(UUID().uuidString)").path
        return configuration
    }

    /// Options under which a journal never applies by itself: entries stay in the segments, as
    /// when the process dies between the journal's fsync and the next apply.
    var neverApplies: MessageJournal.Options {
        var options = MessageJournal.Options()
        options.applyInterval = .seconds(3600)
        options.applyAbove = .max
        return options
    }

    /// A journal that wrote `batches` (each made durable) and then "crashed": nothing applied.
    func journalThatCrashed(after batches: [[JournalEntry]]) async throws -> (ServerConfiguration, SQLiteStores, MessageJournal) {
        let configuration = configuration()
        let (stores, _) = try await ServerAssembly.openStores(configuration)
        let journal = MessageJournal(directory: configuration.dataDir + "/journal", logger: logger, options: neverApplies)
        try await journal.open(stores: stores.stores)
        for batch in batches {
            journal.append(batch)
            await journal.durable()
        }
        return (configuration, stores, journal)
    }

    /// Stores and an open journal that starts a new segment every 4 KiB and applies at most 50
    /// entries at a time (several applies per `applied()`, splitting written chunks).
    func smallBatchJournal(_ configuration: ServerConfiguration) async throws -> (SQLiteStores, MessageJournal) {
        let (stores, _) = try await ServerAssembly.openStores(configuration)
        var options = MessageJournal.Options()
        options.segmentBytes = 4096
        options.applyAbove = 50
        let journal = MessageJournal(directory: configuration.dataDir + "/journal", logger: logger, options: options)
        try await journal.open(stores: stores.stores)
        return (stores, journal)
    }

    /// The only segment file of a journal.
    func onlySegment(of journal: MessageJournal) throws -> String {
        let segments = try FileManager.default.contentsOfDirectory(atPath: journal.directory).filter { $0.hasSuffix(".journal") }
        #expect(segments.count == 1)
        return journal.directory + "/" + (segments.first ?? "")
    }

    func entries(_ count: Int, owner: String, body: String = "hello") -> [JournalEntry] {
        (0..<count).flatMap { index -> [JournalEntry] in
            let id = ArchiveIDGenerator.shared.next()
            let stanza = "<message xmlns='jabber:client' from='\(owner)/x' to='bob@example.test'><body>\(body) \(index)</body></message>"
            return [
                .archive(
                    ArchiveRecord(
                        id: id, uid: ArchiveIDGenerator.uid(), owner: owner, peer: "bob@example.test", outgoing: true,
                        time: Date().timeIntervalSince1970, stanza: stanza)),
                .audit(
                    AuditRecord(
                        id: ArchiveIDGenerator.shared.next(), time: Date().timeIntervalSince1970, sender: owner,
                        recipients: ["bob@example.test"], type: "chat", stanza: stanza)),
            ]
        }
    }

    @Test func durableEntriesSurviveACrashExactlyOnce() async throws {
        let batch = entries(300, owner: "alice@example.test", body: "secret-journal-text")
        let (configuration, stores, crashed) = try await journalThatCrashed(after: [batch])
        defer { try? FileManager.default.removeItem(atPath: configuration.dataDir) }
        // Read back as written; a message's text is on disk once, not once per entry.
        #expect(try MessageJournal.entries(inDirectory: crashed.directory, cipher: stores.cipher, logger: logger) == batch)
        let text = batch.first.map { entry -> Int in if case .archive(let record) = entry { return record.stanza.utf8.count } else { return 0 } } ?? 0
        let size = try FileManager.default.attributesOfItem(atPath: try onlySegment(of: crashed))[.size] as? Int ?? .max
        #expect(text > 90 && size < 300 * (text + 200), "\(size) bytes for 300 messages of \(text) bytes")
        #expect(try await stores.archiveCount(owner: "alice@example.test") == 0)
        #expect(try await stores.auditCount() == 0)

        // Nothing on disk shows the message: the journal's frames are sealed too.
        for name in try FileManager.default.contentsOfDirectory(atPath: crashed.directory) {
            let data = try Data(contentsOf: URL(fileURLWithPath: crashed.directory + "/" + name))
            #expect(data.range(of: Data("secret-journal-text".utf8)) == nil, "\(name) holds plaintext")
        }

        // A new process over the same directory: recovery stores everything before it opens.
        let restarted = MessageJournal(directory: configuration.dataDir + "/journal", logger: logger)
        try await restarted.open(stores: stores.stores)
        #expect(try await stores.archiveCount(owner: "alice@example.test") == 300)
        #expect(try await stores.auditCount() == 300)
        // Applying the same entries again (the old process applying late) stores nothing twice.
        await crashed.close()
        #expect(try await stores.archiveCount(owner: "alice@example.test") == 300)
        #expect(try await stores.auditCount() == 300)
        await restarted.close()
        #expect(try MessageJournal.entries(inDirectory: restarted.directory, cipher: stores.cipher, logger: logger).isEmpty)
    }

    @Test func aTornFrameAtTheEndIsDroppedAndTheRestRecovered() async throws {
        let (configuration, stores, crashed) = try await journalThatCrashed(
            after: [entries(10, owner: "alice@example.test"), entries(5, owner: "carol@example.test")])
        defer { try? FileManager.default.removeItem(atPath: configuration.dataDir) }
        // The process died in the middle of writing a third frame.
        let path = try onlySegment(of: crashed)
        let handle = try #require(FileHandle(forWritingAtPath: path))
        try handle.seekToEnd()
        try handle.write(contentsOf: [0x53, 0x42, 0x4A, 0x32, 0xFF, 0x00, 0x00, 0x00, 1, 2, 3])
        try handle.close()

        let restarted = MessageJournal(directory: configuration.dataDir + "/journal", logger: logger)
        try await restarted.open(stores: stores.stores)
        #expect(try await stores.archiveCount(owner: "alice@example.test") == 10)
        #expect(try await stores.archiveCount(owner: "carol@example.test") == 5)
        #expect(try await stores.auditCount() == 15)
        await restarted.close()
    }

    @Test(arguments: [false, true])
    func aBacklogHoldsInputUntilTheStoresCatchUp(bigMessages: Bool) async throws {
        let configuration = configuration()
        defer { try? FileManager.default.removeItem(atPath: configuration.dataDir) }
        let (stores, _) = try await ServerAssembly.openStores(configuration)
        var options = neverApplies
        // Bounded by the number of entries, and by their bytes (a few large stanzas).
        if bigMessages { options.backlogBytes = 100_000 } else { options.backlogLimit = 50 }
        let journal = MessageJournal(directory: configuration.dataDir + "/journal", logger: logger, options: options)
        try await journal.open(stores: stores.stores)
        let body = bigMessages ? String(repeating: "x", count: 20_000) : "hi"
        journal.append(entries(2, owner: "alice@example.test", body: body))
        #expect(!journal.backedUp)
        journal.append(entries(bigMessages ? 2 : 30, owner: "alice@example.test", body: body))
        #expect(journal.backedUp)
        await journal.applied()
        #expect(!journal.backedUp)
        #expect(try await stores.archiveCount(owner: "alice@example.test") == (bigMessages ? 4 : 32))
        await journal.close()
    }

    /// An apply that fails (the database refuses the rows) is retried with everything it held,
    /// in batches split at the cap as before, until it succeeds: nothing lost, nothing twice, and
    /// the segments go once applied.
    @Test func aFailedApplyIsRetriedWithNothingLostOrDoubled() async throws {
        let configuration = configuration()
        defer { try? FileManager.default.removeItem(atPath: configuration.dataDir) }
        let (stores, journal) = try await smallBatchJournal(configuration)
        try await refuseAuditRecords(in: stores)
        for _ in 1...3 {
            journal.append(entries(15, owner: "alice@example.test"))
            await journal.durable()
        }
        let applied = Task { await journal.applied() }
        #expect(await eventually { journal.failedApplies >= 2 })
        #expect(try await stores.auditCount() == 0)
        try await refuseAuditRecords(in: stores, false)
        await applied.value
        #expect(try await stores.archiveCount(owner: "alice@example.test") == 45)
        #expect(try await stores.auditCount() == 45)
        let texts = try await stores.archiveDatabase.run { db in
            try db.query("SELECT (SELECT count(DISTINCT id) FROM audit_records), (SELECT count(content) FROM archive)") { [$0.int(0), $0.int(1)] }.first
        }
        // Every message's copy still shares its audit record's text: the entries went back as
        // they were.
        #expect(texts == [45, 45])
        await journal.close()
        #expect(try FileManager.default.contentsOfDirectory(atPath: journal.directory).filter { $0.hasSuffix(".journal") }.isEmpty)
        #expect(try await stores.archiveCount(owner: "alice@example.test") == 45)
    }

    @Test func appliedMeansReadableAndSegmentsGoOnceApplied() async throws {
        let configuration = configuration()
        defer { try? FileManager.default.removeItem(atPath: configuration.dataDir) }
        let (stores, journal) = try await smallBatchJournal(configuration)
        for round in 1...20 {
            journal.append(entries(20, owner: "alice@example.test"))
            if round % 5 == 0 {
                await journal.applied()
                #expect(try await stores.archiveCount(owner: "alice@example.test") == round * 20)
            }
        }
        await journal.applied()
        // Applied segments are deleted; at most the one being written remains.
        let segments = try FileManager.default.contentsOfDirectory(atPath: journal.directory).filter { $0.hasSuffix(".journal") }
        #expect(segments.count <= 1, "\(segments)")
        await journal.close()
        #expect(try FileManager.default.contentsOfDirectory(atPath: journal.directory).filter { $0.hasSuffix(".journal") }.isEmpty)
        #expect(try await stores.archiveCount(owner: "alice@example.test") == 400)
        #expect(try await stores.auditCount() == 400)
    }

    @Test func aJournalWrittenWithEncryptionNeedsTheKeyToRecover() async throws {
        let (configuration, stores, _) = try await journalThatCrashed(after: [entries(3, owner: "alice@example.test")])
        defer { try? FileManager.default.removeItem(atPath: configuration.dataDir) }
        var plain = configuration
        plain.security.encryption = false
        let (plainStores, _) = try await ServerAssembly.openStores(plain)
        let restarted = MessageJournal(directory: configuration.dataDir + "/journal", logger: logger)
        await #expect(throws: ConfigurationError.self) { try await restarted.open(stores: plainStores.stores) }
        #expect(try await stores.archiveCount(owner: "alice@example.test") == 0)
    }
}

extension MessageJournalTests {
    /// Byte 5: the first frame's length (a header that no longer fits); byte 40: inside its
    /// sealed payload. Either way a good frame follows, so it is damage, not a torn tail.
    @Test(arguments: [5, 40])
    func damageBeforeTheEndStopsRecoveryInsteadOfDroppingMessages(at byte: Int) async throws {
        let (configuration, stores, crashed) = try await journalThatCrashed(
            after: [entries(4, owner: "alice@example.test"), entries(4, owner: "carol@example.test")])
        defer { try? FileManager.default.removeItem(atPath: configuration.dataDir) }
        let path = try onlySegment(of: crashed)
        var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        bytes[byte] ^= 0xFF
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        let restarted = MessageJournal(directory: configuration.dataDir + "/journal", logger: logger)
        await #expect(throws: ConfigurationError.self) { try await restarted.open(stores: stores.stores) }
        #expect(FileManager.default.fileExists(atPath: path), "the damaged segment is kept for the admin")
    }
}
