import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOEmbedded
import NIOPosix
import Testing

@testable import LDAP

/// The multiplexer on an EmbeddedChannel (time advanced by hand), and the whole client
/// against scripted hostile servers on loopback.
@Suite("Client handler")
struct LDAPClientHandlerTests {
    private final class Harness {
        let loop = EmbeddedEventLoop()
        let channel: EmbeddedChannel
        let handler: LDAPClientHandler
        let ids = MessageIDGenerator()

        init(timeout: TimeAmount = .seconds(5)) throws {
            channel = EmbeddedChannel(loop: loop)
            handler = LDAPClientHandler(operationTimeout: timeout, messageIDs: ids, logger: Logger(label: "test"))
            try channel.pipeline.syncOperations.addHandler(handler)
            try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 389)).wait()
        }

        func submit(_ operation: LDAPOperation) -> (Int32, NIOLockedValueBox<Result<[LDAPMessage], any Error>?>) {
            let id = ids.next()
            let promise = loop.makePromise(of: [LDAPMessage].self)
            let box = NIOLockedValueBox<Result<[LDAPMessage], any Error>?>(nil)
            promise.futureResult.whenComplete { result in box.withLockedValue { $0 = result } }
            handler.submit(messageID: id, operation: operation, controls: [], promise: promise)
            return (id, box)
        }

        func sent() throws -> LDAPMessage? {
            guard let buffer = try channel.readOutbound(as: ByteBuffer.self) else { return nil }
            return try LDAPMessage(berBytes: Array(buffer.readableBytesView))
        }
    }

    private static let search = LDAPOperation.searchRequest(
        LDAPSearchRequest(base: "dc=example,dc=com", scope: .subtree, sizeLimit: 0, timeLimit: 0, filter: .any, attributes: []))

    @Test func responsesAreRoutedByMessageID() throws {
        let harness = try Harness()
        let (first, firstResult) = harness.submit(Self.search)
        let (second, secondResult) = harness.submit(Self.search)
        #expect(try harness.sent()?.messageID == first)
        #expect(try harness.sent()?.messageID == second)
        let entry = LDAPEntry(dn: "uid=a,dc=example,dc=com", attributes: [])
        try harness.channel.writeInbound(LDAPMessage(messageID: second, operation: .searchResultEntry(entry)))
        try harness.channel.writeInbound(LDAPMessage(messageID: first, operation: .searchResultDone(LDAPResult(code: 0))))
        try harness.channel.writeInbound(LDAPMessage(messageID: 999, operation: .searchResultDone(LDAPResult(code: 0))))  // ignored
        #expect(secondResult.withLockedValue { $0 } == nil)
        try harness.channel.writeInbound(LDAPMessage(messageID: second, operation: .searchResultDone(LDAPResult(code: 0))))
        #expect(try firstResult.withLockedValue { $0 }?.get().count == 1)
        #expect(try secondResult.withLockedValue { $0 }?.get().map(\.operation) == [.searchResultEntry(entry), .searchResultDone(LDAPResult(code: 0))])
        #expect(harness.handler.inFlightCount == 0)
    }

    @Test func timeoutIsIdleTimeAndAbandonsTheOperation() throws {
        let harness = try Harness(timeout: .seconds(5))
        let (id, result) = harness.submit(Self.search)
        _ = try harness.sent()
        // Entries keep arriving every 4 s: never idle for 5 s, so no timeout.
        for _ in 0..<3 {
            harness.loop.advanceTime(by: .seconds(4))
            try harness.channel.writeInbound(
                LDAPMessage(messageID: id, operation: .searchResultEntry(LDAPEntry(dn: "x", attributes: []))))
        }
        #expect(result.withLockedValue { $0 } == nil)
        harness.loop.advanceTime(by: .milliseconds(4_999))
        #expect(result.withLockedValue { $0 } == nil)
        harness.loop.advanceTime(by: .milliseconds(2))
        #expect(throws: LDAPError.timeout) { try result.withLockedValue { $0 }?.get() }
        #expect(try harness.sent()?.operation == .abandonRequest(id))
        #expect(harness.channel.isActive, "a timed-out search leaves the connection usable")
    }

    @Test func bindTimeoutClosesTheConnection() throws {
        let harness = try Harness(timeout: .seconds(5))
        let id = harness.ids.next()
        let promise = harness.loop.makePromise(of: [LDAPMessage].self)
        let box = NIOLockedValueBox<(any Error)?>(nil)
        promise.futureResult.whenFailure { error in box.withLockedValue { $0 = error } }
        harness.handler.submit(
            messageID: id, operation: .bindRequest(version: 3, dn: "cn=x", password: [1]), controls: [], promise: promise,
            closeOnTimeout: true)
        harness.loop.advanceTime(by: .seconds(6))
        #expect(box.withLockedValue { $0 } as? LDAPError == .timeout)
        #expect(!harness.channel.isActive)
        // Later submissions fail at once.
        let (_, later) = harness.submit(Self.search)
        #expect(throws: LDAPError.timeout) { try later.withLockedValue { $0 }?.get() }
    }

    @Test func noticeOfDisconnectionFailsEverything() throws {
        let harness = try Harness()
        let (_, first) = harness.submit(Self.search)
        let (_, second) = harness.submit(Self.search)
        try harness.channel.writeInbound(
            LDAPMessage(
                messageID: 0,
                operation: .extendedResponse(
                    LDAPResult(code: 52, diagnosticMessage: "shutting down"), name: LDAPControl.noticeOfDisconnectionOID, value: nil)))
        for box in [first, second] {
            #expect(throws: LDAPError.result(code: 52, diagnosticMessage: "shutting down")) { try box.withLockedValue { $0 }?.get() }
        }
        #expect(!harness.channel.isActive)
    }

    // MARK: Hostile servers on loopback

    /// Accepts one connection and answers its first read with `reply`.
    private func withScriptedServer(reply: [UInt8], _ body: (Int) async throws -> Void) async throws {
        let server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(ScriptedReply(reply: reply))
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        do {
            try await body(server.localAddress?.port ?? 0)
            try await server.close()
        } catch {
            try? await server.close()
            throw error
        }
    }

    private final class ScriptedReply: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        typealias OutboundOut = ByteBuffer
        let reply: [UInt8]
        init(reply: [UInt8]) { self.reply = reply }
        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(bytes: reply)), promise: nil)
        }
    }

    @Test(arguments: [
        ("announces 32 MiB", [0x30, 0x84, 0x02, 0x00, 0x00, 0x00] as [UInt8]),
        ("not BER", Array("HTTP/1.1 400 Bad Request\r\n\r\n".utf8)),
        ("indefinite length", [0x30, 0x80, 0x02, 0x01, 0x01]),
        ("garbage inside a frame", [0x30, 0x06, 0x02, 0x01, 0x01, 0x61, 0x01, 0xFF]),
    ])
    func hostileServerIsAProtocolError(_ label: String, _ reply: [UInt8]) async throws {
        try await withScriptedServer(reply: reply) { port in
            let connection = try await LDAPConnection.connect(
                try LDAPConfiguration(url: "ldap://127.0.0.1:\(port)", operationTimeout: .seconds(5)))
            let error = await #expect(throws: LDAPError.self, "\(label)") {
                try await connection.bind(dn: "cn=x", password: "y")
            }
            if case .protocolError = error {} else { Issue.record("\(label): expected .protocolError, got \(String(describing: error))") }
            #expect(!connection.isActive)
            await connection.close()
        }
    }
}
