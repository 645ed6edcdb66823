import Foundation
import Histogram

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

// MARK: - Counters collected on each event loop

/// Latencies are recorded in microseconds.
typealias LatencyHistogram = Histogram<UInt64>

func makeLatencyHistogram() -> LatencyHistogram {
    // 1 µs … 10 min, 3 significant digits.
    Histogram<UInt64>(lowestDiscernibleValue: 1, highestTrackableValue: 600_000_000, numberOfSignificantValueDigits: .three)
}

extension LatencyHistogram {
    mutating func recordMicros(sinceNanos start: UInt64, now: UInt64) {
        let micros = now > start ? (now - start) / 1_000 : 0
        record(Swift.min(Swift.max(micros, 1), 600_000_000))
    }
}

/// What one event loop counted. Merged across loops at the end of a measurement.
struct LoopStats: Sendable {
    /// Sessions that became ready (logins) or registrations that completed.
    var succeeded = 0
    var created = 0
    var existed = 0
    var failures: [String: Int] = [:]
    /// Sessions lost after they were ready.
    var dropped = 0
    /// Time (monotonic ns) the last login/registration of the batch completed or failed.
    var lastDoneNanos: UInt64 = 0
    var loginLatency = makeLatencyHistogram()
    /// Second-step latency (roster result after the roster get; MUC join).
    var stepLatency = makeLatencyHistogram()

    var sent = 0
    var received = 0
    var messageErrors = 0
    var messageLatency = makeLatencyHistogram()
    /// Open loop: how late the generator issued each message after its intended send time.
    var sendLag = makeLatencyHistogram()

    var failureCount: Int { failures.values.reduce(0, +) }

    mutating func fail(_ reason: String) {
        failures[reason, default: 0] += 1
    }

    mutating func merge(_ other: LoopStats) {
        succeeded += other.succeeded
        created += other.created
        existed += other.existed
        for (reason, count) in other.failures { failures[reason, default: 0] += count }
        dropped += other.dropped
        lastDoneNanos = max(lastDoneNanos, other.lastDoneNanos)
        loginLatency.add(other.loginLatency)
        stepLatency.add(other.stepLatency)
        sent += other.sent
        received += other.received
        messageErrors += other.messageErrors
        messageLatency.add(other.messageLatency)
        sendLag.add(other.sendLag)
    }
}

// MARK: - CPU and memory

struct ProcSample: Sendable {
    /// utime + stime, seconds.
    var cpuSeconds: Double
    /// VmRSS, KiB.
    var rssKiB: Int
}

enum ProcessProbe {
    private static let ticksPerSecond: Double = {
        let ticks = sysconf(Int32(_SC_CLK_TCK))
        return ticks > 0 ? Double(ticks) : 100
    }()

    /// CPU time and RSS of another process, from /proc (Linux).
    static func sample(pid: Int32) -> ProcSample? {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)
        else { return nil }
        // Fields after "(comm)": state is field 3, utime 14, stime 15.
        guard let close = stat.lastIndex(of: ")") else { return nil }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        guard fields.count > 13, let utime = Double(fields[11]), let stime = Double(fields[12]) else { return nil }
        var rss = 0
        for line in status.split(separator: "\n") where line.hasPrefix("VmRSS:") {
            let parts = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            if parts.count >= 2 { rss = Int(parts[1]) ?? 0 }
        }
        return ProcSample(cpuSeconds: (utime + stime) / ticksPerSecond, rssKiB: rss)
    }

    /// CPU seconds of another process's threads by thread name (threads of one name summed:
    /// a pool's workers), from each thread's `schedstat` (nanoseconds on a CPU; Linux). Tells
    /// the event loops from storage and worker threads, so a figure says where the core went.
    static func threadCPU(pid: Int32) -> [String: Double] {
        guard let tids = try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task") else { return [:] }
        var seconds: [String: Double] = [:]
        for tid in tids {
            guard let comm = try? String(contentsOfFile: "/proc/\(pid)/task/\(tid)/comm", encoding: .utf8),
                  let schedstat = try? String(contentsOfFile: "/proc/\(pid)/task/\(tid)/schedstat", encoding: .utf8),
                  let nanos = schedstat.split(separator: " ").first.flatMap({ Double($0) })
            else { continue }
            seconds[comm.trimmingCharacters(in: .whitespacesAndNewlines), default: 0] += nanos / 1e9
        }
        return seconds
    }

    /// This process's CPU time (user + system), seconds.
    static func ownCPUSeconds() -> Double {
        var usage = rusage()
        #if os(Linux)
        getrusage(__rusage_who_t(RUSAGE_SELF.rawValue), &usage)
        #else
        getrusage(RUSAGE_SELF, &usage)
        #endif
        return Double(usage.ru_utime.tv_sec) + Double(usage.ru_utime.tv_usec) / 1e6
            + Double(usage.ru_stime.tv_sec) + Double(usage.ru_stime.tv_usec) / 1e6
    }

    /// Raises the soft open-file limit to the hard limit; returns the new soft limit.
    @discardableResult
    static func raiseFileLimit() -> Int {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return 1024 }
        if limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max
            _ = setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
            _ = getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
        }
        return Int(clamping: limit.rlim_cur)
    }
}

/// Per-CPU jiffies from /proc/stat: busy share per core including interrupt and softirq time,
/// which no process is charged for (on loopback, TCP receive processing runs as softirq).
struct CoreSample {
    /// Per core: (busy, softirq, total) jiffies.
    var cores: [(busy: UInt64, softirq: UInt64, total: UInt64)]

    static func read() -> CoreSample? {
        guard let text = try? String(contentsOfFile: "/proc/stat", encoding: .utf8) else { return nil }
        var cores: [(UInt64, UInt64, UInt64)] = []
        for line in text.split(separator: "\n") where line.hasPrefix("cpu") && !line.hasPrefix("cpu ") {
            let values = line.split(separator: " ").dropFirst().compactMap { UInt64($0) }
            guard values.count >= 8 else { continue }
            let total = values[0..<8].reduce(0, +)
            let idle = values[3] + values[4]
            cores.append((total - idle, values[6], total))
        }
        return CoreSample(cores: cores)
    }

    /// Busy and softirq shares per core since `earlier`.
    func since(_ earlier: CoreSample) -> [(busy: Double, softirq: Double)] {
        zip(cores, earlier.cores).map { now, then in
            let total = Double(now.total &- then.total)
            guard total > 0 else { return (0, 0) }
            return (Double(now.busy &- then.busy) / total, Double(now.softirq &- then.softirq) / total)
        }
    }
}

/// Server CPU, generator CPU and wall time between two points.
struct Meter {
    let serverPID: Int32?
    let threads: Int
    private(set) var startWall = MonotonicClock.nanos()
    private(set) var startOwnCPU = ProcessProbe.ownCPUSeconds()
    private(set) var startServer: ProcSample?
    private(set) var startCores: CoreSample?
    private(set) var startThreads: [String: Double] = [:]

    init(serverPID: Int32?, threads: Int) {
        self.serverPID = serverPID
        self.threads = threads
        restart()
    }

    mutating func restart() {
        startServer = serverPID.flatMap(ProcessProbe.sample(pid:))
        startThreads = serverPID.map(ProcessProbe.threadCPU(pid:)) ?? [:]
        startCores = CoreSample.read()
        startOwnCPU = ProcessProbe.ownCPUSeconds()
        startWall = MonotonicClock.nanos()
    }

    struct Reading {
        var wallSeconds: Double
        var serverCPUSeconds: Double?
        var serverBefore: ProcSample?
        var serverAfter: ProcSample?
        var generatorCPUSeconds: Double
        /// Generator CPU / (wall × threads): the share of the cores it ran on.
        var generatorCPUShare: Double
        /// Per core: busy share (incl. irq/softirq) and softirq share.
        var cores: [(busy: Double, softirq: Double)]
        /// Server CPU seconds in the interval by thread name, busiest first (≥ 1 ms).
        var serverThreads: [(name: String, seconds: Double)] = []

        func fields() -> [(String, JSON)] {
            var out: [(String, JSON)] = [
                ("wall_s", .number(wallSeconds, 3)),
                ("server_cpu_s", serverCPUSeconds.map { .number($0, 3) } ?? .null),
                ("server_cpu_share", serverCPUSeconds.map { .number($0 / max(wallSeconds, 1e-9), 3) } ?? .null),
                ("server_rss_kib_before", serverBefore.map { .int($0.rssKiB) } ?? .null),
                ("server_rss_kib_after", serverAfter.map { .int($0.rssKiB) } ?? .null),
                ("generator_cpu_s", .number(generatorCPUSeconds, 3)),
                ("generator_cpu_share", .number(generatorCPUShare, 3)),
                ("core_busy", .array(cores.map { .number($0.busy, 3) })),
                ("core_softirq", .array(cores.map { .number($0.softirq, 3) })),
            ]
            if !serverThreads.isEmpty {
                out.append(("server_threads_cpu_s", .object(serverThreads.map { ($0.name, .number($0.seconds, 3)) })))
            }
            if serverBefore == nil { out.removeAll { $0.0 == "server_cpu_share" } }
            return out
        }
    }

    func read() -> Reading {
        let now = MonotonicClock.nanos()
        let ownCPU = ProcessProbe.ownCPUSeconds()
        let server = serverPID.flatMap(ProcessProbe.sample(pid:))
        let wall = Double(now - startWall) / 1e9
        let generator = ownCPU - startOwnCPU
        var serverCPU: Double?
        if let before = startServer, let after = server { serverCPU = after.cpuSeconds - before.cpuSeconds }
        var cores: [(busy: Double, softirq: Double)] = []
        if let before = startCores, let after = CoreSample.read() { cores = after.since(before) }
        var perThread: [(name: String, seconds: Double)] = []
        if let serverPID {
            for (name, seconds) in ProcessProbe.threadCPU(pid: serverPID) {
                // A thread that started during the interval counts from zero.
                let spent = seconds - (startThreads[name] ?? 0)
                if spent >= 0.001 { perThread.append((name, spent)) }
            }
            perThread.sort { $0.seconds > $1.seconds }
        }
        return Reading(
            wallSeconds: wall, serverCPUSeconds: serverCPU, serverBefore: startServer, serverAfter: server,
            generatorCPUSeconds: generator, generatorCPUShare: generator / max(wall * Double(threads), 1e-9),
            cores: cores, serverThreads: perThread)
    }
}

// MARK: - Statistics helpers

func median(_ values: [Double]) -> Double? {
    guard !values.isEmpty else { return nil }
    let sorted = values.sorted()
    let middle = sorted.count / 2
    return sorted.count % 2 == 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2
}

/// Least-squares slope and intercept of y over x.
func leastSquares(_ points: [(x: Double, y: Double)]) -> (slope: Double, intercept: Double)? {
    guard points.count >= 2 else { return nil }
    let n = Double(points.count)
    let meanX = points.map(\.x).reduce(0, +) / n
    let meanY = points.map(\.y).reduce(0, +) / n
    var covariance = 0.0
    var variance = 0.0
    for point in points {
        covariance += (point.x - meanX) * (point.y - meanY)
        variance += (point.x - meanX) * (point.x - meanX)
    }
    guard variance > 0 else { return nil }
    let slope = covariance / variance
    return (slope, meanY - slope * meanX)
}

/// count, p50/p90/p99/p99.9/max/mean in milliseconds.
func latencyJSON(_ histogram: LatencyHistogram) -> JSON {
    guard histogram.totalCount > 0 else { return .object([("count", .int(0))]) }
    func ms(_ micros: UInt64) -> JSON { .number(Double(micros) / 1000, 3) }
    return .object([
        ("count", .int(Int(histogram.totalCount))),
        ("p50_ms", ms(histogram.valueAtPercentile(50))),
        ("p90_ms", ms(histogram.valueAtPercentile(90))),
        ("p99_ms", ms(histogram.valueAtPercentile(99))),
        ("p999_ms", ms(histogram.valueAtPercentile(99.9))),
        ("max_ms", ms(histogram.max)),
        ("mean_ms", .number(histogram.mean / 1000, 3)),
    ])
}

func failuresJSON(_ failures: [String: Int]) -> JSON {
    .object(failures.sorted { $0.value > $1.value }.map { ($0.key, .int($0.value)) })
}

// MARK: - JSON output (ordered keys, one line)

indirect enum JSON {
    case null
    case bool(Bool)
    case int(Int)
    /// A number rounded to `decimals` places.
    case number(Double, Int)
    case string(String)
    case array([JSON])
    case object([(String, JSON)])

    func render() -> String {
        var out = ""
        write(into: &out)
        return out
    }

    private func write(into out: inout String) {
        switch self {
        case .null:
            out += "null"
        case .bool(let value):
            out += value ? "true" : "false"
        case .int(let value):
            out += String(value)
        case .number(let value, let decimals):
            guard value.isFinite else {
                out += "null"
                return
            }
            if value == value.rounded(), abs(value) < 1e15 {
                out += String(Int64(value))
            } else {
                out += String(format: "%.\(decimals)f", value)
            }
        case .string(let value):
            out += "\""
            for scalar in value.unicodeScalars {
                switch scalar {
                case "\"": out += "\\\""
                case "\\": out += "\\\\"
                case "\n": out += "\\n"
                case "\r": out += "\\r"
                case "\t": out += "\\t"
                default:
                    if scalar.value < 0x20 {
                        out += String(format: "\\u%04x", scalar.value)
                    } else {
                        out.unicodeScalars.append(scalar)
                    }
                }
            }
            out += "\""
        case .array(let values):
            out += "["
            for (index, value) in values.enumerated() {
                if index > 0 { out += "," }
                value.write(into: &out)
            }
            out += "]"
        case .object(let pairs):
            out += "{"
            for (index, pair) in pairs.enumerated() {
                if index > 0 { out += "," }
                JSON.string(pair.0).write(into: &out)
                out += ":"
                pair.1.write(into: &out)
            }
            out += "}"
        }
    }
}

/// Human-readable progress on stderr.
func progress(_ message: String) {
    FileHandle.standardError.write(Data(("[bench] " + message + "\n").utf8))
}
