import Foundation

/// Deterministic generator so failures reproduce (SplitMix64).
public struct SplitMix64: RandomNumberGenerator {
    public var state: UInt64
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// How long a fuzz test runs and with which seed (environment, printed so a failure replays).
public struct FuzzBudget: Sendable {
    public let name: String
    public let seed: UInt64
    let deadline: ContinuousClock.Instant
    let minimumCases = 200

    public init(name: String) {
        self.name = name
        let environment = ProcessInfo.processInfo.environment
        seed = environment["SWITCHBOARD_FUZZ_SEED"].flatMap { UInt64($0) } ?? UInt64.random(in: 1...UInt64.max)
        let seconds = environment["SWITCHBOARD_FUZZ_SECONDS"].flatMap { Double($0) } ?? 2
        deadline = .now + .milliseconds(Int(seconds * 1000))
        print("fuzz \(name): SWITCHBOARD_FUZZ_SEED=\(seed) (SWITCHBOARD_FUZZ_SECONDS=\(seconds))")
    }

    public func goOn(_ cases: Int) -> Bool { cases < minimumCases || ContinuousClock.now < deadline }

    public func finish(_ cases: Int) { print("fuzz \(name): \(cases) cases, seed \(seed)") }
}
