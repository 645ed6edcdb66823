import ArgumentParser
import Foundation
import SQLiteStorage
import Server
import Storage
import SwiftASN1
import X509

struct CACommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ca",
        abstract: "The company certificate authority: client certificates for login with a USB key, smart card or phone.",
        discussion: """
            Users who hold a certificate from the company CA log in without a password: their client \
            presents the certificate in the TLS handshake and authenticates with SASL EXTERNAL \
            (XEP-0178). The CA lives in data_dir/ca (ca.pem, and ca-key.pem readable only by its owner); \
            every certificate it issues is recorded in the database, so it can be listed and revoked, and \
            a revoked certificate is refused at the next login. The certificate_login section of the \
            configuration can require certificate login for chosen roles or units (docs/certificates.md).

            Once a CA exists, the server asks clients for a certificate on both client listeners \
            (STARTTLS and direct TLS) after its next restart; clients without one keep working.

            Exit codes: 0 done; 64 bad arguments; 65 the input files are not a usable CA; 66 no such \
            user, account or certificate; 69 openssl, needed to write the PKCS#12 file, is missing or \
            failed (the PEM files were written); 73 a file would be overwritten; 74 storage error; \
            78 configuration error or no CA yet.

            EXAMPLES:
              switchboard ca init --subject "CN=Example Corp IM CA, O=Example Corp"
              switchboard ca import --certificate corp-ca.pem --key corp-ca-key.pem
              switchboard ca issue alice --days 365 --out alice.p12
              echo 'transport-secret' | switchboard ca issue alice --password-stdin
              switchboard ca list alice
              switchboard ca revoke alice --reason keyCompromise
              switchboard ca crl --out /var/www/pki/im.crl
            """,
        subcommands: [Init.self, Import.self, Issue.self, List.self, Revoke.self, CRL.self])

    struct Init: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create the company CA (P-256) in data_dir/ca.",
            discussion: """
                Writes data_dir/ca/ca.pem and data_dir/ca/ca-key.pem (mode 0600, directory 0700). An \
                existing CA is never overwritten: the certificates it issued would stop working. Back up \
                ca-key.pem offline; whoever holds it can issue logins for any user.
                """)
        @OptionGroup var options: ConfigOptions
        @Option(help: ArgumentHelp("Subject of the CA certificate: CN, O, OU, C, L, ST. Default: CN=DOMAIN IM CA.", valueName: "dn"))
        var subject: String?
        @Option(help: ArgumentHelp("Validity of the CA certificate in days.", valueName: "n")) var days = 3650

        func validate() throws {
            if !(1...36500).contains(days) { throw ValidationError("--days must be between 1 and 36500") }
        }

        func run() async throws {
            try await withCAErrors {
                let configuration = try options.load()
                let ca = try CertificateAuthority.create(
                    dataDir: configuration.dataDir, subject: subject ?? "CN=\(configuration.domain) IM CA", days: days)
                print("created the certificate authority \(ca.certificate.subject)")
                print("certificate: \(CertificateAuthority.certificatePath(dataDir: configuration.dataDir))")
                print("private key: \(CertificateAuthority.keyPath(dataDir: configuration.dataDir)) (back it up offline)")
                print("valid until: \(ISO8601DateFormatter().string(from: ca.certificate.notValidAfter))")
                print("restart the server to request client certificates; then: switchboard ca issue USER")
            }
        }
    }

    struct Import: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Adopt an existing company CA (or an intermediate CA made for the IM service).",
            discussion: """
                Copies the PEM certificate and its PEM private key (RSA, P-256, P-384, P-521 or Ed25519) \
                to data_dir/ca after checking that the key belongs to the certificate and that it is a CA. \
                An intermediate dedicated to instant messaging is better than the company root: every \
                certificate the imported CA signs with an XMPP address can log in.
                """)
        @OptionGroup var options: ConfigOptions
        @Option(help: ArgumentHelp("PEM file with the CA certificate.", valueName: "file")) var certificate: String
        @Option(help: ArgumentHelp("PEM file with the CA's private key (unencrypted).", valueName: "file")) var key: String

        func run() async throws {
            try await withCAErrors {
                let configuration = try options.load()
                let certificatePEM = try readFile(certificate, option: "--certificate")
                let keyPEM = try readFile(key, option: "--key")
                let ca: CertificateAuthority
                do {
                    ca = try CertificateAuthority.importExisting(dataDir: configuration.dataDir, certificatePEM: certificatePEM, keyPEM: keyPEM)
                } catch let error as ConfigurationError where error.description.hasPrefix("--") {
                    throw CAFailure(error.description, code: 65)
                }
                print("imported the certificate authority \(ca.certificate.subject)")
                print("restart the server to request client certificates; then: switchboard ca issue USER")
            }
        }
    }

    struct Issue: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Issue a client certificate for USER as a password-protected PKCS#12 file.",
            discussion: """
                Makes a new P-256 key and a certificate naming USER@DOMAIN (subjectAltName \
                id-on-xmppAddr, RFC 6120 §13.7.1.4, and CN), for client authentication, signed by the CA \
                and recorded in the database. Writes three files: FILE.p12 (key, certificate and CA \
                certificate, for a phone, a smart card or a USB token; written with openssl), and \
                FILE-cert.pem and FILE-key.pem (mode 0600) for clients that take PEM files.

                The PKCS#12 password protects the file in transit: give it on standard input with \
                --password-stdin, or let the command generate and print one. Hand the file and the \
                password to the user by different channels. The account must exist.
                """)
        @OptionGroup var options: ConfigOptions
        @Argument(help: "User name or user@domain.") var user: String
        @Option(help: ArgumentHelp("Validity in days (never beyond the CA's own).", valueName: "n")) var days = 365
        @Option(help: ArgumentHelp("PKCS#12 file to write. Default: ./USER.p12.", valueName: "file")) var out: String?
        @Flag(help: "Read the PKCS#12 password from the first line of standard input.") var passwordStdin = false
        @Flag(help: "Overwrite existing output files.") var force = false

        func validate() throws {
            if !(1...3650).contains(days) { throw ValidationError("--days must be between 1 and 3650") }
        }

        func run() async throws {
            try await withCAErrors {
                let (configuration, username) = try resolve(options, user)
                let address = "\(username)@\(configuration.domain)"
                let ca = try CertificateAuthority.load(dataDir: configuration.dataDir)
                let stores = try SQLiteStores(directory: configuration.dataDir)
                guard try await stores.account(username) != nil else {
                    throw CAFailure("no account \(address): create it first (switchboard user add, or the directory)", code: 66)
                }
                let p12Path = out ?? "\(username).p12"
                let base = p12Path.hasSuffix(".p12") ? String(p12Path.dropLast(4)) : p12Path
                let certificatePath = base + "-cert.pem"
                let keyPath = base + "-key.pem"
                if !force {
                    for path in [p12Path, certificatePath, keyPath] where FileManager.default.fileExists(atPath: path) {
                        throw CAFailure("\(path) exists; choose another --out or add --force", code: 73)
                    }
                }
                let (password, generated) = try readTransportPassword(passwordStdin)
                let identity = try ca.issue(address: address, days: days)
                try await stores.recordCertificate(
                    IssuedCertificate(
                        serial: identity.serial, username: username, issuedAt: Date().timeIntervalSince1970,
                        notBefore: identity.certificate.notValidBefore.timeIntervalSince1970,
                        notAfter: identity.certificate.notValidAfter.timeIntervalSince1970))
                let caPEM = try ca.certificate.serializeAsPEM().pemString
                try writeFile(keyPath, identity.privateKeyPEM + "\n", mode: 0o600)
                try writeFile(certificatePath, identity.certificatePEM + "\n" + caPEM + "\n", mode: 0o644)
                print("issued certificate \(identity.serial) for \(address), valid until \(ISO8601DateFormatter().string(from: identity.certificate.notValidAfter))")
                print("certificate: \(certificatePath)")
                print("private key: \(keyPath)")
                try exportPKCS12(
                    certificatePath: certificatePath, keyPath: keyPath, name: address, password: password, out: p12Path)
                print("PKCS#12: \(p12Path)")
                if generated { print("PKCS#12 password: \(password)") }
            }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List issued certificates: serial, user, not after, status.",
            discussion: "Status is valid, expired, or revoked with its date and reason.")
        @OptionGroup var options: ConfigOptions
        @Argument(help: "Only this user's certificates.") var user: String?

        func run() async throws {
            try await withCAErrors {
                let configuration: ServerConfiguration
                var username: String?
                if let user {
                    let resolved = try resolve(options, user)
                    configuration = resolved.0
                    username = resolved.1
                } else {
                    configuration = try options.load()
                }
                let stores = try SQLiteStores(directory: configuration.dataDir)
                let now = Date().timeIntervalSince1970
                let formatter = ISO8601DateFormatter()
                let rows = try await stores.certificates(of: username)
                if rows.isEmpty { print("no certificates issued\(username.map { " for \($0)@\(configuration.domain)" } ?? "")") }
                for row in rows {
                    let status: String
                    if let revokedAt = row.revokedAt {
                        status = "revoked \(formatter.string(from: Date(timeIntervalSince1970: revokedAt)))" + (row.revocationReason.map { " (\($0))" } ?? "")
                    } else if row.notAfter < now {
                        status = "expired"
                    } else {
                        status = "valid"
                    }
                    print("\(row.serial)  \(row.username)@\(configuration.domain)  not-after \(formatter.string(from: Date(timeIntervalSince1970: row.notAfter)))  \(status)")
                }
            }
        }
    }

    struct Revoke: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Revoke one certificate (by serial) or every certificate of a user.",
            discussion: """
                The running server refuses a revoked certificate at the next login and ends the \
                sessions that logged in with it within about a second. Publish a new revocation list \
                (switchboard ca crl) for other systems that trust the CA. Reasons RFC 5280 knows \
                (keyCompromise, affiliationChanged, superseded, cessationOfOperation, privilegeWithdrawn, \
                unspecified) also go into the CRL; any other text is only recorded.
                """)
        @OptionGroup var options: ConfigOptions
        @Argument(help: "A serial number as 'ca list' prints it, or a user name / user@domain.") var target: String
        @Option(help: ArgumentHelp("Why, e.g. keyCompromise or 'left the company'.", valueName: "text")) var reason: String?

        func run() async throws {
            try await withCAErrors {
                let configuration = try options.load()
                let stores = try SQLiteStores(directory: configuration.dataDir)
                let now = Date().timeIntervalSince1970
                var serials: [String] = []
                if let serial = CertificateAuthority.normalizeSerial(target), let record = try await stores.certificate(serial: serial) {
                    guard record.revokedAt == nil else {
                        throw CAFailure("certificate \(serial) is already revoked", code: 65)
                    }
                    serials = [serial]
                } else {
                    let username: String
                    do {
                        username = try resolve(options, target).1
                    } catch {
                        throw CAFailure("no certificate with serial \(target), and it is not a user name either", code: 66)
                    }
                    serials = try await stores.certificates(of: username).filter { $0.revokedAt == nil }.map(\.serial)
                    if serials.isEmpty {
                        throw CAFailure("\(username)@\(configuration.domain) has no certificate that is not revoked (serials: switchboard ca list)", code: 66)
                    }
                }
                for serial in serials where try await stores.revokeCertificate(serial: serial, at: now, reason: reason) {
                    print("revoked \(serial)")
                }
                print("publish the new revocation list for other systems: switchboard ca crl --out FILE")
            }
        }
    }

    struct CRL: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "crl",
            abstract: "Write the certificate revocation list (PEM, signed by the CA).",
            discussion: """
                An RFC 5280 v2 CRL of every revoked certificate, for VPN gateways, web servers or MDM \
                systems that trust the same CA. Its nextUpdate is --days from now: publish a new one \
                before then (e.g. daily from cron). DER: openssl crl -in FILE -outform DER.
                """)
        @OptionGroup var options: ConfigOptions
        @Option(help: ArgumentHelp("Write to this file instead of standard output.", valueName: "file")) var out: String?
        @Option(help: ArgumentHelp("Days until nextUpdate.", valueName: "n")) var days = 7

        func validate() throws {
            if !(1...365).contains(days) { throw ValidationError("--days must be between 1 and 365") }
        }

        func run() async throws {
            try await withCAErrors {
                let configuration = try options.load()
                let ca = try CertificateAuthority.load(dataDir: configuration.dataDir)
                let stores = try SQLiteStores(directory: configuration.dataDir)
                let revoked = try await stores.certificates(of: nil).compactMap { row in
                    row.revokedAt.map {
                        CertificateAuthority.Revocation(serial: row.serial, date: Date(timeIntervalSince1970: $0), reason: row.revocationReason)
                    }
                }
                let der = try ca.revocationList(revoked, number: Int(Date().timeIntervalSince1970), validDays: days)
                let pem = PEMDocument(type: "X509 CRL", derBytes: der).pemString + "\n"
                if let out {
                    try writeFile(out, pem, mode: 0o644, replace: true)
                    print("wrote \(out): \(revoked.count) revoked certificate(s)")
                } else {
                    print(pem, terminator: "")
                }
            }
        }
    }
}

/// A failure of a `ca` command with its exit code.
struct CAFailure: Error {
    let message: String
    let code: Int32
    init(_ message: String, code: Int32) {
        self.message = message
        self.code = code
    }
}

private func withCAErrors(_ body: () async throws -> Void) async throws {
    try await withConfigurationErrors {
        do {
            try await body()
        } catch let failure as CAFailure {
            FileHandle.standardError.write(Data("switchboard: \(failure.message)\n".utf8))
            throw ExitCode(failure.code)
        } catch let error as ConfigurationError where error.description.contains("already exists") {
            FileHandle.standardError.write(Data("switchboard: \(error.description)\n".utf8))
            throw ExitCode(73)
        }
    }
}

private func readFile(_ path: String, option: String) throws -> String {
    do {
        return try String(contentsOfFile: path, encoding: .utf8)
    } catch {
        throw CAFailure("\(option): cannot read \(path): \(error.localizedDescription)", code: 66)
    }
}

private func writeFile(_ path: String, _ text: String, mode: Int, replace: Bool = true) throws {
    let files = FileManager.default
    if replace, files.fileExists(atPath: path) { try? files.removeItem(atPath: path) }
    guard files.createFile(atPath: path, contents: Data(text.utf8), attributes: [.posixPermissions: mode]) else {
        throw CAFailure("cannot write \(path)", code: 73)
    }
}

/// The PKCS#12 transport password from stdin, or a generated one (second value true).
private func readTransportPassword(_ fromStdin: Bool) throws -> (String, Bool) {
    if fromStdin {
        guard let line = readLine(strippingNewline: true), !line.isEmpty else {
            throw ValidationError("--password-stdin: no password on standard input")
        }
        return (line, false)
    }
    return (PasswordGenerator.make(), true)
}

/// swift-certificates cannot write PKCS#12, so the openssl command does (`SWITCHBOARD_OPENSSL`
/// overrides which). The password reaches it through its environment, never its arguments.
/// The certificate file holds the CA certificate after the leaf, so the bundle carries the chain.
private func exportPKCS12(certificatePath: String, keyPath: String, name: String, password: String, out: String) throws {
    let environment = ProcessInfo.processInfo.environment
    let openssl = environment["SWITCHBOARD_OPENSSL"] ?? "openssl"
    if FileManager.default.fileExists(atPath: out) { try? FileManager.default.removeItem(atPath: out) }
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = [
        openssl, "pkcs12", "-export", "-in", certificatePath, "-inkey", keyPath, "-name", name,
        "-out", out, "-passout", "env:SWITCHBOARD_P12_PASSWORD",
    ]
    var childEnvironment = environment
    childEnvironment["SWITCHBOARD_P12_PASSWORD"] = password
    process.environment = childEnvironment
    let errors = Pipe()
    process.standardError = errors
    do {
        try process.run()
    } catch {
        throw CAFailure("cannot run openssl to write \(out) (\(error)); the PEM files were written", code: 69)
    }
    let message = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    process.waitUntilExit()
    guard process.terminationStatus == 0 else {
        throw CAFailure(
            "openssl could not write \(out) (exit \(process.terminationStatus)): \(message.trimmingCharacters(in: .whitespacesAndNewlines)); the PEM files were written",
            code: 69)
    }
    try? FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: out)
}
