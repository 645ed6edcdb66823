/// A file uploaded over HTTP (XEP-0363).
public struct UploadedFile: Sendable, Hashable {
    /// Unguessable token, part of the URL.
    public var token: String
    public var owner: String
    public var filename: String
    public var size: Int
    public var contentType: String
    public var time: Double

    public init(token: String, owner: String, filename: String, size: Int, contentType: String, time: Double) {
        self.token = token
        self.owner = owner
        self.filename = filename
        self.size = size
        self.contentType = contentType
        self.time = time
    }
}

/// Metadata of uploaded files; the bytes live in files named by token.
public protocol UploadStore: Sendable {
    func recordUpload(_ file: UploadedFile) async throws
    func upload(token: String) async throws -> UploadedFile?
    /// Bytes stored for a user.
    func usage(of owner: String) async throws -> Int
    /// Removes and returns the uploads older than `time`.
    func removeUploads(before time: Double) async throws -> [UploadedFile]
}
