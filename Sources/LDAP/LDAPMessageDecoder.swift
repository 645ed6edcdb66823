import NIOCore

/// Frames LDAP PDUs on the BER length of the outer SEQUENCE and decodes them.
///
/// ```
/// +------+----------------------------+-----------------------------+
/// | 0x30 | length: 0xxxxxxx           | LDAPMessage contents        |
/// |      |   or 1nnnnnnn + n octets   | (length octets)             |
/// +------+----------------------------+-----------------------------+
/// ```
///
/// Only definite lengths are legal in LDAP (RFC 4511 §5.1). A PDU announcing more than
/// `maximumMessageSize` octets is rejected before it is buffered, so a hostile or broken server
/// cannot make the client allocate without bound.
struct LDAPMessageDecoder: ByteToMessageDecoder {
    typealias InboundOut = LDAPMessage

    let maximumMessageSize: Int

    init(maximumMessageSize: Int = 16 * 1024 * 1024) {
        self.maximumMessageSize = maximumMessageSize
    }

    mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let message = try Self.nextMessage(from: &buffer, maximumMessageSize: maximumMessageSize) else {
            return .needMoreData
        }
        context.fireChannelRead(Self.wrapInboundOut(message))
        return .continue
    }

    mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        // A truncated trailing PDU is dropped: the connection is going away anyway.
        try decode(context: context, buffer: &buffer)
    }

    /// Reads one complete PDU if the buffer holds one; leaves the buffer untouched otherwise.
    static func nextMessage(from buffer: inout ByteBuffer, maximumMessageSize: Int) throws -> LDAPMessage? {
        guard let total = try frameLength(buffer, maximumMessageSize: maximumMessageSize) else { return nil }
        guard let bytes = buffer.readBytes(length: total) else { return nil }
        return try LDAPMessage(berBytes: bytes)
    }

    /// The full length (header plus content) of the PDU at the reader index, or nil if the
    /// header itself is incomplete.
    static func frameLength(_ buffer: ByteBuffer, maximumMessageSize: Int) throws -> Int? {
        let start = buffer.readerIndex
        guard let tag = buffer.getInteger(at: start, as: UInt8.self) else { return nil }
        guard tag == 0x30 else {
            throw LDAPError.protocolError("expected an LDAPMessage SEQUENCE (0x30), got 0x\(String(tag, radix: 16))")
        }
        guard let first = buffer.getInteger(at: start + 1, as: UInt8.self) else { return nil }
        var contentLength: Int
        var headerLength = 2
        if first < 0x80 {
            contentLength = Int(first)
        } else if first == 0x80 {
            throw LDAPError.protocolError("indefinite length is not allowed in LDAP")
        } else {
            let count = Int(first & 0x7F)
            guard count <= 8 else { throw LDAPError.protocolError("length of \(count) octets") }
            guard let lengthBytes = buffer.getBytes(at: start + 2, length: count) else { return nil }
            contentLength = 0
            for byte in lengthBytes {
                guard contentLength <= (Int.max >> 8) else { throw LDAPError.protocolError("length overflows") }
                contentLength = contentLength << 8 | Int(byte)
                // Checked as it grows so an 8-octet length cannot overflow the sum below.
                guard contentLength <= maximumMessageSize else {
                    throw LDAPError.protocolError("message longer than the limit of \(maximumMessageSize) bytes")
                }
            }
            headerLength += count
        }
        guard contentLength + headerLength <= maximumMessageSize else {
            throw LDAPError.protocolError("message longer than the limit of \(maximumMessageSize) bytes")
        }
        guard buffer.readableBytes >= headerLength + contentLength else { return nil }
        return headerLength + contentLength
    }
}

/// Encodes outbound LDAPMessages (used by tests and the fake-server helpers; the client handler
/// encodes inline).
struct LDAPMessageEncoder: MessageToByteEncoder {
    typealias OutboundIn = LDAPMessage

    func encode(data: LDAPMessage, out: inout ByteBuffer) throws {
        out.writeBytes(data.encode())
    }
}
