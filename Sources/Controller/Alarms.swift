import AgentAPI
import ClusterModel
import ControllerAPI
import Foundation
import Store

/// Alarms at the virtual layer. The reconciler and the event collector see every domain on every
/// host; what the controller did not cause becomes an alarm (and an event), folded by a key so one
/// condition raises one alarm until it clears.
extension Controller {
    func raise(_ key: String, kind: String, name: String?, host: String?, message: String) async {
        do {
            if let a = try await store.raiseAlarm(key: key, kind: kind, name: name, host: host, message: message) {
                logger.warning("alarm", metadata: ["kind": "\(kind)", "name": "\(name ?? "-")", "host": "\(host ?? "-")", "message": "\(message)"])
                try await store.addEvent(source: "controller", kind: "alarm", name: name, event: kind, detail: host, message: "#\(a.id) \(message)")
            }
        } catch {
            logger.error("raising an alarm failed", metadata: ["key": "\(key)", "error": "\(error)"])
        }
    }

    func clear(_ key: String, note: String) async {
        _ = try? await store.clearAlarm(key: key, note: note)
    }

    /// Domains the controller did not create (not desired, never recorded): one alarm per domain and
    /// host, cleared when it is gone. They are never touched: they are not ours.
    func checkRogue(_ observed: Observed, known: Set<String>) async {
        var seen = Set<String>()
        for (name, places) in observed.vms where !known.contains(name) {
            for (host, status) in places {
                let key = "rogue:\(host):\(name)"
                seen.insert(key)
                await raise(key, kind: "rogue-vm", name: name, host: host,
                            message: "\(name) on \(host) was not created by the controller (\(status.state)); left alone")
            }
        }
        guard let open = try? await store.openAlarmKeys(prefix: "rogue:") else { return }
        for key in open where key.hasPrefix("rogue:") && !seen.contains(key) {
            let parts = key.split(separator: ":", maxSplits: 2)
            // Only where the host answered this pass: a disconnected host says nothing about its domains.
            if parts.count == 3, observed.inventories[String(parts[1])] != nil { await clear(key, note: "the domain is gone") }
        }
    }

    /// Alarms of one-time events: an acknowledgement closes them (nothing observable would), and the
    /// next such event raises a new one. Until then repeats fold into the open alarm.
    static let oneTimeAlarmKinds: Set<String> = ["watchdog", "guest-panic", "console-connection", "unexpected-move"]

    /// What the host's events say that needs a person: a guest that panicked or crashed, a watchdog
    /// that fired, disk I/O errors.
    func alarmFromEvent(_ e: AgentEvent, host: String) async {
        let vm = e.domain ?? "?"
        switch e.kind {
        case "watchdog":
            await raise("watchdog:\(host):\(vm)", kind: "watchdog", name: vm, host: host,
                        message: "the watchdog of \(vm) fired (action \(e.detail ?? "?"))")
        case "ioError":
            await raise("io-error:\(host):\(vm):\(e.info["device"] ?? e.detail ?? "")", kind: "io-error", name: vm, host: host,
                        message: "I/O error on \(vm)'s \(e.info["device"] ?? "disk") (\(e.detail ?? "?"))")
        case "lifecycle" where e.event == "crashed" || (e.event == "stopped" && e.detail == "crashed"):
            await raise("guest-panic:\(host):\(vm)", kind: "guest-panic", name: vm, host: host,
                        message: "\(vm) \(e.detail == "panicked" ? "panicked" : "crashed") on \(host)")
        case "lifecycle" where e.event == "stopped" && e.detail == "migrated":
            // Left its host by live migration: fine when it is one of ours.
            let ours = ((try? await store.migrations(limit: 200)) ?? []).contains {
                $0.vm == vm && $0.source == host && (Store.Migration.activeStates.contains($0.state) || $0.state == "completed")
                    && Int64(Date().timeIntervalSince1970 * 1000) - $0.createdMs < 3_600_000
            }
            if !ours {
                await raise("migrated-away:\(vm)", kind: "unexpected-migration", name: vm, host: host,
                            message: "\(vm) was live-migrated away from \(host) outside the controller; it is not restored where it was (it runs elsewhere)")
            }
        case "graphics" where e.event == "connect":
            // Nothing of ours opens a guest's console: whoever does is worth a look.
            await raise("console:\(host):\(vm)", kind: "console-connection", name: vm, host: host,
                        message: "a console connection to \(vm) on \(host) from \(e.info["remote"] ?? "?")")
        default:
            break
        }
    }

    public func alarmViews() async throws -> [AlarmView] {
        try await store.alarms().map {
            AlarmView(id: $0.id, kind: $0.kind, name: $0.name, host: $0.host, message: $0.message, state: $0.state,
                      timeMs: $0.timeMs, updatedMs: $0.updatedMs, note: $0.note)
        }
    }

    public func acknowledgeAlarm(_ id: Int64, by: String) async throws -> Bool {
        try await store.acknowledgeAlarm(id: id, by: by, closing: Self.oneTimeAlarmKinds)
    }

    public func complianceReport() async throws -> Compliance.Report {
        Compliance.evaluate(try await desired())
    }
}
