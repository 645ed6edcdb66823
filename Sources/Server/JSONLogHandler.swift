import Foundation
import Logging
import NIOConcurrencyHelpers

/// One JSON object per line on standard error, for log shippers (`log_format: json`):
/// `{"ts":"…","level":"info","label":"switchboard","msg":"…","source":"Server","xmpp.jid":"…"}`.
public struct JSONLogHandler: LogHandler {
    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level
    private let label: String
    private static let lock = NIOLock()
    /// Where lines go; standard error unless a test captures them.
    private let output: (@Sendable (String) -> Void)?

    public init(label: String, level: Logger.Level, output: (@Sendable (String) -> Void)? = nil) {
        self.label = label
        self.logLevel = level
        self.output = output
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        write(level: event.level, message: event.message, metadata: event.metadata, source: event.source, error: event.error)
    }

    private func write(
        level: Logger.Level, message: Logger.Message, metadata explicit: Logger.Metadata?, source: String, error: (any Error)?
    ) {
        var fields: [String: String] = [
            "ts": Date().formatted(.iso8601.year().month().day().time(includingFractionalSeconds: true)),
            "level": level.rawValue,
            "label": label,
            "msg": message.description,
            "source": source,
        ]
        if let error { fields["error"] = "\(error)" }
        for (key, value) in metadata.merging(explicit ?? [:], uniquingKeysWith: { $1 }) {
            fields[key] = value.description
        }
        var line = "{"
        var first = true
        for key in ["ts", "level", "label", "msg", "source"] + fields.keys.filter({ !["ts", "level", "label", "msg", "source"].contains($0) }).sorted() {
            guard let value = fields[key] else { continue }
            if !first { line += "," }
            first = false
            line += Self.quote(key) + ":" + Self.quote(value)
        }
        line += "}\n"
        if let output {
            output(line)
            return
        }
        Self.lock.withLock {
            FileHandle.standardError.write(Data(line.utf8))
        }
    }

    static func quote(_ string: String) -> String {
        var result = "\""
        for scalar in string.unicodeScalars {
            switch scalar {
            case "\"": result += "\\\""
            case "\\": result += "\\\\"
            case "\n": result += "\\n"
            case "\r": result += "\\r"
            case "\t": result += "\\t"
            case _ where scalar.value < 0x20:
                result += String(format: "\\u%04x", scalar.value)
            default: result.unicodeScalars.append(scalar)
            }
        }
        return result + "\""
    }
}
