// libFuzzer target for XMLStreamParser; built only on demand (docs/security.md, "Fuzzing"):
//   SWITCHBOARD_FUZZ=1 swift build --scratch-path .build-fuzz --product fuzz-xmlstream
//   .build-fuzz/debug/fuzz-xmlstream -max_total_time=60
// The first input byte picks the chunk size (1…256) and framing, the rest is the stream. The
// parser must only ever throw XMLStreamError, and hold no more than its limits allow.
import Foundation
import XMLStream

func fuzzXMLStreamParser(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    guard size > 0 else { return 0 }
    let limits = XMLStreamLimits(maxStanzaBytes: 4096, maxDepth: 16)
    let control = data[0]
    let chunk = Int(control & 0x7F) + 1
    let parser = XMLStreamParser(limits: limits, framing: control & 0x80 == 0 ? .stream : .framed)
    let bytes = UnsafeRawBufferPointer(start: data + 1, count: size - 1)
    var offset = 0
    while offset < bytes.count {
        let end = min(bytes.count, offset + chunk)
        do {
            try parser.feed(UnsafeRawBufferPointer(rebasing: bytes[offset..<end])) { _ in }
        } catch is XMLStreamError {
            return 0
        } catch {
            fatalError("untyped error from the parser: \(error)")
        }
        offset = end
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
    return fuzzXMLStreamParser(data, size)
})
