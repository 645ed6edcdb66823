import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import Storage

/// Plain HTTP on the HTTP port: Prometheus metrics, a health check, and HTTP file upload
/// (XEP-0363: PUT and GET of `/upload/TOKEN/NAME`). WebSocket upgrades at `/xmpp-websocket`
/// are taken by the upgrader before requests reach this handler.
final class HTTPHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let server: ServerContext
    private var head: HTTPRequestHead?
    private var upload: Upload?
    /// Body of a request for a module route, bounded.
    private var routeBody: [UInt8]?
    private var routeBodyTooLarge = false
    static let maxRouteBody = 1 << 20

    /// A PUT in progress: bytes go straight to a temporary file.
    private struct Upload {
        let slot: FileShare.Slot
        let descriptor: Int32
        let temporaryPath: String
        var received: Int
        var failed: HTTPResponseStatus?
        /// With encryption on: plaintext not yet sealed (less than one chunk) and the next chunk's index.
        var pending: [UInt8] = []
        var chunk = 0
    }

    init(server: ServerContext) {
        self.server = server
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            self.head = head
            if head.method == .PUT, path(head).hasPrefix("/upload/") {
                startUpload(context: context, head: head)
            } else if server.modules.httpRoute(for: path(head)) != nil {
                routeBody = []
                routeBodyTooLarge = false
            }
        case .body(let buffer):
            if upload != nil {
                receive(buffer)
            } else if routeBody != nil {
                if (routeBody?.count ?? 0) + buffer.readableBytes > Self.maxRouteBody {
                    routeBodyTooLarge = true
                    routeBody = []
                } else if !routeBodyTooLarge {
                    routeBody?.append(contentsOf: buffer.readableBytesView)
                }
            }
        case .end:
            guard let head else { return }
            self.head = nil
            if upload != nil {
                finishUpload(context: context, head: head)
            } else if let body = routeBody, let handler = server.modules.httpRoute(for: path(head)) {
                routeBody = nil
                if routeBodyTooLarge {
                    problem(context: context, head: head, status: .payloadTooLarge, detail: "request bodies are limited to 1 MiB")
                } else {
                    serveRoute(handler, context: context, head: head, body: body)
                }
            } else {
                respond(context: context, head: head)
            }
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        if let upload { abort(upload) }
        upload = nil
        context.fireChannelInactive()
    }

    /// Runs a module's route as a task and writes its answer on the channel's event loop.
    private func serveRoute(_ handler: @escaping HTTPRouteHandler, context: ChannelHandlerContext, head: HTTPRequestHead, body: [UInt8]) {
        var query: [String: String] = [:]
        if let rawQuery = head.uri.split(separator: "?", maxSplits: 1).dropFirst().first {
            for pair in rawQuery.split(separator: "&") {
                let parts = pair.split(separator: "=", maxSplits: 1).map { String($0).replacingOccurrences(of: "+", with: " ").removingPercentEncoding ?? String($0) }
                if let key = parts.first { query[key] = parts.count > 1 ? parts[1] : "" }
            }
        }
        var headers: [String: String] = [:]
        for (name, value) in head.headers { headers[name.lowercased()] = value }
        let request = HTTPRequest(method: head.method.rawValue, path: path(head), query: query, headers: headers, body: body)
        let server = self.server
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        let eventLoop = context.eventLoop
        Task {
            let response = await handler(request, server)
            eventLoop.execute {
                let (handler, context) = bound.value
                handler.write(context: context, head: head, response: response)
            }
        }
    }

    private func write(context: ChannelHandlerContext, head: HTTPRequestHead, response: HTTPResponse) {
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: response.contentType)
        headers.add(name: "Content-Length", value: String(response.body.count))
        headers.add(name: "Cache-Control", value: "no-store")
        for (name, value) in response.headers { headers.add(name: name, value: value) }
        let keepAlive = head.isKeepAlive
        if !keepAlive { headers.add(name: "Connection", value: "close") }
        let status = HTTPResponseStatus(statusCode: response.status)
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: status, headers: headers))), promise: nil)
        if !response.body.isEmpty {
            context.write(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(bytes: response.body)))), promise: nil)
        }
        context.writeAndFlush(wrapOutboundOut(.end(nil))).assumeIsolated().whenComplete { _ in
            if !keepAlive { context.close(promise: nil) }
        }
    }

    private func path(_ head: HTTPRequestHead) -> String {
        head.uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? head.uri
    }

    private func respond(context: ChannelHandlerContext, head: HTTPRequestHead) {
        let path = self.path(head)
        switch (head.method, path) {
        case (.GET, "/metrics"):
            server.metrics.updateJournal(backlog: server.journal.waitingEntries, failedApplies: server.journal.failedApplies)
            let body = server.metrics.exposition()
            write(context: context, head: head, status: .ok, contentType: "text/plain; version=0.0.4; charset=utf-8", body: body)
        case (.GET, "/health"):
            write(context: context, head: head, status: .ok, contentType: "application/json", body: Array(#"{"status":"ok"}"#.utf8))
        case (.GET, "/xmpp-websocket"):
            problem(context: context, head: head, status: .upgradeRequired, detail: "connect with a WebSocket client, subprotocol 'xmpp' (RFC 7395)")
        case (.GET, _) where path.hasPrefix("/upload/"), (.HEAD, _) where path.hasPrefix("/upload/"):
            serveUpload(context: context, head: head, path: path)
        case (.PUT, _) where path.hasPrefix("/upload/"):
            problem(context: context, head: head, status: .forbidden, detail: "no valid upload slot for this URL")
        default:
            problem(context: context, head: head, status: .notFound, detail: "no resource at \(path)")
        }
    }

    // MARK: - Upload (PUT)

    private func startUpload(context: ChannelHandlerContext, head: HTTPRequestHead) {
        let parts = path(head).split(separator: "/")
        guard parts.count == 3, let slot = server.fileShare.claimSlot(String(parts[1])) else { return }
        let temporary = server.fileShare.path(slot.token) + ".part"
        let descriptor = open(temporary, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0o600)
        guard descriptor >= 0 else {
            server.logger.error("cannot create upload file", metadata: ["upload.path": "\(temporary)", "errno": "\(errno)"])
            return
        }
        var upload = Upload(slot: slot, descriptor: descriptor, temporaryPath: temporary, received: 0)
        if server.stores.cipher != nil, !Self.writeAll(descriptor, SealedFile.header()) {
            upload.failed = .insufficientStorage
        }
        if let length = head.headers.first(name: "Content-Length").flatMap(Int.init), length != slot.size {
            upload.failed = .badRequest
        }
        self.upload = upload
    }

    private func receive(_ buffer: ByteBuffer) {
        guard var upload, upload.failed == nil else { return }
        defer { self.upload = upload }
        guard upload.received + buffer.readableBytes <= upload.slot.size else {
            upload.failed = .payloadTooLarge
            return
        }
        let written: Bool
        if let cipher = server.stores.cipher {
            // Sealed as it arrives: the plaintext never reaches the disk.
            upload.pending.append(contentsOf: buffer.readableBytesView)
            written = sealFullChunks(&upload, cipher: cipher, final: false)
        } else {
            written = buffer.withUnsafeReadableBytes { bytes in Self.writeAll(upload.descriptor, bytes) }
        }
        if written {
            upload.received += buffer.readableBytes
        } else {
            upload.failed = .insufficientStorage
        }
    }

    /// Writes every byte (retrying short writes and EINTR); false on an error.
    private static func writeAll(_ descriptor: Int32, _ bytes: some Collection<UInt8>) -> Bool {
        Array(bytes).withUnsafeBytes { writeAll(descriptor, $0) }
    }

    private static func writeAll(_ descriptor: Int32, _ bytes: UnsafeRawBufferPointer) -> Bool {
        var offset = 0
        while offset < bytes.count {
            let result = Foundation.write(descriptor, bytes.baseAddress.map { $0 + offset }, bytes.count - offset)
            if result < 0 {
                if errno == EINTR { continue }
                return false
            }
            offset += result
        }
        return true
    }

    /// Seals and writes the complete chunks waiting in `upload` (all of them when `final`).
    private func sealFullChunks(_ upload: inout Upload, cipher: any FieldCipher, final: Bool) -> Bool {
        while upload.pending.count >= SealedFile.chunkSize || (final && !upload.pending.isEmpty) {
            let count = min(SealedFile.chunkSize, upload.pending.count)
            let chunk = Array(upload.pending.prefix(count))
            upload.pending.removeFirst(count)
            guard let record = try? SealedFile.record(chunk, token: upload.slot.token, index: upload.chunk, cipher: cipher),
                Self.writeAll(upload.descriptor, record)
            else { return false }
            upload.chunk += 1
        }
        return true
    }

    private func finishUpload(context: ChannelHandlerContext, head: HTTPRequestHead) {
        guard var upload else { return }
        self.upload = nil
        if upload.failed == nil, let cipher = server.stores.cipher, !sealFullChunks(&upload, cipher: cipher, final: true) {
            upload.failed = .insufficientStorage
        }
        if upload.received != upload.slot.size && upload.failed == nil {
            abort(upload)
            problem(context: context, head: head, status: .badRequest, detail: "expected \(upload.slot.size) bytes, got \(upload.received)")
            return
        }
        if let failed = upload.failed {
            abort(upload)
            problem(context: context, head: head, status: failed, detail: "upload refused: \(failed.reasonPhrase)")
            return
        }
        let server = self.server
        let slot = upload.slot
        let finalPath = server.fileShare.path(slot.token)
        let promise = context.eventLoop.makePromise(of: Void.self)
        // The task gets constants, not the mutable `upload`.
        let (descriptor, temporaryPath) = (upload.descriptor, upload.temporaryPath)
        promise.completeWithTask {
            // Durable before we say 201: fsync, rename, then the metadata row.
            let ok = fsync(descriptor) == 0
            close(descriptor)
            guard ok, rename(temporaryPath, finalPath) == 0 else {
                unlink(temporaryPath)
                throw StorageError.backend("cannot store upload \(slot.token)")
            }
            try await server.stores.uploads.recordUpload(
                UploadedFile(
                    token: slot.token, owner: slot.owner, filename: slot.filename, size: slot.size,
                    contentType: slot.contentType, time: Date().timeIntervalSince1970))
        }
        promise.futureResult.assumeIsolated().whenComplete { [self] result in
            switch result {
            case .success:
                server.logger.info("file uploaded", metadata: ["xmpp.user": "\(slot.owner)", "upload.bytes": "\(slot.size)"])
                write(context: context, head: head, status: .created, contentType: "text/plain", body: [])
            case .failure(let error):
                server.logger.error("upload failed", metadata: ["error": "\(error)"])
                problem(context: context, head: head, status: .internalServerError, detail: "the file could not be stored")
            }
        }
    }

    private func abort(_ upload: Upload) {
        close(upload.descriptor)
        unlink(upload.temporaryPath)
    }

    // MARK: - Download (GET/HEAD)

    private func serveUpload(context: ChannelHandlerContext, head: HTTPRequestHead, path: String) {
        let parts = path.split(separator: "/")
        guard parts.count == 3, parts[1].count == 32, parts[1].allSatisfy(\.isHexDigit) else {
            problem(context: context, head: head, status: .notFound, detail: "no such file")
            return
        }
        let token = String(parts[1])
        let name = String(parts[2]).removingPercentEncoding ?? String(parts[2])
        let uploads = server.stores.uploads
        let promise = context.eventLoop.makePromise(of: UploadedFile?.self)
        promise.completeWithTask { try await uploads.upload(token: token) }
        promise.futureResult.assumeIsolated().whenComplete { [self] result in
            let path = server.fileShare.path(token)
            guard case .success(let file?) = result, file.filename == name, FileManager.default.fileExists(atPath: path) else {
                problem(context: context, head: head, status: .notFound, detail: "no such file")
                return
            }
            if let cipher = server.stores.cipher, SealedFile.isSealed(path: path) {
                serveSealed(context: context, head: head, file: file, path: path, cipher: cipher)
                return
            }
            guard let handle = try? NIOFileHandle(_deprecatedPath: path) else {
                problem(context: context, head: head, status: .notFound, detail: "no such file")
                return
            }
            context.write(wrapOutboundOut(.head(uploadHead(head, file))), promise: nil)
            if head.method == .GET, file.size > 0 {
                let region = FileRegion(fileHandle: handle, readerIndex: 0, endIndex: file.size)
                context.write(wrapOutboundOut(.body(.fileRegion(region))), promise: nil)
            }
            context.writeAndFlush(wrapOutboundOut(.end(nil))).assumeIsolated().whenComplete { _ in
                try? handle.close()
                if !head.isKeepAlive { context.close(promise: nil) }
            }
        }
    }

    private func uploadHead(_ head: HTTPRequestHead, _ file: UploadedFile) -> HTTPResponseHead {
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: file.contentType)
        headers.add(name: "Content-Length", value: String(file.size))
        headers.add(name: "X-Content-Type-Options", value: "nosniff")
        headers.add(name: "Content-Security-Policy", value: "default-src 'none'; img-src 'self'; media-src 'self'; sandbox")
        headers.add(name: "Cache-Control", value: "private, max-age=31536000, immutable")
        return HTTPResponseHead(version: head.version, status: .ok, headers: headers)
    }

    /// Streams a sealed upload: read and open one chunk at a time off the event loop, write it,
    /// wait for the write (so a slow client holds at most one chunk in memory).
    private func serveSealed(context: ChannelHandlerContext, head: HTTPRequestHead, file: UploadedFile, path: String, cipher: any FieldCipher) {
        context.write(wrapOutboundOut(.head(uploadHead(head, file))), promise: nil)
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        let eventLoop = context.eventLoop
        let logger = server.logger
        let token = file.token
        Task {
            var sent = 0
            do {
                if head.method == .GET {
                    try await SealedFile.open(path: path, token: token, cipher: cipher) { chunk in
                        sent += chunk.count
                        try await eventLoop.flatSubmit {
                            let (handler, context) = bound.value
                            return context.writeAndFlush(handler.wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(bytes: chunk)))))
                        }.get()
                    }
                    guard sent == file.size else { throw StorageError.corrupt("sealed upload \(token) holds \(sent) of \(file.size) bytes") }
                }
                eventLoop.execute {
                    let (handler, context) = bound.value
                    context.writeAndFlush(handler.wrapOutboundOut(.end(nil))).assumeIsolated().whenComplete { _ in
                        if !head.isKeepAlive { context.close(promise: nil) }
                    }
                }
            } catch {
                logger.error("cannot serve sealed upload", metadata: ["error": "\(error)"])
                eventLoop.execute { bound.value.1.close(promise: nil) }
            }
        }
    }

    // MARK: - Responses

    /// RFC 9457 problem JSON.
    private func problem(context: ChannelHandlerContext, head: HTTPRequestHead, status: HTTPResponseStatus, detail: String) {
        write(context: context, head: head, response: .problem(Int(status.code), status.reasonPhrase, detail))
    }

    private func write(context: ChannelHandlerContext, head: HTTPRequestHead, status: HTTPResponseStatus, contentType: String, body: [UInt8]) {
        write(context: context, head: head, response: HTTPResponse(status: Int(status.code), contentType: contentType, body: body))
    }
}
