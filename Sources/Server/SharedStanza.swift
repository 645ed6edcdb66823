import NIOCore
import XMLStream
import XMPPCore

/// A stanza a service sends to many addressees that differ only in `to` (a room's message to
/// its occupants): serialised once, then each copy is a memory copy with the `to` attribute
/// spliced into the start tag.
///
/// ```
///  <message from="room@conference.example/nick" type="groupchat" id="…"   to="alice@example/pc"  ><body>…</body></message>
///  └──────────────────────────── prefix ──────────────────────────────┘  └── per recipient ──┘  └────── suffix ───────┘
/// ```
public final class SharedStanza: Sendable {
    /// The stanza without `to`.
    public let element: XMLElement
    /// Serialised for a `jabber:client` TCP stream (default namespace in scope).
    private let prefix: ByteBuffer
    private let suffix: ByteBuffer

    public init(_ element: XMLElement) {
        var element = element
        element[attribute: "to"] = nil
        self.element = element
        var buffer = ByteBufferAllocator().buffer(capacity: 512)
        XMLSerializer.write(element, into: &buffer, defaultNamespace: NS.client)
        // The start tag ends at the first '>' ('>' inside attribute values is escaped).
        let view = buffer.readableBytesView
        var split = view.firstIndex(of: UInt8(ascii: ">")) ?? view.endIndex
        if split > view.startIndex, view[split - 1] == UInt8(ascii: "/") { split -= 1 }
        let offset = split - view.startIndex
        self.prefix = buffer.getSlice(at: buffer.readerIndex, length: offset) ?? ByteBuffer()
        self.suffix = buffer.getSlice(at: buffer.readerIndex + offset, length: buffer.readableBytes - offset) ?? ByteBuffer()
    }

    /// The stanza addressed to `to`, as an element (for paths that need one: XEP-0198 queues,
    /// WebSocket framing, hooks).
    public func element(to: String) -> XMLElement {
        var copy = element
        copy[attribute: "to"] = to
        return copy
    }

    /// Appends the stanza addressed to `to` as it goes on a TCP client stream.
    func write(to: String, into buffer: inout ByteBuffer) {
        buffer.writeImmutableBuffer(prefix)
        buffer.writeStaticString(" to=\"")
        XMLSerializer.writeEscaped(to, into: &buffer, attribute: true)
        buffer.writeStaticString("\"")
        buffer.writeImmutableBuffer(suffix)
    }

    var byteCount: Int { prefix.readableBytes + suffix.readableBytes + 8 }

    var isPresence: Bool { element.name == "presence" }
}

/// One stanza a service delivers to one bound session (see `ServerContext.deliverInOrder`).
public enum ServiceDelivery: Sendable {
    /// A stanza serialised once for many sessions, to the session `to` (bare key given to
    /// spare a conversion).
    case shared(SharedStanza, to: JID, bareKey: String)
    /// A stanza for one session, `to` set.
    case stanza(XMLElement, to: JID, bareKey: String)

    var to: JID {
        switch self {
        case .shared(_, let to, _), .stanza(_, let to, _): return to
        }
    }

    var bareKey: String {
        switch self {
        case .shared(_, _, let key), .stanza(_, _, let key): return key
        }
    }
}
