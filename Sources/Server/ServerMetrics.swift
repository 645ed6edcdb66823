import NIOConcurrencyHelpers
import Prometheus

/// The server's counters and gauges, exposed in Prometheus text format at `/metrics`.
///
/// One registry per server instance (not the process-global `MetricsSystem`), so several
/// servers in one test process do not mix their figures.
public final class ServerMetrics: Sendable {
    public let registry = PrometheusCollectorRegistry()
    private let connectionsOpen: Gauge
    private let openConnections = NIOLockedValueBox(0)
    let connectionsTotal: Counter
    let sessionsBound: Gauge
    let loginsSucceeded: Counter
    let loginsFailed: Counter
    let loginsThrottled: Counter
    let stanzasIn: Counter
    let stanzasOut: Counter
    let streamErrors: Counter
    let stanzaErrors: Counter
    let offlineStored: Counter
    private let limitHits: [Limit: Counter]
    private let journalBacklog: Gauge
    private let journalApplyFailures: Counter
    /// The journal's failed applies already added to `journalApplyFailures`.
    private let journalApplyFailuresCounted = NIOLockedValueBox(0)

    /// A protective limit (docs/security.md), counted in `switchboard_limit_hits_total{limit=…}`.
    enum Limit: String, CaseIterable, Sendable {
        /// A connection ran out of stanza tokens and was held back (once per episode).
        case stanzaRate = "stanza_rate"
        /// A connection stayed over its stanza rate for too long and was closed.
        case stanzaRateDisconnect = "stanza_rate_disconnect"
        /// A connection refused at accept: its address had too many open.
        case connectionsPerAddress = "connections_per_address"
        /// A connection refused at accept: its address opened too many too fast.
        case connectionRate = "connection_rate"
        /// A bind refused with resource-constraint: the account had too many sessions.
        case sessionsPerUser = "sessions_per_user"
        /// An account or address was locked out after failed logins.
        case loginLockout = "login_lockout"
        /// A stream ended: stanza larger than the (pre-authentication) size limit.
        case stanzaSize = "stanza_size"
        /// A stream ended: elements nested too deeply.
        case stanzaDepth = "stanza_depth"
        /// A connection closed for not authenticating and binding in time (slow clients, slow-loris).
        case loginTimeout = "login_timeout"
    }

    init() {
        connectionsOpen = registry.makeGauge(descriptor: MetricNameDescriptor(namespace: "switchboard", metricName: "connections_open", unitName: "", helpText: "Client connections currently open"))
        connectionsTotal = registry.makeCounter(descriptor: MetricNameDescriptor(namespace: "switchboard", metricName: "connections", unitName: "total", helpText: "Client connections accepted"))
        sessionsBound = registry.makeGauge(descriptor: MetricNameDescriptor(namespace: "switchboard", metricName: "sessions_bound", unitName: "", helpText: "Authenticated sessions with a bound resource"))
        loginsSucceeded = registry.makeCounter(descriptor: MetricNameDescriptor(namespace: "switchboard", metricName: "logins", unitName: "total", helpText: "SASL authentications by result"), labels: [("result", "ok")])
        loginsFailed = registry.makeCounter(descriptor: MetricNameDescriptor(namespace: "switchboard", metricName: "logins", unitName: "total", helpText: "SASL authentications by result"), labels: [("result", "failed")])
        loginsThrottled = registry.makeCounter(descriptor: MetricNameDescriptor(namespace: "switchboard", metricName: "logins", unitName: "total", helpText: "SASL authentications by result"), labels: [("result", "throttled")])
        stanzasIn = registry.makeCounter(descriptor: MetricNameDescriptor(namespace: "switchboard", metricName: "stanzas_in", unitName: "total", helpText: "Stanzas received from clients"))
        stanzasOut = registry.makeCounter(descriptor: MetricNameDescriptor(namespace: "switchboard", metricName: "stanzas_out", unitName: "total", helpText: "Stanzas sent to clients"))
        streamErrors = registry.makeCounter(descriptor: MetricNameDescriptor(namespace: "switchboard", metricName: "stream_errors", unitName: "total", helpText: "Streams closed with a stream error"))
        stanzaErrors = registry.makeCounter(descriptor: MetricNameDescriptor(namespace: "switchboard", metricName: "stanza_errors", unitName: "total", helpText: "Stanza errors returned to clients"))
        offlineStored = registry.makeCounter(descriptor: MetricNameDescriptor(namespace: "switchboard", metricName: "offline_messages_stored", unitName: "total", helpText: "Messages stored for offline users"))
        journalBacklog = registry.makeGauge(
            descriptor: MetricNameDescriptor(
                namespace: "switchboard", metricName: "journal_backlog_entries", unitName: "",
                helpText: "Message journal entries (archive copies, audit records) durable but not yet in the database"))
        journalApplyFailures = registry.makeCounter(
            descriptor: MetricNameDescriptor(
                namespace: "switchboard", metricName: "journal_apply_failures", unitName: "total",
                helpText: "Applies of the message journal to the database that failed (retried; the entries stay durable in the journal)"))
        var hits: [Limit: Counter] = [:]
        for limit in Limit.allCases {
            hits[limit] = registry.makeCounter(
                descriptor: MetricNameDescriptor(
                    namespace: "switchboard", metricName: "limit_hits", unitName: "total",
                    helpText: "Protective limits hit (docs/security.md)"),
                labels: [("limit", limit.rawValue)])
        }
        limitHits = hits
    }

    /// Counts one hit of a protective limit.
    func limitHit(_ limit: Limit) { limitHits[limit]?.increment() }

    /// Prometheus text exposition.
    public func exposition() -> [UInt8] {
        var buffer: [UInt8] = []
        buffer.reserveCapacity(4096)
        registry.emit(into: &buffer)
        return buffer
    }
}

extension ServerMetrics {
    /// Open connections, for shutdown draining.
    var connectionsOpenValue: Int { openConnections.withLockedValue { $0 } }

    public func countOfflineStored() { offlineStored.increment() }

    /// Brings the journal's figures up to date (read when scraped, not pushed per entry).
    func updateJournal(backlog: Int, failedApplies: Int) {
        journalBacklog.set(to: Double(backlog))
        let added = journalApplyFailuresCounted.withLockedValue { counted -> Int in
            defer { counted = max(counted, failedApplies) }
            return max(0, failedApplies - counted)
        }
        if added > 0 { journalApplyFailures.increment(by: Int64(added)) }
    }

    func connectionOpened() {
        openConnections.withLockedValue { $0 += 1 }
        connectionsOpen.increment()
        connectionsTotal.increment()
    }

    func connectionClosed() {
        openConnections.withLockedValue { $0 -= 1 }
        connectionsOpen.decrement()
    }
}
