import ArgumentParser
import Foundation
import NIOCore
import XMLStream

/// The scenarios, run from the main thread.
enum Scenarios {
    // MARK: - register

    static func register(_ options: CommonOptions) throws {
        let harness = try Harness(options: options)
        defer { harness.shutdown() }
        let users = harness.users(count: options.users, from: options.firstUser)
        progress("registering \(users.count) users \(options.userPrefix)\(options.firstUser)… over \(options.transport.rawValue), \(options.concurrency) in flight")
        let meter = Meter(serverPID: options.serverPID, threads: harness.threads)
        try harness.launch(users: users, concurrency: options.concurrency, goal: .register, action: .close)
        let reading = meter.read()
        let stats = try harness.stats()
        progress("registered: \(stats.created) created, \(stats.existed) existed, \(stats.failureCount) failed in \(format(reading.wallSeconds)) s")
        var out = harness.header(scenario: "register")
        out += [
            ("created", .int(stats.created)),
            ("existed", .int(stats.existed)),
            ("failures", .int(stats.failureCount)),
            ("failure_reasons", failuresJSON(stats.failures)),
            ("registrations_per_s", .number(Double(stats.succeeded) / max(reading.wallSeconds, 1e-9), 1)),
            ("latency", latencyJSON(stats.loginLatency)),
        ]
        out += reading.fields()
        emit(out)
        if stats.succeeded < users.count { throw ExitCode(2) }
    }

    // MARK: - login / roster

    /// Logins, optionally each followed by one IQ (`request`) whose round trip is measured.
    static func login(
        _ options: CommonOptions, rounds: Int, presence: Bool, pause: Double, request: XMLStream.XMLElement? = nil, scenario: String = "login"
    ) throws {
        let harness = try Harness(options: options)
        defer { harness.shutdown() }
        let users = harness.users(count: options.users, from: options.firstUser)
        let roster = request != nil
        progress("\(scenario): \(users.count) users, \(options.concurrency) in flight, \(rounds) rounds, \(options.transport.rawValue) + \(options.mechanism.rawValue)")
        let total = Meter(serverPID: options.serverPID, threads: harness.threads)
        var roundJSON: [JSON] = []
        var rates: [Double] = []
        var cpuPerLogin: [Double] = []
        var generatorShares: [Double] = []
        var p50s: [Double] = []
        var p99s: [Double] = []
        var rosterP50s: [Double] = []
        var rosterP99s: [Double] = []
        var totalFailures: [String: Int] = [:]
        for round in 1...rounds {
            if round > 1 { sleepSeconds(pause) }
            try harness.resetStats()
            let meter = Meter(serverPID: options.serverPID, threads: harness.threads)
            try harness.launch(
                users: users, concurrency: options.concurrency, goal: .session(presence: presence),
                action: request.map { .request($0) } ?? .close)
            let reading = meter.read()
            let stats = try harness.stats()
            for (reason, count) in stats.failures { totalFailures[reason, default: 0] += count }
            let loginSeconds = stats.lastDoneNanos > meter.startWall
                ? Double(stats.lastDoneNanos - meter.startWall) / 1e9 : reading.wallSeconds
            let rate = Double(stats.succeeded) / max(loginSeconds, 1e-9)
            let cpuMillis = stats.succeeded == 0 ? nil : reading.serverCPUSeconds.map { $0 * 1000 / Double(stats.succeeded) }
            var line = "round \(round): \(stats.succeeded) ok, \(stats.failureCount) failed, \(format(rate)) logins/s"
            if let cpuMillis { line += ", server \(format(cpuMillis, 3)) ms CPU/login" }
            line += ", generator CPU share \(format(reading.generatorCPUShare, 2))"
            if stats.loginLatency.totalCount > 0 {
                line += ", p50 \(format(ms(stats.loginLatency.valueAtPercentile(50)), 2)) ms p99 \(format(ms(stats.loginLatency.valueAtPercentile(99)), 2)) ms"
            }
            progress(line)
            if let reason = stats.failures.max(by: { $0.value < $1.value }) {
                progress("  most common failure (\(reason.value)×): \(reason.key)")
            }
            var fields: [(String, JSON)] = [
                ("round", .int(round)),
                ("logins", .int(stats.succeeded)),
                ("failures", .int(stats.failureCount)),
                ("login_seconds", .number(loginSeconds, 3)),
                ("logins_per_s", .number(rate, 1)),
                ("server_cpu_ms_per_login", cpuMillis.map { .number($0, 3) } ?? .null),
                ("login_latency", latencyJSON(stats.loginLatency)),
            ]
            if roster { fields.append(("\(scenario)_latency", latencyJSON(stats.stepLatency))) }
            fields += reading.fields()
            roundJSON.append(.object(fields))
            if round > 1 || rounds == 1 {
                rates.append(rate)
                if let cpuMillis { cpuPerLogin.append(cpuMillis) }
                generatorShares.append(reading.generatorCPUShare)
                if stats.loginLatency.totalCount > 0 {
                    p50s.append(ms(stats.loginLatency.valueAtPercentile(50)))
                    p99s.append(ms(stats.loginLatency.valueAtPercentile(99)))
                }
                if stats.stepLatency.totalCount > 0 {
                    rosterP50s.append(ms(stats.stepLatency.valueAtPercentile(50)))
                    rosterP99s.append(ms(stats.stepLatency.valueAtPercentile(99)))
                }
            }
        }
        let reading = total.read()
        var out = harness.header(scenario: scenario)
        out += [
            ("rounds", .int(rounds)),
            ("presence", .bool(presence)),
            ("median_of_rounds", .string(rounds > 1 ? "2..\(rounds)" : "1")),
            ("logins_per_s", median(rates).map { .number($0, 1) } ?? .null),
            ("server_cpu_ms_per_login", median(cpuPerLogin).map { .number($0, 3) } ?? .null),
            ("login_p50_ms", median(p50s).map { .number($0, 3) } ?? .null),
            ("login_p99_ms", median(p99s).map { .number($0, 3) } ?? .null),
        ]
        if roster {
            out += [
                ("\(scenario)_p50_ms", median(rosterP50s).map { .number($0, 3) } ?? .null),
                ("\(scenario)_p99_ms", median(rosterP99s).map { .number($0, 3) } ?? .null),
            ]
        }
        out += [
            ("generator_cpu_share_median", median(generatorShares).map { .number($0, 3) } ?? .null),
            ("failures", .int(totalFailures.values.reduce(0, +))),
            ("failure_reasons", failuresJSON(totalFailures)),
            ("round_results", .array(roundJSON)),
        ]
        out += reading.fields()
        emit(out)
    }

    // MARK: - idle

    static func idle(_ options: CommonOptions, steps: [Int], settle: Double, presence: Bool) throws {
        let harness = try Harness(options: options)
        defer { harness.shutdown() }
        guard let largest = steps.last else { throw BenchError("no steps") }
        guard largest <= options.users else {
            throw BenchError("the largest step (\(largest)) needs --users \(largest) or more (users \(options.userPrefix)\(options.firstUser)…)")
        }
        // Each connection is one descriptor here; keep a margin for the loops and stdio.
        guard largest <= harness.fileLimit - 64 else {
            throw BenchError("step \(largest) needs more descriptors than the open-file limit \(harness.fileLimit) allows (max \(harness.fileLimit - 64))")
        }
        progress("idle: steps \(steps.map(String.init).joined(separator: ",")), settle \(format(settle)) s, \(options.transport.rawValue) + \(options.mechanism.rawValue)")
        let meter = Meter(serverPID: options.serverPID, threads: harness.threads)
        var nextUser = options.firstUser
        var points: [(x: Double, y: Double)] = []
        var pointJSON: [JSON] = []
        for step in steps {
            let held = try harness.heldCount()
            let needed = step - held
            if needed > 0 {
                let batch = harness.users(count: needed, from: nextUser)
                nextUser += needed
                let started = MonotonicClock.nanos()
                try harness.launch(users: batch, concurrency: options.concurrency, goal: .session(presence: presence), action: .hold)
                progress("connected \(try harness.heldCount()) (+\(needed) in \(format(Double(MonotonicClock.nanos() - started) / 1e9)) s)")
            }
            sleepSeconds(settle)
            let connections = try harness.heldCount()
            let sample = options.serverPID.flatMap(ProcessProbe.sample(pid:))
            if let sample {
                points.append((Double(connections), Double(sample.rssKiB)))
                progress("step \(step): \(connections) connections, server RSS \(sample.rssKiB) KiB")
            } else {
                progress("step \(step): \(connections) connections (no --server-pid: no RSS)")
            }
            pointJSON.append(.object([
                ("step", .int(step)),
                ("connections", .int(connections)),
                ("server_rss_kib", sample.map { .int($0.rssKiB) } ?? .null),
                ("server_cpu_s", sample.map { .number($0.cpuSeconds, 3) } ?? .null),
            ]))
        }
        let stats = try harness.stats()
        let fit = leastSquares(points)
        if let fit { progress("slope: \(format(fit.slope, 2)) KiB per connection") }
        let connectedAtEnd = try harness.heldCount()
        progress("closing \(connectedAtEnd) connections")
        try harness.closeAll()
        let reading = meter.read()
        var out = harness.header(scenario: "idle")
        out += [
            ("presence", .bool(presence)),
            ("settle_s", .number(settle, 1)),
            ("steps", .array(steps.map { .int($0) })),
            ("kib_per_connection", fit.map { .number($0.slope, 2) } ?? .null),
            ("intercept_kib", fit.map { .number($0.intercept, 0) } ?? .null),
            ("points", .array(pointJSON)),
            ("logins", .int(stats.succeeded)),
            ("failures", .int(stats.failureCount)),
            ("dropped", .int(stats.dropped)),
            ("failure_reasons", failuresJSON(stats.failures)),
            ("login_latency", latencyJSON(stats.loginLatency)),
        ]
        out += reading.fields()
        emit(out)
    }

    // MARK: - messages

    static func messages(_ options: CommonOptions, window: Int, duration: Double, warmup: Double, rate: Double?, bodySize: Int) throws {
        let harness = try Harness(options: options)
        defer { harness.shutdown() }
        let users = harness.users(count: options.users, from: options.firstUser)
        let mode = rate.map { "open loop at \(format($0)) msgs/s" } ?? "closed loop, window \(window)"
        progress("messages: \(users.count) users in \(users.count / 2) pairs, \(mode), warmup \(format(warmup)) s, duration \(format(duration)) s")
        let overall = Meter(serverPID: options.serverPID, threads: harness.threads)
        try harness.launch(users: users, concurrency: options.concurrency, goal: .session(presence: true), action: .hold)
        let loginStats = try harness.stats()
        let jids = try harness.heldJIDs()
        progress("logged in \(jids.count) of \(users.count) (\(loginStats.failureCount) failed)")
        var partners: [Int: String] = [:]
        for user in users {
            let partner = (user - options.firstUser) % 2 == 0 ? user + 1 : user - 1
            if jids[user] != nil, let partnerJID = jids[partner] { partners[user] = partnerJID }
        }
        let frozenPartners = partners
        let senders = try harness.onEach { $0.prepareMessages(partners: frozenPartners, bodySize: bodySize) }.reduce(0, +)
        guard senders > 0 else {
            try harness.closeAll()
            throw BenchError("no complete pair logged in; failures: \(loginStats.failures)")
        }
        sleepSeconds(0.5)
        let start = MonotonicClock.nanos()
        if let rate {
            let perLoop = rate / Double(harness.threads)
            _ = try harness.onEach { $0.startOpenLoop(rate: perLoop, start: start) }
        } else {
            _ = try harness.onEach { $0.startClosedLoop(window: window) }
        }
        sleepSeconds(warmup)
        _ = try harness.onEach { $0.setRecording(true) }
        let meter = Meter(serverPID: options.serverPID, threads: harness.threads)
        let measureStart = MonotonicClock.nanos()
        let end = measureStart + UInt64(duration * 1e9)
        var interval = Meter(serverPID: options.serverPID, threads: harness.threads)
        var previous = 0
        var intervals: [JSON] = []
        while MonotonicClock.nanos() < end {
            sleepSeconds(min(5, Double(end - MonotonicClock.nanos()) / 1e9))
            let partial = try harness.onEach { $0.stats.received }.reduce(0, +)
            let step = interval.read()
            interval.restart()
            let elapsed = Double(MonotonicClock.nanos() - measureStart) / 1e9
            let rateNow = Double(partial - previous) / max(step.wallSeconds, 1e-9)
            previous = partial
            var line = "  \(format(elapsed)) s: \(partial) received, last \(format(step.wallSeconds)) s at \(format(rateNow)) msgs/s"
            if let cpu = step.serverCPUSeconds { line += ", server CPU share \(format(cpu / max(step.wallSeconds, 1e-9), 2))" }
            if let rss = step.serverAfter?.rssKiB { line += ", RSS \(rss) KiB" }
            progress(line)
            intervals.append(.object([
                ("t_s", .number(elapsed, 1)),
                ("msgs_per_s", .number(rateNow, 1)),
                ("server_cpu_share", step.serverCPUSeconds.map { .number($0 / max(step.wallSeconds, 1e-9), 3) } ?? .null),
                ("server_rss_kib", step.serverAfter.map { .int($0.rssKiB) } ?? .null),
            ]))
        }
        _ = try harness.onEach { $0.setRecording(false) }
        let reading = meter.read()
        let stats = try harness.stats()
        _ = try harness.onEach { $0.stopTraffic() }
        sleepSeconds(1)  // let messages in flight arrive before closing
        try harness.closeAll()
        let closing = try harness.stats()
        let throughput = Double(stats.received) / max(reading.wallSeconds, 1e-9)
        let cpuPer10k = reading.serverCPUSeconds.map { $0 / Double(max(stats.received, 1)) * 10_000 }
        var line = "\(stats.received) received in \(format(reading.wallSeconds)) s = \(format(throughput)) msgs/s"
        if let cpuPer10k { line += ", server \(format(cpuPer10k, 3)) CPU-s per 10k" }
        if stats.messageLatency.totalCount > 0 {
            line += ", p50 \(format(ms(stats.messageLatency.valueAtPercentile(50)), 3)) ms, p99 \(format(ms(stats.messageLatency.valueAtPercentile(99)), 3)) ms"
        }
        line += ", generator CPU share \(format(reading.generatorCPUShare, 2))"
        if rate != nil, stats.sendLag.totalCount > 0 {
            line += ", send lag p50 \(format(ms(stats.sendLag.valueAtPercentile(50)), 3)) ms p99 \(format(ms(stats.sendLag.valueAtPercentile(99)), 3)) ms"
        }
        progress(line)
        var out = harness.header(scenario: "messages")
        out += [
            ("mode", .string(rate == nil ? "closed" : "open")),
            ("window", rate == nil ? .int(window) : .null),
            ("rate_offered", rate.map { .number($0, 1) } ?? .null),
            ("warmup_s", .number(warmup, 1)),
            ("duration_s", .number(duration, 1)),
            ("body_size", .int(bodySize)),
            ("pairs", .int(partners.count / 2)),
            ("logins", .int(loginStats.succeeded)),
            ("login_failures", .int(loginStats.failureCount)),
            ("sent", .int(stats.sent)),
            ("received", .int(stats.received)),
            ("msgs_per_s", .number(throughput, 1)),
            ("sent_per_s", .number(Double(stats.sent) / max(reading.wallSeconds, 1e-9), 1)),
            ("server_cpu_s_per_10k_msgs", cpuPer10k.map { .number($0, 3) } ?? .null),
            ("message_errors", .int(closing.messageErrors)),
            ("dropped_sessions", .int(closing.dropped)),
            ("failure_reasons", failuresJSON(loginStats.failures.merging(closing.failures, uniquingKeysWith: +))),
            ("latency", latencyJSON(stats.messageLatency)),
        ]
        if rate != nil { out.append(("generator_send_lag", latencyJSON(stats.sendLag))) }
        out.append(("intervals", .array(intervals)))
        out += reading.fields()
        out += [("total_wall_s", .number(overall.read().wallSeconds, 1))]
        emit(out)
    }

    // MARK: - helpers

    static func ms(_ micros: UInt64) -> Double { Double(micros) / 1000 }

    static func format(_ value: Double, _ decimals: Int = 1) -> String {
        String(format: "%.\(decimals)f", value)
    }
}
