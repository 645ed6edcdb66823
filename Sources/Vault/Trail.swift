import Crypto
import Foundation
import Storage

/// The tamper-evident trail: every access request, approval, view, search, export and every
/// administrative action, each entry carrying the hash of the one before.
///
/// hash(n) = SHA-256(hash(n-1) ‖ seq ‖ time ‖ actor ‖ action ‖ details). Every `anchorEvery`-th
/// entry (and the first) is signed with an Ed25519 key kept beside the master key, and its
/// sequence number and hash are appended to an anchors file that operators ship elsewhere
/// (syslog, WORM storage, print-out): an edit breaks the chain, a re-computed chain lacks
/// valid signatures, and a truncated or rewritten tail contradicts the shipped anchors.
public struct Trail: Sendable {
    public let store: any TrailStore
    let signingKey: Curve25519.Signing.PrivateKey?
    let anchorsPath: String?
    public static let anchorEvery: Int64 = 64

    public init(store: any TrailStore, signingKey: Curve25519.Signing.PrivateKey?, anchorsPath: String?) {
        self.store = store
        self.signingKey = signingKey
        self.anchorsPath = anchorsPath
    }

    /// The signing key in `directory` (trail-signing.key, 0600; created when missing) and the
    /// public key beside it (trail-signing.pub) for verifiers.
    public static func signingKey(in directory: String, create: Bool) throws -> Curve25519.Signing.PrivateKey? {
        let path = directory + "/trail-signing.key"
        let manager = FileManager.default
        if let data = manager.contents(atPath: path) {
            guard let raw = Data(base64Encoded: String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)),
                let key = try? Curve25519.Signing.PrivateKey(rawRepresentation: raw)
            else { throw VaultError("\(path) is not a trail signing key") }
            return key
        }
        guard create else { return nil }
        try manager.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        let key = Curve25519.Signing.PrivateKey()
        guard manager.createFile(atPath: path, contents: Data((key.rawRepresentation.base64EncodedString() + "\n").utf8), attributes: [.posixPermissions: 0o600])
        else { throw VaultError("cannot write \(path)") }
        _ = manager.createFile(
            atPath: directory + "/trail-signing.pub", contents: Data((key.publicKey.rawRepresentation.base64EncodedString() + "\n").utf8),
            attributes: [.posixPermissions: 0o644])
        return key
    }

    public static func publicKey(in directory: String) throws -> Curve25519.Signing.PublicKey? {
        guard let data = FileManager.default.contents(atPath: directory + "/trail-signing.pub") else { return nil }
        guard let raw = Data(base64Encoded: String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)) else {
            throw VaultError("\(directory)/trail-signing.pub is not a public key")
        }
        return try Curve25519.Signing.PublicKey(rawRepresentation: raw)
    }

    /// Canonical JSON of the details (sorted keys), so the hash does not depend on dictionary order.
    public static func canonical(_ details: [String: String]) -> String {
        guard let data = try? JSONSerialization.data(withJSONObject: details, options: [.sortedKeys, .withoutEscapingSlashes]) else { return "{}" }
        return String(decoding: data, as: UTF8.self)
    }

    static func hash(previous: [UInt8], seq: Int64, time: Double, actor: String, action: String, details: String) -> [UInt8] {
        var hasher = SHA256()
        hasher.update(data: previous)
        withUnsafeBytes(of: seq.bigEndian) { hasher.update(bufferPointer: $0) }
        withUnsafeBytes(of: time.bitPattern.bigEndian) { hasher.update(bufferPointer: $0) }
        for part in [actor, action, details] {
            hasher.update(data: Data(part.utf8))
            hasher.update(data: Data([0]))
        }
        return Array(hasher.finalize())
    }

    /// A readable summary of a directory batch for the trail (at most 50 changes listed).
    public static func summary(_ changes: [DirectoryChange]) -> [String: String]? {
        var lines: [String] = []
        for change in changes {
            switch change {
            case .putUnit(let unit): lines.append("unit \(unit.id) '\(unit.name)' parent \(unit.parentID ?? "-")")
            case .deleteUnit(let id): lines.append("delete unit \(id)")
            case .putUser(let user): lines.append("user \(user.username) \(user.status.rawValue)")
            case .deleteUser(let username): lines.append("delete user \(username)")
            case .putMembership(let m): lines.append("member \(m.username) in \(m.unitID)\(m.isPrimary ? " (primary)" : "")")
            case .deleteMembership(let username, let unit): lines.append("remove \(username) from \(unit)")
            case .putRole(let role): lines.append("role \(role.name): \(role.permissions.joined(separator: ","))")
            case .deleteRole(let name): lines.append("delete role \(name)")
            case .grantRole(let grant): lines.append("grant \(grant.role) to \(grant.username)")
            case .revokeRole(let grant): lines.append("revoke \(grant.role) from \(grant.username)")
            case .setState, .requireVersion: continue
            }
        }
        guard !lines.isEmpty else { return nil }
        return ["changes": String(lines.count), "list": lines.prefix(50).joined(separator: "; ") + (lines.count > 50 ? "; …" : "")]
    }

    /// A recorder for `DirectoryService.recorder`.
    public func directoryRecorder(actor: String) -> @Sendable ([DirectoryChange]) async -> Void {
        { changes in
            guard let details = Self.summary(changes) else { return }
            _ = try? await self.record(actor: actor, action: "directory.change", details: details)
        }
    }

    static func isAnchor(_ seq: Int64) -> Bool { seq == 1 || seq % anchorEvery == 0 }

    /// Appends one entry.
    @discardableResult
    public func record(actor: String, action: String, details: [String: String] = [:]) async throws -> TrailEntry {
        let text = Self.canonical(details)
        let time = (Date().timeIntervalSince1970 * 1000).rounded() / 1000
        let signingKey = self.signingKey
        let entry = try await store.appendTrail { last in
            let seq = (last?.seq ?? 0) + 1
            let previous = last?.hash ?? Array(repeating: 0, count: 32)
            let hash = Self.hash(previous: previous, seq: seq, time: time, actor: actor, action: action, details: text)
            var signature: [UInt8]?
            if Self.isAnchor(seq), let signingKey {
                signature = Array(try signingKey.signature(for: Data(hash)))
            }
            return TrailEntry(seq: seq, time: time, actor: actor, action: action, details: text, previousHash: previous, hash: hash, signature: signature)
        }
        if entry.signature != nil, let anchorsPath {
            Self.appendAnchor(entry, to: anchorsPath)
        }
        return entry
    }

    static func appendAnchor(_ entry: TrailEntry, to path: String) {
        let line = "\(entry.seq) \(entry.hash.map { String(format: "%02x", $0) }.joined())\n"
        if let handle = FileHandle(forWritingAtPath: path) {
            handle.seekToEndOfFile()
            handle.write(Data(line.utf8))
            try? handle.close()
        } else {
            _ = FileManager.default.createFile(atPath: path, contents: Data(line.utf8), attributes: [.posixPermissions: 0o644])
        }
    }

    public struct Verification: Sendable {
        public var entries = 0
        public var signedAnchors = 0
        public var shippedAnchors = 0
        /// Empty when the trail is intact.
        public var problems: [String] = []
        public var intact: Bool { problems.isEmpty }
    }

    /// Walks the whole trail and reports every broken link, bad hash, missing or invalid
    /// signature, and disagreement with the anchors file.
    public static func verify(
        store: any TrailStore, publicKey: Curve25519.Signing.PublicKey?, anchorsPath: String?
    ) async throws -> Verification {
        var report = Verification()
        var expectedSeq: Int64 = 1
        var previous = Array(repeating: UInt8(0), count: 32)
        var hashes: [Int64: [UInt8]] = [:]
        var from: Int64 = 1
        while true {
            let page = try await store.trail(from: from, limit: 5000)
            if page.isEmpty { break }
            for entry in page {
                report.entries += 1
                if entry.seq != expectedSeq {
                    report.problems.append("entry \(expectedSeq) is missing (next is \(entry.seq)): entries were removed or reordered")
                }
                if entry.previousHash != previous {
                    report.problems.append("entry \(entry.seq) does not link to the entry before it")
                }
                let recomputed = hash(
                    previous: entry.previousHash, seq: entry.seq, time: entry.time, actor: entry.actor, action: entry.action, details: entry.details)
                if recomputed != entry.hash {
                    report.problems.append("entry \(entry.seq) was altered (its hash does not match its content)")
                }
                if isAnchor(entry.seq), let publicKey {
                    if let signature = entry.signature, publicKey.isValidSignature(Data(signature), for: Data(entry.hash)) {
                        report.signedAnchors += 1
                    } else {
                        report.problems.append("anchor entry \(entry.seq) has a missing or invalid signature")
                    }
                }
                hashes[entry.seq] = entry.hash
                previous = entry.hash
                expectedSeq = entry.seq + 1
                from = entry.seq + 1
            }
        }
        if let anchorsPath, let text = try? String(contentsOfFile: anchorsPath, encoding: .utf8) {
            for line in text.split(separator: "\n") {
                let parts = line.split(separator: " ")
                guard parts.count == 2, let seq = Int64(parts[0]) else { continue }
                report.shippedAnchors += 1
                guard let hash = hashes[seq] else {
                    report.problems.append("anchor \(seq) from the anchors file is not in the trail: the trail was truncated")
                    continue
                }
                if hash.map({ String(format: "%02x", $0) }).joined() != parts[1] {
                    report.problems.append("anchor \(seq) differs from the anchors file: the trail was rewritten")
                }
            }
        }
        return report
    }
}
