import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOSSL
import NIOTLS

/// Multiplexes LDAP operations on one connection by message ID.
///
/// Lives on the channel's event loop (no locks): `LDAPConnection` hops there to `submit`.
/// Every operation owns a promise that is completed exactly once, with all messages the server
/// sent for that ID (entries, references, intermediate responses, then the final response), or
/// with an error: the operation's timeout, the connection closing, or a protocol error.
final class LDAPClientHandler: ChannelInboundHandler {
    typealias InboundIn = LDAPMessage
    typealias OutboundOut = ByteBuffer

    private struct Pending {
        var messages: [LDAPMessage] = []
        let promise: EventLoopPromise<[LDAPMessage]>
        var lastActivity: NIODeadline
        var timer: Scheduled<Void>?
        /// Bind and StartTLS cannot be abandoned (RFC 4511 §4.11); a timeout closes the connection.
        let closeOnTimeout: Bool
    }

    private var pending: [Int32: Pending] = [:]
    private var context: ChannelHandlerContext?
    /// Set once the connection can no longer be used; every later submission fails with it.
    private var failure: LDAPError?
    private let operationTimeout: TimeAmount
    private let logger: Logger
    private let messageIDs: MessageIDGenerator

    init(operationTimeout: TimeAmount, messageIDs: MessageIDGenerator, logger: Logger) {
        self.operationTimeout = operationTimeout
        self.messageIDs = messageIDs
        self.logger = logger
    }

    var isActive: Bool { failure == nil && context != nil }
    var inFlightCount: Int { pending.count }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        failAll(failure ?? .closed)
        self.context = nil
    }

    /// Sends a request. With a promise the operation waits for its response(s); without one
    /// (unbind, abandon) it is fire-and-forget.
    func submit(
        messageID: Int32, operation: LDAPOperation, controls: [LDAPControl],
        promise: EventLoopPromise<[LDAPMessage]>?, closeOnTimeout: Bool = false
    ) {
        guard let context, failure == nil else {
            promise?.fail(failure ?? .closed)
            return
        }
        if let promise {
            let now = context.eventLoop.now
            var operation = Pending(promise: promise, lastActivity: now, closeOnTimeout: closeOnTimeout)
            operation.timer = scheduleTimeout(messageID: messageID, at: now + operationTimeout, context: context)
            pending[messageID] = operation
        }
        let bytes = LDAPMessage(messageID: messageID, operation: operation, controls: controls).encode()
        let buffer = context.channel.allocator.buffer(bytes: bytes)
        let writePromise = context.eventLoop.makePromise(of: Void.self)
        writePromise.futureResult.assumeIsolated().whenFailure { [weak self] error in
            self?.finish(messageID, with: .failure(Self.map(error)))
        }
        context.writeAndFlush(wrapOutboundOut(buffer), promise: writePromise)
    }

    /// Gives up on an operation (task cancelled): fails it and asks the server to abandon it.
    func abandon(messageID: Int32, error: any Error) {
        guard pending[messageID] != nil else { return }
        finish(messageID, with: .failure(error))
        submit(messageID: messageIDs.next(), operation: .abandonRequest(messageID), controls: [], promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let message = unwrapInboundIn(data)
        if message.messageID == 0 {
            handleUnsolicited(message, context: context)
            return
        }
        guard pending[message.messageID] != nil else {
            // Late answers to an abandoned or timed-out operation.
            logger.trace("LDAP: message for an unknown operation", metadata: ["ldap.message_id": "\(message.messageID)"])
            return
        }
        switch message.operation {
        case .searchResultEntry, .searchResultReference, .intermediateResponse:
            pending[message.messageID]?.messages.append(message)
            pending[message.messageID]?.lastActivity = context.eventLoop.now
        case .bindResponse, .searchResultDone, .extendedResponse, .otherResponse:
            pending[message.messageID]?.messages.append(message)
            let messages = pending[message.messageID]?.messages ?? [message]
            finish(message.messageID, with: .success(messages))
        case .bindRequest, .unbindRequest, .searchRequest, .abandonRequest, .extendedRequest:
            fail(.protocolError("the server sent a request operation"), context: context)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        if failure == nil { failure = .closed }
        failAll(failure ?? .closed)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // Once connected, a reset or broken pipe means the server went away: `.closed`.
        if error is IOError {
            logger.debug("LDAP: connection lost", metadata: ["ldap.error": "\(error)"])
            fail(.closed, context: context)
        } else {
            fail(Self.map(error), context: context)
        }
    }

    /// Notice of Disconnection (RFC 4511 §4.4.1) or anything else with message ID 0.
    private func handleUnsolicited(_ message: LDAPMessage, context: ChannelHandlerContext) {
        if case .extendedResponse(let result, let name, _) = message.operation {
            logger.warning(
                "LDAP: the server is closing the connection",
                metadata: ["ldap.notice": "\(name ?? "")", "ldap.result": "\(result.code)", "ldap.diagnostic": "\(result.diagnosticMessage)"])
            fail(result.isSuccess ? .closed : result.error, context: context)
        } else {
            fail(.protocolError("unsolicited message with ID 0"), context: context)
        }
    }

    private func fail(_ error: LDAPError, context: ChannelHandlerContext) {
        if failure == nil {
            failure = error
            logger.debug("LDAP: connection failed", metadata: ["ldap.error": "\(error)"])
        }
        // Close first, so a caller woken by the failure already sees `isActive == false`.
        context.close(promise: nil)
        failAll(error)
    }

    private func failAll(_ error: LDAPError) {
        let ids = Array(pending.keys)
        for id in ids { finish(id, with: .failure(error)) }
    }

    private func finish(_ messageID: Int32, with result: Result<[LDAPMessage], any Error>) {
        guard let operation = pending.removeValue(forKey: messageID) else { return }
        operation.timer?.cancel()
        operation.promise.completeWith(result)
    }

    private func scheduleTimeout(messageID: Int32, at deadline: NIODeadline, context: ChannelHandlerContext) -> Scheduled<Void> {
        context.eventLoop.assumeIsolated().scheduleTask(deadline: deadline) { [weak self] in
            self?.checkTimeout(messageID: messageID)
        }
    }

    /// Fires at `lastActivity + timeout` as it was when scheduled; reschedules if messages arrived since.
    private func checkTimeout(messageID: Int32) {
        guard let operation = pending[messageID], let context else { return }
        let deadline = operation.lastActivity + operationTimeout
        if deadline > context.eventLoop.now {
            pending[messageID]?.timer = scheduleTimeout(messageID: messageID, at: deadline, context: context)
            return
        }
        logger.debug("LDAP: operation timed out", metadata: ["ldap.message_id": "\(messageID)"])
        finish(messageID, with: .failure(LDAPError.timeout))
        if operation.closeOnTimeout {
            fail(.timeout, context: context)
        } else {
            submit(messageID: messageIDs.next(), operation: .abandonRequest(messageID), controls: [], promise: nil)
        }
    }

    static func map(_ error: any Error) -> LDAPError {
        switch error {
        case let error as LDAPError: return error
        case let error as NIOSSLError: return .tlsFailure(String(describing: error))
        case let error as NIOSSLExtraError: return .tlsFailure(String(describing: error))
        case let error as BoringSSLError: return .tlsFailure(String(describing: error))
        case let error as ChannelError where error == .ioOnClosedChannel || error == .alreadyClosed: return .closed
        case let error as ByteToMessageDecoderError: return .protocolError(String(describing: error))
        default: return .connectionFailed(String(describing: error))
        }
    }
}

/// Completes a promise when the TLS handshake finishes (LDAPS or after StartTLS), or fails it
/// with `.tlsFailure` when the handshake fails or the connection drops; then removes itself.
final class TLSHandshakeHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer

    private let promise: EventLoopPromise<Void>
    private var done = false

    init(promise: EventLoopPromise<Void>) {
        self.promise = promise
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? TLSUserEvent, case .handshakeCompleted = event, !done {
            done = true
            promise.succeed(())
            context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if !done {
            done = true
            promise.fail(LDAPError.tlsFailure(String(describing: error)))
        }
        context.fireErrorCaught(error)
    }

    func channelInactive(context: ChannelHandlerContext) {
        if !done {
            done = true
            promise.fail(LDAPError.tlsFailure("the server closed the connection during the TLS handshake"))
        }
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        if !done {
            done = true
            promise.fail(LDAPError.closed)
        }
    }
}

/// Message IDs for one connection: 1, 2, … wrapping back to 1 after Int32.max (0 is reserved
/// for unsolicited notifications).
final class MessageIDGenerator: Sendable {
    private let counter = NIOLockedValueBox<Int32>(0)

    func next() -> Int32 {
        counter.withLockedValue { value in
            value = value == Int32.max ? 1 : value + 1
            return value
        }
    }
}
