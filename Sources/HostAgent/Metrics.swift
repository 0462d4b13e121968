import FoundationEssentials
import Libvirt
import Prometheus
import SystemFiles

/// The agent's Prometheus metrics (`GET /metrics`, mutual TLS like every call): its domains by state,
/// libvirt's connection, events published, the host's memory and guest CPUs, resource pool partitions,
/// and the agent's own resident memory (total, anonymous, peak).
public final class AgentMetrics: Sendable {
    let registry = PrometheusCollectorRegistry()

    func gauge(_ name: String, _ help: String, _ labels: [(String, String)] = []) -> Gauge {
        registry.makeGauge(descriptor: MetricNameDescriptor(metricName: name, unitName: "", helpText: help), labels: labels)
    }
    public init() {}

    static let states = ["running", "blocked", "paused", "shutdown", "shutoff", "crashed", "pmsuspended", "nostate"]

    func render(_ agent: HostAgent) async -> String {
        let connected = agent.supervisor.isConnected
        gauge("vsphere_agent_libvirt_connected", "1 while the agent holds a libvirt connection").set(to: connected ? 1 : 0)
        gauge("vsphere_agent_events_published", "Events the agent has published since it started").set(to: Double(agent.hub.lastSeq))
        if let vms = try? await agent.list() {
            for s in Self.states {
                gauge("vsphere_agent_vms", "Domains on this host by state", [("state", s)]).set(to: Double(vms.filter { $0.state == s }.count))
            }
        }
        if let inv = try? await agent.inventory() {
            gauge("vsphere_agent_memory_total_bytes", "The host's memory").set(to: Double(inv.memory.totalMiB) * 1_048_576)
            gauge("vsphere_agent_memory_free_bytes", "The host's free memory").set(to: Double(inv.memory.freeMiB) * 1_048_576)
            gauge("vsphere_agent_memory_reserved_bytes", "Memory reserved by running guests").set(to: Double(inv.capacity.reservedMemoryMiB) * 1_048_576)
            gauge("vsphere_agent_guest_cpus", "CPUs guests may run on").set(to: Double(inv.guestCPUs?.count ?? inv.cpu.cpus))
            gauge("vsphere_agent_parked_cpus", "Guest CPUs core parking keeps idle").set(to: Double(inv.parkedCPUs?.count ?? 0))
        }
        if let r = ProcessMemory.resident() {
            gauge("vsphere_agent_resident_bytes", "The agent's resident memory (VmRSS)").set(to: Double(r.total) * 1024)
            gauge("vsphere_agent_resident_anonymous_bytes", "The agent's resident anonymous memory (RssAnon)").set(to: Double(r.anonymous) * 1024)
            if let pss = r.proportional {
                gauge("vsphere_agent_proportional_bytes", "The agent's proportional set size (Pss)").set(to: Double(pss) * 1024)
            }
            gauge("vsphere_agent_resident_peak_bytes", "The agent's highest resident memory since it started (VmHWM)").set(to: Double(r.peak) * 1024)
        }
        gauge("vsphere_agent_pool_partitions", "Resource pool partitions on this host").set(to: Double(agent.pools.read().count))
        return registry.emitToString()
    }
}
