// libFuzzer target for XMLStreamParser; built only on demand (docs/security.md, "Fuzzing"):
//   SWITCHBOARD_FUZZ=1 swift build -c release --scratch-path .build-fuzz --product fuzz-xmlstream
//   .build-fuzz/release/fuzz-xmlstream -max_total_time=60 Tests/Fixtures/fuzz/xmlstream
// The first input byte picks the chunk size (1…256) and framing, the rest is the stream. The
// parser must only ever throw XMLStreamError, and hold no more than its limits allow.
import XMLStream

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzXMLStreamParser(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
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
