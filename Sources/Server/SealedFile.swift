import Foundation
import Storage

/// Uploaded files at rest when encryption is on: `SBF1` ‖ chunk size (4 bytes) ‖ records of
/// (sealed length (4 bytes) ‖ sealed chunk). Each chunk of at most 64 KiB is sealed by the key
/// ring with the file's token and the chunk's index authenticated, so chunks cannot be swapped,
/// dropped from the middle, or moved to another file; the plaintext size kept with the upload's
/// metadata catches a dropped tail.
enum SealedFile {
    static let magic: [UInt8] = Array("SBF1".utf8)
    static let chunkSize = 65_536

    static func header() -> [UInt8] {
        magic + bigEndian(UInt32(chunkSize))
    }

    static func context(_ token: String, _ index: Int) -> String { "upload:\(token):\(index)" }

    static func record(_ chunk: [UInt8], token: String, index: Int, cipher: any FieldCipher) throws -> [UInt8] {
        let sealed = try cipher.seal(chunk, context: context(token, index))
        return bigEndian(UInt32(sealed.count)) + sealed
    }

    static func bigEndian(_ value: UInt32) -> [UInt8] {
        [UInt8(value >> 24), UInt8(value >> 16 & 0xff), UInt8(value >> 8 & 0xff), UInt8(value & 0xff)]
    }

    /// Reads a sealed file chunk by chunk, calling `body` with each plaintext chunk.
    static func open(path: String, token: String, cipher: any FieldCipher, _ body: ([UInt8]) async throws -> Void) async throws {
        guard let handle = FileHandle(forReadingAtPath: path) else { throw StorageError.backend("cannot open \(path)") }
        defer { try? handle.close() }
        func read(_ count: Int) throws -> [UInt8] {
            var bytes: [UInt8] = []
            while bytes.count < count {
                guard let data = try handle.read(upToCount: count - bytes.count), !data.isEmpty else { break }
                bytes.append(contentsOf: data)
            }
            return bytes
        }
        guard try read(8).starts(with: magic) else { throw StorageError.corrupt("\(path) is not a sealed upload") }
        var index = 0
        while true {
            let length = try read(4)
            if length.isEmpty { return }
            guard length.count == 4 else { throw StorageError.corrupt("truncated sealed upload") }
            let count = Int(UInt32(length[0]) << 24 | UInt32(length[1]) << 16 | UInt32(length[2]) << 8 | UInt32(length[3]))
            guard count <= chunkSize + 64 else { throw StorageError.corrupt("bad chunk in sealed upload") }
            let sealed = try read(count)
            guard sealed.count == count else { throw StorageError.corrupt("truncated sealed upload") }
            try await body(try cipher.open(sealed, context: context(token, index)))
            index += 1
        }
    }

    static func isSealed(path: String) -> Bool {
        guard let handle = FileHandle(forReadingAtPath: path) else { return false }
        defer { try? handle.close() }
        return (try? handle.read(upToCount: 4)).map { Array($0) == magic } ?? false
    }
}
