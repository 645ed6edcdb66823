// libFuzzer target for the SASL parsers and JIDs; built only on demand (docs/security.md):
//   SWITCHBOARD_FUZZ=1 swift build --scratch-path .build-fuzz --product fuzz-sasl
//   .build-fuzz/debug/fuzz-sasl -max_total_time=60
// The first byte picks the parser: SCRAM client-first, SCRAM client-final after a real
// client-first (the input replaces the client's final message), PLAIN, or a JID. Each fails only
// with its typed error (a compile-time fact with typed throws); libFuzzer looks for traps and hangs.
import Foundation
import XMPPCore

private let credentials = try! SCRAMCredentials.generate(password: "pencil", hash: .sha256, iterations: 16)
private let fakeSaltKey = [UInt8](repeating: 7, count: 32)

func fuzzSASL(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    guard size > 0 else { return 0 }
    let input = Array(UnsafeBufferPointer(start: data + 1, count: size - 1))
    switch data[0] % 4 {
    case 0:
        var server = SCRAMServer(hash: .sha256)
        if (try? server.receiveClientFirst(input)) != nil {
            _ = server.serverFirst(credentials: credentials, fakeSaltKey: fakeSaltKey, fakeIterations: 16)
        }
    case 1:
        var client = SCRAMClient(hash: .sha256, username: "user", password: "pencil")
        var server = SCRAMServer(hash: .sha256)
        guard (try? server.receiveClientFirst(client.clientFirst())) != nil else { fatalError("valid client-first refused") }
        let challenge = server.serverFirst(credentials: credentials, fakeSaltKey: fakeSaltKey, fakeIterations: 16)
        _ = try? client.receiveServerFirst(challenge)
        _ = try? server.receiveClientFinal(input)
    case 2:
        _ = try? PLAINMessage.parse(input)
    default:
        let string = String(decoding: input, as: UTF8.self)
        if let jid = try? JID(string) {
            // PRECIS preparation is idempotent: the printed JID parses to the same JID.
            guard let again = try? JID(jid.description), again == jid else { fatalError("JID not idempotent: \(string.debugDescription)") }
        }
    }
    return 0
}

// SwiftPM renames an executable's entry point, so libFuzzer's own main cannot be used; this main
// hands libFuzzer the command line and the callback instead (LLVMFuzzerRunDriver, libFuzzer ≥ 11).
@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(
    _ argc: UnsafeMutablePointer<CInt>,
    _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>>,
    _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt
) -> CInt

var argc = CommandLine.argc
var argv = CommandLine.unsafeArgv
exit(LLVMFuzzerRunDriver(&argc, &argv) { data, size in
    guard let data else { return 0 }
    return fuzzSASL(data, size)
})
