// nio-relay PORT PAIRS: accepts 2*PAIRS connections and forwards each read from connection 2k to
// 2k+1 and back, on one event loop (the protocol of relay.c's `relay` mode, driven by its `drive`).
import NIOCore
import NIOPosix

/// The accepted connections in accept order; only touched on the one event loop.
final class Connections: @unchecked Sendable {
    var channels: [Channel?] = []
}

final class RelayHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    let index: Int
    let connections: Connections

    init(index: Int, connections: Connections) {
        self.index = index
        self.connections = connections
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let partner = index ^ 1
        guard partner < connections.channels.count, let to = connections.channels[partner] else { return }
        to.writeAndFlush(data, promise: nil)
    }
}

let arguments = CommandLine.arguments
guard arguments.count >= 3, let port = Int(arguments[1]), let pairs = Int(arguments[2]) else {
    print("usage: nio-relay PORT PAIRS")
    exit(2)
}
let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
let connections = Connections()
connections.channels.reserveCapacity(2 * pairs)
let server = try ServerBootstrap(group: group)
    .serverChannelOption(.backlog, value: 1024)
    .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
    .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
    .childChannelInitializer { channel in
        let index = connections.channels.count
        connections.channels.append(channel)
        return channel.pipeline.addHandler(RelayHandler(index: index, connections: connections))
    }
    .bind(host: "127.0.0.1", port: port).wait()
try server.closeFuture.wait()
