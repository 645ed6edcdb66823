import ArgumentParser
import Foundation
import XMLStream
import XMPPCore

struct SwitchboardBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "switchboard-bench",
        abstract: "XMPP load generator (standard XMPP only: RFC 6120/6121/7395, XEP-0077, XEP-0045).",
        discussion: """
            Drives Switchboard, Prosody or ejabberd identically. Each run prints one JSON line on stdout \
            (progress goes to stderr), is bounded in count and time, and closes every connection cleanly. \
            Users are PREFIX1..PREFIXN. Pin the server and the generator to different cores (taskset) and \
            pass --server-pid to get the server's CPU time and RSS; the generator's own CPU share is \
            always reported so a generator limit is not mistaken for a server limit.
            """,
        subcommands: [Register.self, Login.self, Idle.self, Messages.self, MUC.self, Roster.self, Request.self, SelfTest.self]
    )
}

struct CommonOptions: ParsableArguments {
    @Option(help: "Server address.")
    var host = "127.0.0.1"

    @Option(help: "Server port (default: 5222 tcp/starttls, 5223 tls, 5280 ws, 5443 wss).")
    var port: Int?

    @Option(help: "XMPP domain of the accounts.")
    var domain = "localhost"

    @Option(help: "tcp (no TLS), starttls, tls (direct TLS), ws (RFC 7395 ws://host:port/xmpp-websocket), wss.")
    var transport: Transport = .tcp

    @Option(help: "SASL mechanism: SCRAM-SHA-1, SCRAM-SHA-256 or PLAIN.")
    var mechanism: Mechanism = .scramSHA1

    @Option(help: "User names are PREFIX1..PREFIXN.")
    var userPrefix = "bench"

    @Option(help: "Password of every account.")
    var password = "secret"

    @Option(help: "Number of users (N).")
    var users = 200

    @Option(help: "Index of the first user.")
    var firstUser = 1

    @Option(help: "Logins (connection setups) in flight at once (K).")
    var concurrency = 50

    @Option(help: "Event loops (threads) of the generator; 1 when it is pinned to one core.")
    var threads = 1

    @Option(help: "Spread connections over source addresses 127.0.0.1..127.0.0.N (loopback servers only; 0 = kernel's choice).")
    var sourceAddresses = 9

    @Option(name: .customLong("server-pid"), help: "Server process: read its CPU time and RSS from /proc.")
    var serverPID: Int32?

    @Option(help: "Free text copied into the JSON.")
    var label = ""

    @Option(help: "Seconds a connection may take from connect to ready (or registered).")
    var timeout: Double = 30

    @Option(help: "Resource to bind (empty: let the server choose).")
    var resource = "bench"

    @Option(name: .customLong("ws-path"), help: "WebSocket path.")
    var wsPath = "/xmpp-websocket"

    @Option(name: .customLong("tls-server-name"), help: "SNI name (default: the domain). Certificates are not verified.")
    var tlsServerName: String?

    @Option(
        name: .customLong("tls-groups"),
        help: "TLS key-exchange groups offered, comma-separated: x25519, x25519mlkem768, p256, p384, p521 (default: the TLS library's, which includes X25519MLKEM768).")
    var tlsGroups: String?

    func validate() throws {
        if let tlsGroups { _ = try TLSGroups.parse(tlsGroups) }
        guard users >= 1 else { throw ValidationError("--users must be at least 1") }
        guard concurrency >= 1 else { throw ValidationError("--concurrency must be at least 1") }
        guard (1...64).contains(threads) else { throw ValidationError("--threads must be 1...64") }
        guard timeout > 0 else { throw ValidationError("--timeout must be positive") }
    }
}

struct Register: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Create N accounts by in-band registration (XEP-0077); an existing account counts as OK.")

    @OptionGroup var common: CommonOptions

    func run() throws {
        try Scenarios.register(common)
    }
}

struct Login: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "N users log in (auth + bind) and close, K in flight, for several rounds.",
        discussion: "Reports each round and the median of rounds 2..R (the client's PBKDF2 is cached after round 1).")

    @OptionGroup var common: CommonOptions

    @Option(help: "Rounds.")
    var rounds = 3

    @Flag(help: "Send initial presence after binding.")
    var presence = false

    @Option(help: "Seconds to pause between rounds.")
    var pause: Double = 1

    func run() throws {
        try Scenarios.login(common, rounds: max(1, rounds), presence: presence, pause: pause)
    }
}

struct Roster: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Login + roster get per user; reports login and roster-result latency percentiles.")

    @OptionGroup var common: CommonOptions

    @Option(help: "Rounds (round 1 includes the client's PBKDF2).")
    var rounds = 2

    @Option(help: "Seconds to pause between rounds.")
    var pause: Double = 1

    func run() throws {
        var iq = XMLStream.XMLElement(name: "iq", namespace: NS.client)
        iq[attribute: "type"] = "get"
        iq.append(XMLStream.XMLElement("query", xmlns: NS.roster))
        try Scenarios.login(common, rounds: max(1, rounds), presence: false, pause: pause, request: iq, scenario: "roster")
    }
}

struct Request: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "iq",
        abstract: "Login + one IQ per user (e.g. a directory search); reports the IQ's round-trip latency percentiles.",
        discussion: """
            EXAMPLE (XEP-0055 search by pinyin initials):
              switchboard-bench iq --domain example.com --users 200 --to example.com \\
                --payload "<query xmlns='jabber:iq:search'><first>zw</first></query>" --type set
            """)

    @OptionGroup var common: CommonOptions

    @Option(help: "The IQ's payload (one XML element).")
    var payload: String

    @Option(help: "Address the IQ to this JID (default: the user's own account).")
    var to: String?

    @Option(help: "get or set.")
    var type = "get"

    @Option(help: "Rounds.")
    var rounds = 2

    @Option(help: "Seconds to pause between rounds.")
    var pause: Double = 1

    @Option(help: "Name of the measured step in the JSON (e.g. search).")
    var name = "iq"

    func run() throws {
        let element: XMLStream.XMLElement
        do {
            element = try XMLStream.XMLElement.parse(payload)
        } catch {
            throw ValidationError("--payload is not one well-formed XML element: \(error)")
        }
        var iq = XMLStream.XMLElement(name: "iq", namespace: NS.client)
        iq[attribute: "type"] = type
        if let to { iq[attribute: "to"] = to }
        iq.append(element)
        try Scenarios.login(common, rounds: max(1, rounds), presence: false, pause: pause, request: iq, scenario: name)
    }
}

struct Idle: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Hold authenticated connections and measure server RSS per connection (least-squares slope).")

    @OptionGroup var common: CommonOptions

    @Option(help: "Connection counts at which to read RSS, comma-separated.")
    var steps = "0,2000,5000,10000"

    @Option(help: "Seconds to wait at each step before reading RSS.")
    var settle: Double = 15

    @Flag(inversion: .prefixedNo, help: "Send initial presence.")
    var presence = true

    func run() throws {
        let parsed = try steps.split(separator: ",").map { part -> Int in
            guard let value = Int(part.trimmingCharacters(in: .whitespaces)), value >= 0 else {
                throw ValidationError("--steps: '\(part)' is not a count")
            }
            return value
        }
        try Scenarios.idle(common, steps: Array(Set(parsed)).sorted(), settle: settle, presence: presence)
    }
}

struct Messages: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "1:1 chat: U users in U/2 pairs; closed loop with W in flight per user, or open loop at --rate.")

    @OptionGroup var common: CommonOptions

    @Option(help: "Messages in flight per user (closed loop).")
    var window = 2

    @Option(help: "Measured seconds.")
    var duration: Double = 20

    @Option(help: "Seconds of traffic before measuring.")
    var warmup: Double = 5

    @Option(help: "Open loop: total messages/s offered, evenly spread (omit for closed loop).")
    var rate: Double?

    @Option(help: "Bytes of message body.")
    var bodySize = 64

    func validate() throws {
        guard common.users >= 2, common.users % 2 == 0 else { throw ValidationError("--users must be even (pairs)") }
        guard window >= 1 else { throw ValidationError("--window must be at least 1") }
        guard duration > 0 else { throw ValidationError("--duration must be positive") }
        if let rate, rate <= 0 { throw ValidationError("--rate must be positive") }
    }

    func run() throws {
        try Scenarios.messages(
            common, window: window, duration: duration, warmup: max(0, warmup), rate: rate, bodySize: bodySize)
    }
}

struct MUC: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "muc",
        abstract: "Group chat fan-out (XEP-0045): U occupants in one room, one sender, count deliveries/s.")

    @OptionGroup var common: CommonOptions

    @Option(help: "MUC service (default: conference.DOMAIN).")
    var service: String?

    @Option(help: "Room name.")
    var room = "benchroom"

    @Option(help: "Messages the sender sends.")
    var messages = 1000

    @Option(help: "Messages in flight (the sender's own echo releases the next).")
    var window = 2

    @Option(help: "Upper bound in seconds for the sending phase.")
    var duration: Double = 60

    @Option(help: "Bytes of message body.")
    var bodySize = 64

    func run() throws {
        try Scenarios.muc(
            common, service: service ?? "conference.\(common.domain)", room: room, messages: max(1, messages),
            window: max(1, window), duration: duration, bodySize: bodySize)
    }
}
