/// `GET /v1/alarms`: conditions the virtual layer noticed (drift, rogue VMs, guest panics, watchdogs,
/// I/O errors, unexpected moves), newest first.
public struct AlarmView: Codable, Sendable, Equatable {
    public var id: Int64
    public var kind: String
    public var name: String?
    public var host: String?
    public var message: String
    /// `active`, `acknowledged` (seen; still open) or `cleared` (its condition is gone).
    public var state: String
    public var timeMs: Int64
    public var updatedMs: Int64
    public var note: String?
    public init(id: Int64, kind: String, name: String?, host: String?, message: String, state: String, timeMs: Int64, updatedMs: Int64, note: String?) {
        self.id = id
        self.kind = kind
        self.name = name
        self.host = host
        self.message = message
        self.state = state
        self.timeMs = timeMs
        self.updatedMs = updatedMs
        self.note = note
    }
}
