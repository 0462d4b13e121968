import ArgumentParser
import AsyncHTTPClient
import ClusterModel
import ControllerAPI
import Foundation
import NIOCore
import NIOFoundationCompat
import NIOHTTP1
import NIOSSL

/// Where the controller is and which CA to trust: `--server`/`--ca`, then VSPHERE_SERVER/VSPHERE_CA,
/// then ~/.config/vsphere/config.json (written by `make demo` and `make testbed`).
struct ServerOptions: ParsableArguments {
    @Option(help: "Controller URL, e.g. https://127.0.0.1:8443.") var server: String?
    @Option(help: "CA certificate (PEM) the controller's certificate chains to.") var ca: String?
    @Option(help: "API token (else VSPHERE_TOKEN, else the config's token or tokenFile).") var token: String?

    struct Config: Codable {
        var server: String
        var ca: String?
        var token: String?
        /// A file holding the token (e.g. the controller's admin.token).
        var tokenFile: String?
    }

    static var configPath: String {
        let home = ProcessInfo.processInfo.environment["HOME"] ?? "/root"
        return ProcessInfo.processInfo.environment["VSPHERE_CONFIG"] ?? "\(home)/.config/vsphere/config.json"
    }

    func resolve() throws -> (server: String, ca: String?, token: String?) {
        let env = ProcessInfo.processInfo.environment
        let file = FileManager.default.contents(atPath: Self.configPath).flatMap { try? JSONDecoder().decode(Config.self, from: $0) }
        guard let url = server ?? env["VSPHERE_SERVER"] ?? file?.server else {
            throw ValidationError("no controller: give --server, set VSPHERE_SERVER, or run make demo (writes \(Self.configPath))")
        }
        let fromFile = file?.tokenFile.flatMap { try? String(contentsOfFile: $0, encoding: .utf8) }?.trimmingCharacters(in: .whitespacesAndNewlines)
        return (url.hasSuffix("/") ? String(url.dropLast()) : url, ca ?? env["VSPHERE_CA"] ?? file?.ca, token ?? env["VSPHERE_TOKEN"].flatMap { $0.isEmpty ? nil : $0 } ?? file?.token ?? fromFile)
    }

    func client() throws -> ControllerClient {
        let (server, ca, token) = try resolve()
        return try ControllerClient(server: server, ca: ca, token: token)
    }
}

final class ControllerClient: Sendable {
    let server: String
    let http: HTTPClient
    let token: String?

    /// `unverified` only fetches what is checked by other means (a joining host's pinned CA).
    init(server: String, ca: String?, token: String? = nil, unverified: Bool = false) throws {
        self.server = server
        self.token = token
        var tls = TLSConfiguration.makeClientConfiguration()
        if let ca { tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(ca)) }
        if unverified { tls.certificateVerification = .none }
        var config = HTTPClient.Configuration(tlsConfiguration: tls)
        config.timeout = .init(connect: .seconds(5), read: .seconds(120))
        http = HTTPClient(eventLoopGroupProvider: .singleton, configuration: config)
    }

    func close() async { try? await http.shutdown() }

    /// Calls the controller; maps failures to the contract's exit codes (2 bad input, 3 not found, 1 other).
    func call<T: Decodable>(_ method: HTTPMethod, _ path: String, body: Data? = nil, as: T.Type = T.self) async throws -> T {
        var req = HTTPClientRequest(url: server + path)
        req.method = method
        if let token { req.headers.add(name: "Authorization", value: "Bearer \(token)") }
        if let body {
            req.body = .bytes(ByteBuffer(data: body))
            req.headers.add(name: "Content-Type", value: "application/json")
        }
        let resp: HTTPClientResponse
        do {
            resp = try await http.execute(req, timeout: .seconds(120))
        } catch {
            stderr("cannot reach the controller at \(server): \(error)")
            throw ExitCode(Exit.failed)
        }
        let data = Data(buffer: try await resp.body.collect(upTo: 64 << 20))
        let status = Int(resp.status.code)
        guard (200..<300).contains(status) else {
            let err = try? JSONDecoder().decode(APIError.self, from: data)
            if status == 400, let problems = err?.problems, !problems.isEmpty {
                for p in problems { stderr(p.description) }
            } else {
                stderr(err?.error ?? "HTTP \(status): \(String(decoding: data, as: UTF8.self))")
            }
            throw ExitCode(status == 400 ? Exit.badInput : status == 404 ? Exit.notFound : Exit.failed)
        }
        return try JSONDecoder().decode(T.self, from: data)
    }
}

func stderr(_ s: String) { FileHandle.standardError.write(Data((s + "\n").utf8)) }

func table(_ header: [String], _ rows: [[String]]) {
    var widths = header.map(\.count)
    for r in rows { for (i, c) in r.enumerated() where i < widths.count { widths[i] = max(widths[i], c.count) } }
    func line(_ cells: [String]) -> String {
        cells.enumerated().map { i, c in i == cells.count - 1 ? c : c.padding(toLength: widths[i], withPad: " ", startingAt: 0) }
            .joined(separator: "  ")
    }
    print(line(header))
    for r in rows { print(line(r)) }
}
