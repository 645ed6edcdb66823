import Assembly
import Foundation
import Logging
import Modules
import SQLiteStorage
import Server
import ServiceLifecycle
import Storage

/// The real server, started in-process on free loopback ports with a temporary data directory.
///
/// ```swift
/// let server = try await TestServer.start { $0.c2s.requireTLS = false }
/// defer { Task { await server.stop() } }
/// try await server.addUser("alice", password: "secret")
/// ```
public final class TestServer: Sendable {
    public let server: XMPPServer
    public let ports: XMPPServer.BoundPorts
    public let dataDirectory: String
    public let stores: SQLiteStores
    private let group: ServiceGroup
    private let task: Task<Void, any Error>

    public var domain: String { server.context.domain }

    private init(
        server: XMPPServer, ports: XMPPServer.BoundPorts, dataDirectory: String, stores: SQLiteStores,
        group: ServiceGroup, task: Task<Void, any Error>
    ) {
        self.server = server
        self.ports = ports
        self.dataDirectory = dataDirectory
        self.stores = stores
        self.group = group
        self.task = task
    }

    /// Starts a server on 127.0.0.1 with every listener on port 0.
    /// - Parameter dataDirectory: reuse a data directory (restart tests); default a new one.
    public static func start(
        domain: String = "example.test",
        dataDirectory: String? = nil,
        logger: Logger? = nil,
        configure: (inout ServerConfiguration) -> Void = { _ in }
    ) async throws -> TestServer {
        let directory = dataDirectory ?? FileManager.default.temporaryDirectory
            .appendingPathComponent("switchboard-test-\(UUID().uuidString)").path
        var configuration = ServerConfiguration()
        configuration.domain = domain
        configuration.dataDir = directory
        configuration.bootstrapAdmin = false
        configuration.c2s = .init(bind: "127.0.0.1", port: 0)
        configuration.c2sDirectTLS = .init(bind: "127.0.0.1", port: 0)
        configuration.http = .init(bind: "127.0.0.1", port: 0)
        configure(&configuration)
        let given = logger
        var logger = given ?? Logger(label: "switchboard.test")
        if given == nil {
            logger.logLevel = ProcessInfo.processInfo.environment["SWITCHBOARD_TEST_LOG"].flatMap { Logger.Level(rawValue: $0) } ?? .critical
        }
        let (stores, _) = try await ServerAssembly.openStores(configuration)
        let server = try XMPPServer(
            configuration: configuration, stores: stores.stores, modules: BuiltinModules.all(configuration), logger: logger)
        let group = ServiceGroup(services: [server], logger: logger)
        let task = Task { try await group.run() }
        let ports = try await server.waitUntilBound()
        return TestServer(server: server, ports: ports, dataDirectory: directory, stores: stores, group: group, task: task)
    }

    /// Creates an account with SCRAM credentials.
    public func addUser(_ username: String, password: String) async throws {
        try await stores.createAccount(
            Account(username: username, credentials: try StoredCredentials.derive(password: password), createdAt: Date().timeIntervalSince1970))
    }

    /// Waits until every message accepted so far is in the stores (the message journal applies
    /// in the background; tests that read `stores` directly call this first).
    public func applied() async {
        // A message a client received may still be in its sender's loop, its entries not yet
        // journaled.
        await server.settle()
        await server.context.journal.applied()
    }

    /// The message-journal entries on disk now: durable, whether applied or not.
    public func journalEntries() throws -> [JournalEntry] {
        try MessageJournal.entries(inDirectory: server.context.journal.directory, cipher: stores.cipher, logger: server.context.logger)
    }

    /// Graceful shutdown, then removes the data directory unless `keepData` (to restart on it).
    public func stop(keepData: Bool = false) async {
        await group.triggerGracefulShutdown()
        _ = await task.result
        if !keepData { try? FileManager.default.removeItem(atPath: dataDirectory) }
    }
}

extension TestServer {
    /// A new plain-TCP connection to the c2s listener (not logged in).
    public func connect() async throws -> TestClient {
        try await TestClient.connect(port: ports.c2s ?? 0, domain: domain)
    }

    /// A client logged in as `user/resource` over plain TCP that has sent its initial presence
    /// and seen it echoed (so it receives messages to the bare JID from then on).
    public func online(_ user: String, _ resource: String, password: String = "pw") async throws -> TestClient {
        let client = try await connect()
        try await client.login(user, password: password, resource: resource)
        try await client.send("<presence/>")
        _ = try await client.next { $0.name == "presence" && $0[attribute: "from"] == "\(user)@\(domain)/\(resource)" }
        return client
    }
}

extension TestServer {
    /// Fails `times` logins of `user` with a wrong password, each on its own connection; returns
    /// how many were refused (all of them, unless something is wrong).
    @discardableResult
    public func failLogins(_ user: String, times: Int) async throws -> Int {
        var refused = 0
        for _ in 0..<times {
            let client = try await connect()
            do {
                try await client.login(user, password: "wrong-\(UUID().uuidString)")
            } catch is TestClientError {
                refused += 1
            }
            await client.close()
        }
        return refused
    }
}

extension TestServer {
    /// Waits until the running server has applied the directory as it is in the database now
    /// (it polls the version; the tree IQ answers with the version it serves), asking through `client`.
    public func waitForDirectory(_ client: TestClient, timeout: Duration = .seconds(30)) async throws {
        let version = try await stores.directoryVersion()
        var attempt = 0
        let reached = try await eventually(timeout: timeout, every: .milliseconds(50)) {
            attempt += 1
            try await client.send("<iq type='get' id='dv\(attempt)' to='\(domain)'><units xmlns='urn:switchboard:org:0'/></iq>")
            let result = try await client.next { $0.id == "dv\(attempt)" }
            return result.child("units")?[attribute: "version"].flatMap(Int64.init).map { $0 >= version } ?? false
        }
        guard reached else { throw TestClientError("the server never reached directory version \(version)") }
    }
}
