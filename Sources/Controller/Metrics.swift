import Foundation
import Prometheus
import Store

/// The controller's Prometheus metrics (`GET /metrics`, a viewer's token): VMs and hosts by state,
/// open alarms by kind, migrations by outcome and their durations, host utilization, how late hosts'
/// events reach the event log.
public final class ControllerMetrics: Sendable {
    let registry = PrometheusCollectorRegistry()

    func gauge(_ name: String, _ help: String, _ labels: [(String, String)] = []) -> Gauge {
        registry.makeGauge(descriptor: MetricNameDescriptor(metricName: name, unitName: "", helpText: help), labels: labels)
    }
    let migrationSeconds: DurationHistogram
    let downtimeSeconds: DurationHistogram
    let eventLag: ValueHistogram

    public init() {
        migrationSeconds = registry.makeDurationHistogram(descriptor: MetricNameDescriptor(metricName: "vsphere_migration_duration_seconds", unitName: "", helpText: "Live migrations that completed: libvirt's job time"), buckets: [.milliseconds(250), .milliseconds(500), .seconds(1), .seconds(2), .seconds(5), .seconds(10), .seconds(30), .seconds(60), .seconds(300)])
        downtimeSeconds = registry.makeDurationHistogram(descriptor: MetricNameDescriptor(metricName: "vsphere_migration_downtime_seconds", unitName: "", helpText: "Live migrations that completed: QEMU's measured downtime"), buckets: [.milliseconds(10), .milliseconds(50), .milliseconds(100), .milliseconds(300), .seconds(1), .seconds(5), .seconds(30)])
        eventLag = registry.makeValueHistogram(descriptor: MetricNameDescriptor(metricName: "vsphere_event_lag_seconds", unitName: "", helpText: "From a libvirt event on a host to the controller's event log"), buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30])
    }

    static let vmStates = ["pending", "running", "shutoff", "paused", "migrating", "error"]
    static let hostStates = ["connected", "maintenance", "poweredOff", "disconnected"]

    /// Every gauge from the state now, then the text exposition.
    func render(_ c: Controller) async -> String {
        if let vms = try? await c.store.vmStatuses() {
            for s in Self.vmStates {
                gauge("vsphere_vms", "VMs by state", [("state", s)]).set(to: Double(vms.filter { $0.state == s }.count))
            }
        }
        if let hosts = try? await c.store.hostStatuses() {
            for s in Self.hostStates {
                gauge("vsphere_hosts", "Hosts by state", [("state", s)]).set(to: Double(hosts.filter { $0.state == s }.count))
            }
        }
        if let alarms = try? await c.store.alarms() {
            for kind in ["drift", "rogue-vm", "guest-panic", "watchdog", "io-error", "unexpected-move", "unexpected-migration", "console-connection"] {
                gauge("vsphere_alarms_open", "Alarms active or acknowledged, by kind", [("kind", kind)]).set(to: Double(alarms.filter { $0.kind == kind && $0.state != "cleared" }.count))
            }
        }
        if let migrations = try? await c.store.migrations(limit: 100_000) {
            for s in ["queued", "starting", "running", "completed", "failed", "cancelled", "aborted"] {
                gauge("vsphere_migrations", "Recorded migrations by state", [("state", s)]).set(to: Double(migrations.filter { $0.state == s }.count))
            }
        }
        if let last = c.demand.samples().last {
            for l in last.loads {
                gauge("vsphere_host_cpu_utilization", "Measured CPU demand over capacity", [("host", l.host)]).set(to: l.cpu)
                gauge("vsphere_host_memory_utilization", "Guests' resident memory over capacity", [("host", l.host)]).set(to: l.memory)
            }
        }
        return registry.emitToString()
    }
}
