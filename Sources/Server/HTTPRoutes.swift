import Foundation

/// An HTTP API request, fully read (bodies are bounded), for module routes.
public struct HTTPRequest: Sendable {
    public let method: String
    /// The path without the query string.
    public let path: String
    public let query: [String: String]
    /// Header names lower-cased; the last value of a repeated header.
    public let headers: [String: String]
    public let body: [UInt8]

    public init(method: String, path: String, query: [String: String], headers: [String: String], body: [UInt8]) {
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body
    }

    /// Credentials of HTTP Basic authentication (RFC 7617), if present and well-formed.
    public var basicCredentials: (username: String, password: String)? {
        guard let value = headers["authorization"], value.lowercased().hasPrefix("basic "),
            let data = Data(base64Encoded: String(value.dropFirst(6)).trimmingCharacters(in: .whitespaces)),
            let text = String(data: data, encoding: .utf8), let colon = text.firstIndex(of: ":")
        else { return nil }
        return (String(text[..<colon]), String(text[text.index(after: colon)...]))
    }
}

/// A response; errors are RFC 9457 problem details (`application/problem+json`).
public struct HTTPResponse: Sendable {
    public var status: Int
    public var contentType: String
    public var body: [UInt8]
    public var headers: [(String, String)]

    public init(status: Int, contentType: String, body: [UInt8], headers: [(String, String)] = []) {
        self.status = status
        self.contentType = contentType
        self.body = body
        self.headers = headers
    }

    private static let encoder: JSONEncoder = {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return encoder
    }()

    public static func json<T: Encodable>(_ value: T, status: Int = 200) -> HTTPResponse {
        guard let data = try? encoder.encode(value) else { return problem(500, "Internal Server Error", "cannot encode the response") }
        return HTTPResponse(status: status, contentType: "application/json", body: Array(data))
    }

    public static func text(_ text: String, status: Int = 200) -> HTTPResponse {
        HTTPResponse(status: status, contentType: "text/plain; charset=utf-8", body: Array(text.utf8))
    }

    public static func problem(_ status: Int, _ title: String, _ detail: String) -> HTTPResponse {
        struct Problem: Encodable {
            let type = "about:blank"
            let title: String
            let status: Int
            let detail: String
        }
        let data = (try? encoder.encode(Problem(title: title, status: status, detail: detail))) ?? Data()
        var response = HTTPResponse(status: status, contentType: "application/problem+json", body: Array(data))
        if status == 401 { response.headers.append(("WWW-Authenticate", "Basic realm=\"switchboard\", charset=\"UTF-8\"")) }
        return response
    }
}

/// Handles requests under a path prefix. Runs as a task; must bound its own work.
public typealias HTTPRouteHandler = @Sendable (HTTPRequest, ServerContext) async -> HTTPResponse

extension ModuleRegistry {
    /// The route whose prefix matches `path` (longest first).
    func httpRoute(for path: String) -> HTTPRouteHandler? {
        httpRoutes.filter { path.hasPrefix($0.prefix) }.max { $0.prefix.count < $1.prefix.count }?.handler
    }
}
