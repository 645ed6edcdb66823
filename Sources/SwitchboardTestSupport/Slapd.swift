import Crypto
import Foundation
import SwiftASN1
import X509

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A real OpenLDAP `slapd`, started by a test on free loopback ports with its own temporary
/// directory, loaded from an LDIF, with the `syncprov` overlay for RFC 4533 tests.
///
/// ```swift
/// let slapd = try await SlapdServer.start(ldif: SlapdServer.companyLDIF, tls: true)
/// defer { slapd.stop() }
/// try await slapd.modify(ldif: "dn: uid=zhangwei,...\nchangetype: modify\nreplace: title\ntitle: 总监\n")
/// ```
///
/// Needs the Debian packages `slapd` and `ldap-utils` (scripts/test.sh installs them). The
/// server and every helper process end with `stop()` (SIGKILL: the data is throw-away), and a
/// watchdog kills slapd within a second if the test process dies first.
public final class SlapdServer: @unchecked Sendable {  // immutable after start; Process is thread-safe for the calls made here
    public static let slapdPath = "/usr/sbin/slapd"
    public static let slapaddPath = "/usr/sbin/slapadd"
    public static let ldapmodifyPath = "/usr/bin/ldapmodify"
    public static let modulePath = "/usr/lib/ldap"
    public static let schemaPath = "/etc/ldap/schema"

    public let baseDN = "dc=example,dc=com"
    public let adminDN = "cn=admin,dc=example,dc=com"
    public let adminPassword = "admin-secret"
    public let port: Int
    public let tlsPort: Int?
    /// The CA that signed the server certificate (PEM), when started with `tls: true`.
    public let caPath: String?
    public let directory: URL

    private let process: Process
    private let watchdog: Process

    /// `ldap://127.0.0.1:PORT`
    public var url: String { "ldap://127.0.0.1:\(port)" }
    /// `ldaps://127.0.0.1:PORT`, when started with `tls: true`.
    public var ldapsURL: String? { tlsPort.map { "ldaps://127.0.0.1:\($0)" } }
    public var pid: Int32 { process.processIdentifier }

    /// Tests/Fixtures/ldap/company.ldif of this repository.
    public static var companyLDIF: URL {
        URL(fileURLWithPath: #filePath)
            .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Tests/Fixtures/ldap/company.ldif")
    }

    public struct Failure: Error, CustomStringConvertible {
        public let description: String
        init(_ description: String) { self.description = description }
    }

    private init(port: Int, tlsPort: Int?, caPath: String?, directory: URL, process: Process, watchdog: Process) {
        self.port = port
        self.tlsPort = tlsPort
        self.caPath = caPath
        self.directory = directory
        self.process = process
        self.watchdog = watchdog
    }

    /// Starts slapd with the entries of `ldif` (a file) loaded.
    ///
    /// - Parameters:
    ///   - tls: also listen on LDAPS and accept StartTLS, with a certificate for 127.0.0.1 signed
    ///     by a fresh CA (`caPath`).
    ///   - syncprov: load the RFC 4533 provider overlay.
    ///   - sessionLog: give syncprov a session log, so incremental refreshes report deletions
    ///     as UUIDs (delete phase); without one slapd answers with a present phase.
    ///   - sizeLimit: nil for unlimited searches; otherwise ordinary searches stop at this many
    ///     entries while paged searches may return any number (like Active Directory's MaxPageSize).
    ///   - certificateNames: the subject alternative names of the server certificate (IP
    ///     literals become IP SANs); leave out 127.0.0.1 to test hostname verification.
    public static func start(
        ldif: URL, tls: Bool = false, syncprov: Bool = true, sessionLog: Bool = true, sizeLimit: Int? = nil,
        certificateNames: [String] = ["127.0.0.1", "localhost"]
    ) async throws -> SlapdServer {
        try await start(
            ldifText: String(contentsOf: ldif, encoding: .utf8), tls: tls, syncprov: syncprov, sessionLog: sessionLog,
            sizeLimit: sizeLimit, certificateNames: certificateNames)
    }

    /// Starts slapd with the entries of `ldif` (LDIF text) loaded.
    public static func start(
        ldifText ldif: String, tls: Bool = false, syncprov: Bool = true, sessionLog: Bool = true, sizeLimit: Int? = nil,
        certificateNames: [String] = ["127.0.0.1", "localhost"]
    ) async throws -> SlapdServer {
        for path in [slapdPath, slapaddPath, ldapmodifyPath] where !FileManager.default.isExecutableFile(atPath: path) {
            throw Failure("\(path) not found: install OpenLDAP with scripts/test.sh (apt-get install slapd ldap-utils)")
        }
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("switchboard-slapd-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory.appendingPathComponent("db"), withIntermediateDirectories: true)
        do {
            var caPath: String?
            if tls {
                caPath = try TestCertificateAuthority.writeServerCertificate(in: directory, names: certificateNames)
            }
            let server = SlapdServer.Config(
                directory: directory, tls: tls, syncprov: syncprov, sessionLog: sessionLog, sizeLimit: sizeLimit)
            try server.write()
            let ldifPath = directory.appendingPathComponent("data.ldif")
            try ldif.write(to: ldifPath, atomically: true, encoding: .utf8)
            _ = try await offloaded { try run(slapaddPath, ["-q", "-f", server.confPath, "-l", ldifPath.path]) }

            // A free port can be taken between our probe and slapd's bind: retry a few times.
            var lastError: (any Error)?
            for _ in 0..<3 {
                let port = try freePort()
                let tlsPort = tls ? try freePort() : nil
                var urls = "ldap://127.0.0.1:\(port)/"
                if let tlsPort { urls += " ldaps://127.0.0.1:\(tlsPort)/" }
                let log = directory.appendingPathComponent("slapd.log")
                _ = FileManager.default.createFile(atPath: log.path, contents: nil)
                let process = Process()
                process.executableURL = URL(fileURLWithPath: slapdPath)
                // -d 0: stay in the foreground (no fork), so the PID we hold is slapd's.
                process.arguments = ["-d", "0", "-f", server.confPath, "-h", urls]
                process.standardOutput = FileHandle.nullDevice
                process.standardError = try FileHandle(forWritingTo: log)
                try process.run()
                let watchdog = try startWatchdog(for: process.processIdentifier)
                let slapd = SlapdServer(
                    port: port, tlsPort: tlsPort, caPath: caPath, directory: directory, process: process, watchdog: watchdog)
                do {
                    try await slapd.waitUntilListening(ports: [port] + (tlsPort.map { [$0] } ?? []), log: log)
                    return slapd
                } catch {
                    lastError = error
                    await offloaded { slapd.shutDown(keepDirectory: true) }
                }
            }
            throw lastError ?? Failure("slapd did not start")
        } catch {
            try? FileManager.default.removeItem(at: directory)
            throw error
        }
    }

    /// Applies changes with `ldapmodify` as the admin (changetype add/modify/modrdn/delete;
    /// records without a changetype are modifications).
    public func modify(ldif: String) async throws {
        let file = directory.appendingPathComponent("change-\(UUID().uuidString).ldif")
        try ldif.write(to: file, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(at: file) }
        let arguments = ["-x", "-H", url, "-D", adminDN, "-w", adminPassword, "-f", file.path]
        _ = try await Self.offloaded { try Self.run(Self.ldapmodifyPath, arguments) }
    }

    /// SIGSTOP: the server keeps its sockets but answers nothing (a hung directory).
    public func suspend() {
        let pid = process.processIdentifier
        _ = kill(pid, SIGSTOP)
        // Signals are delivered asynchronously: wait until the kernel reports it stopped ('T'),
        // so a request sent right after cannot still be answered.
        for _ in 0..<200 {
            if let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
                let close = stat.lastIndex(of: ")"), stat[stat.index(after: close)...].trimmingCharacters(in: .whitespaces).hasPrefix("T")
            {
                return
            }
            usleep(5_000)
        }
    }

    /// SIGCONT after `suspend()`.
    public func resume() { _ = kill(process.processIdentifier, SIGCONT) }

    /// SIGKILL: the directory dies without a goodbye (its sockets are closed by the kernel).
    public func crash() { _ = kill(process.processIdentifier, SIGKILL) }

    /// Kills slapd and its watchdog, and removes the temporary directory. Returns at once, so
    /// it can sit in a `defer`; reaping happens on a background thread, never on the
    /// cooperative pool the tests share.
    public func stop() {
        _ = kill(process.processIdentifier, SIGKILL)
        DispatchQueue.global().async { self.shutDown(keepDirectory: false) }
    }

    /// `stop()`, waiting until slapd has exited.
    public func stopAndWait() async {
        await Self.offloaded { self.shutDown(keepDirectory: false) }
    }

    /// Runs blocking work (child processes, waiting for exits) off the cooperative thread pool:
    /// with two cores, a few tests blocking there would stall every other test's awaits.
    static func offloaded<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            DispatchQueue.global().async { continuation.resume(with: Result { try body() }) }
        }
    }

    static func offloaded(_ body: @escaping @Sendable () -> Void) async {
        await withCheckedContinuation { continuation in
            DispatchQueue.global().async {
                body()
                continuation.resume()
            }
        }
    }

    /// SIGKILL, not SIGTERM: a child started from a Dispatch thread inherits that thread's
    /// blocked signal mask, so slapd never sees SIGTERM (seen here: 5 s without effect). Its
    /// data directory is temporary, so nothing is lost by skipping a graceful shutdown.
    private func shutDown(keepDirectory: Bool) {
        for child in [process, watchdog] where child.isRunning {
            _ = kill(child.processIdentifier, SIGKILL)
            child.waitUntilExit()
        }
        if !keepDirectory { try? FileManager.default.removeItem(at: directory) }
    }


    private func waitUntilListening(ports: [Int], log: URL) async throws {
        let deadline = Date().addingTimeInterval(15)
        while Date() < deadline {
            guard process.isRunning else {
                let output = (try? String(contentsOf: log, encoding: .utf8)) ?? ""
                throw Failure("slapd exited with status \(process.terminationStatus): \(output.suffix(2000))")
            }
            if ports.allSatisfy(Self.isListening) { return }
            try await Task.sleep(for: .milliseconds(25))
        }
        throw Failure("slapd did not listen on \(ports) within 15 s")
    }

    /// A shell loop that SIGKILLs slapd once the test process is gone (crash, timeout kill).
    private static func startWatchdog(for slapdPID: Int32) throws -> Process {
        let watchdog = Process()
        watchdog.executableURL = URL(fileURLWithPath: "/bin/sh")
        watchdog.arguments = [
            "-c", "while kill -0 \"$0\" 2>/dev/null; do sleep 0.5; done; kill -KILL \"$1\" 2>/dev/null",
            String(getpid()), String(slapdPID),
        ]
        watchdog.standardOutput = FileHandle.nullDevice
        watchdog.standardError = FileHandle.nullDevice
        try watchdog.run()
        return watchdog
    }

    /// Runs a helper to completion; throws with its output if it fails.
    @discardableResult
    static func run(_ path: String, _ arguments: [String]) throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: path)
        process.arguments = arguments
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        try process.run()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        let text = String(decoding: data, as: UTF8.self)
        guard process.terminationStatus == 0 else {
            throw Failure("\(path) \(arguments.joined(separator: " ")) exited with \(process.terminationStatus): \(text)")
        }
        return text
    }

    static func freePort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw Failure("socket() failed") }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { pointer -> Bool in
                bind(fd, pointer, length) == 0 && getsockname(fd, pointer, &length) == 0
            }
        }
        guard bound else { throw Failure("cannot bind a probe socket on 127.0.0.1") }
        return Int(UInt16(bigEndian: address.sin_port))
    }

    static func isListening(_ port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = UInt16(port).bigEndian
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
            }
        }
    }

    /// `{SSHA}` as slappasswd writes it: base64(SHA-1(password + salt) + salt).
    public static func sshaHash(_ password: String) -> String {
        let salt = (0..<8).map { _ in UInt8.random(in: 0...255) }
        let digest = Insecure.SHA1.hash(data: Array(password.utf8) + salt)
        return "{SSHA}" + Data(Array(digest) + salt).base64EncodedString()
    }

    private struct Config {
        let directory: URL
        let tls: Bool
        let syncprov: Bool
        let sessionLog: Bool
        let sizeLimit: Int?
        var confPath: String { directory.appendingPathComponent("slapd.conf").path }

        func write() throws {
            let dir = directory.path
            var text = """
                include \(SlapdServer.schemaPath)/core.schema
                include \(SlapdServer.schemaPath)/cosine.schema
                include \(SlapdServer.schemaPath)/inetorgperson.schema
                include \(SlapdServer.schemaPath)/nis.schema
                modulepath \(SlapdServer.modulePath)
                moduleload back_mdb
                \(syncprov ? "moduleload syncprov" : "")
                pidfile \(dir)/slapd.pid
                argsfile \(dir)/slapd.args
                # 50,000-entry searches (paged or not) must not stop at the default 500.
                sizelimit unlimited
                timelimit unlimited
                # Like Active Directory and many other servers, accept an unauthenticated bind (a DN
                # with an empty password) as anonymous: the client must refuse to send one.
                allow bind_anon_dn

                """
            if tls {
                text += """
                    TLSCACertificateFile \(dir)/ca.pem
                    TLSCertificateFile \(dir)/server.pem
                    TLSCertificateKeyFile \(dir)/server.key

                    """
            }
            text += """
                database mdb
                maxsize 4294967296
                suffix "dc=example,dc=com"
                rootdn "cn=admin,dc=example,dc=com"
                rootpw \(SlapdServer.sshaHash("admin-secret"))
                directory \(dir)/db
                index objectClass eq
                index uid,mail,cn,employeeNumber eq,sub
                index entryUUID,entryCSN eq
                \(sizeLimit.map { "limits * size.soft=\($0) size.hard=\($0) size.prtotal=unlimited" } ?? "limits * size=unlimited time=unlimited")
                access to attrs=userPassword by self write by anonymous auth by * none
                access to * by * read

                """
            if syncprov {
                text += """
                    overlay syncprov
                    syncprov-checkpoint 100 10
                    \(sessionLog ? "# The session log lets refreshOnly report deletions as UUIDs (delete phase).\nsyncprov-sessionlog 10000" : "")

                    """
            }
            try text.write(toFile: confPath, atomically: true, encoding: .utf8)
        }
    }
}

/// Certificates for TLS tests, made with swift-certificates (no openssl CLI needed).
public enum TestCertificateAuthority {
    /// Writes ca.pem, server.pem and server.key into `directory`: a P-256 CA and a server
    /// certificate it signed for `names` (IPv4 literals as IP SANs, the rest as DNS names).
    /// Returns the CA's path.
    public static func writeServerCertificate(in directory: URL, names: [String]) throws -> String {
        let caKey = P256.Signing.PrivateKey()
        let caName = try DistinguishedName {
            CommonName("Switchboard Test CA \(UUID().uuidString.prefix(8))")
            OrganizationName("Switchboard tests")
        }
        let now = Date()
        let ca = try Certificate(
            version: .v3, serialNumber: .init(), publicKey: .init(caKey.publicKey),
            notValidBefore: now.addingTimeInterval(-3600), notValidAfter: now.addingTimeInterval(7 * 86400),
            issuer: caName, subject: caName, signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.isCertificateAuthority(maxPathLength: 0))
                Critical(KeyUsage(keyCertSign: true, cRLSign: true))
                SubjectKeyIdentifier(hash: .init(caKey.publicKey))
            },
            issuerPrivateKey: .init(caKey))
        let serverKey = P256.Signing.PrivateKey()
        let alternativeNames: [GeneralName] = names.map { name in
            let octets = name.split(separator: ".").compactMap { UInt8($0) }
            return octets.count == 4 ? .ipAddress(ASN1OctetString(contentBytes: octets[...])) : .dnsName(name)
        }
        let server = try Certificate(
            version: .v3, serialNumber: .init(), publicKey: .init(serverKey.publicKey),
            notValidBefore: now.addingTimeInterval(-3600), notValidAfter: now.addingTimeInterval(7 * 86400),
            issuer: caName, subject: try DistinguishedName { CommonName(names.first ?? "server") },
            signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.notCertificateAuthority)
                Critical(KeyUsage(digitalSignature: true))
                try ExtendedKeyUsage([.serverAuth])
                SubjectAlternativeNames(alternativeNames)
                AuthorityKeyIdentifier(keyIdentifier: try ca.extensions.subjectKeyIdentifier?.keyIdentifier)
            },
            issuerPrivateKey: .init(caKey))
        let caPath = directory.appendingPathComponent("ca.pem").path
        try (try ca.serializeAsPEM().pemString + "\n").write(toFile: caPath, atomically: true, encoding: .utf8)
        try (try server.serializeAsPEM().pemString + "\n").write(
            to: directory.appendingPathComponent("server.pem"), atomically: true, encoding: .utf8)
        try (serverKey.pemRepresentation + "\n").write(
            to: directory.appendingPathComponent("server.key"), atomically: true, encoding: .utf8)
        return caPath
    }

    /// Writes a CA certificate that signed nothing the fixture serves (for "untrusted CA" tests).
    public static func writeUnrelatedCA(to path: String) throws {
        let key = P256.Signing.PrivateKey()
        let name = try DistinguishedName { CommonName("Unrelated CA") }
        let now = Date()
        let ca = try Certificate(
            version: .v3, serialNumber: .init(), publicKey: .init(key.publicKey),
            notValidBefore: now.addingTimeInterval(-3600), notValidAfter: now.addingTimeInterval(86400),
            issuer: name, subject: name, signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.isCertificateAuthority(maxPathLength: 0))
                Critical(KeyUsage(keyCertSign: true))
            },
            issuerPrivateKey: .init(key))
        try (try ca.serializeAsPEM().pemString + "\n").write(toFile: path, atomically: true, encoding: .utf8)
    }
}
