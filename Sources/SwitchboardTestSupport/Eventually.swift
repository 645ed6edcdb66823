/// Polls `condition` until it holds or `timeout` passes; returns whether it held.
///
/// For tests that wait for the server to get somewhere (a dropped connection noticed, a timer
/// fired, a row stored): a slow or loaded machine only makes the wait longer, where a fixed
/// sleep would make the test fail. The deadline bounds only the failure case, so it is generous.
public func eventually(
    timeout: Duration = .seconds(30),
    every interval: Duration = .milliseconds(20),
    _ condition: () async throws -> Bool
) async rethrows -> Bool {
    let deadline = ContinuousClock.now + timeout
    while true {
        if try await condition() { return true }
        if ContinuousClock.now >= deadline { return false }
        try? await Task.sleep(for: interval)
    }
}
