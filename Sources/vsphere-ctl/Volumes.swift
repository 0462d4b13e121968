import AgentAPI
import ArgumentParser
import ClusterModel
import Foundation

/// `vsphere-ctl volume list|create|resize|delete|snapshot|snapshots|revert|delete-snapshot POOL [NAME] [SNAPSHOT]`.
struct VolumeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "volume", abstract: "List, create, clone, resize, delete and snapshot volumes in a storage pool.",
        discussion: """
            volume list POOL [--host H] [-o json]
            volume create POOL NAME --size-gib N [--format qcow2|raw] [--host H]
            volume create POOL NAME --from TEMPLATE [--clone linked|full] [--size-gib N] [--host H]
              TEMPLATE: a volume of POOL, OTHERPOOL/VOLUME, or an image path in the agent's template directories
            volume resize POOL NAME --size-gib N        (volumes only grow)
            volume delete POOL NAME                     (refused while a VM uses it or a clone is based on it)
            volume snapshots POOL NAME
            volume snapshot POOL NAME SNAPSHOT          (qcow2; the VM using it must be stopped)
            volume revert POOL NAME SNAPSHOT
            volume delete-snapshot POOL NAME SNAPSHOT
            A pool several hosts have of their own (dir, logical) needs --host; a shared pool is served by any host of it.
            """)
    static let actions = ["list", "create", "resize", "delete", "snapshots", "snapshot", "revert", "delete-snapshot"]
    @OptionGroup var server: ServerOptions
    @Argument(help: "list, create, resize, delete, snapshots, snapshot, revert or delete-snapshot") var action: String
    @Argument(help: "the storage pool") var pool: String
    @Argument(help: "the volume") var name: String?
    @Argument(help: "the snapshot") var snapshot: String?
    @Option(help: "The host whose pool it is.") var host: String?
    @Option(name: .customLong("size-gib"), help: "Size in GiB.") var sizeGiB: Int?
    @Option(help: "qcow2 (default) or raw.") var format: String?
    @Option(help: "create: the template to clone.") var from: String?
    @Option(help: "create --from: linked (default) or full.") var clone: String?
    @Option(name: .shortAndLong, help: "table or json.") var output: OutputFormat = .table

    func validate() throws {
        guard Self.actions.contains(action) else { throw ValidationError("\(action): use \(Self.actions.joined(separator: ", "))") }
        if !Names.isValid(pool) { throw ValidationError("\(pool): a pool name must match ^[a-z][a-z0-9-]{0,62}$") }
        if let host, !Names.isValid(host) { throw ValidationError("--host: must match ^[a-z][a-z0-9-]{0,62}$") }
        if action != "list" {
            guard let name, VMSpec.Disk.isVolumeName(name) else { throw ValidationError("volume name: 1 to 128 letters, digits, . _ -, starting with a letter or digit") }
        }
        if ["snapshot", "revert", "delete-snapshot"].contains(action) {
            guard let snapshot, VMSpec.Disk.isVolumeName(snapshot) else { throw ValidationError("snapshot name: 1 to 128 letters, digits, . _ -, starting with a letter or digit") }
        } else if snapshot != nil {
            throw ValidationError("\(action) takes no snapshot name")
        }
        if let s = sizeGiB, !(1...65_536).contains(s) { throw ValidationError("--size-gib: must be between 1 and 65536") }
        if action == "create" && sizeGiB == nil && from == nil { throw ValidationError("--size-gib or --from: create needs one") }
        if action == "resize" && sizeGiB == nil { throw ValidationError("--size-gib: resize needs the new size") }
        if action != "create" && (from != nil || clone != nil || format != nil) { throw ValidationError("--from, --clone and --format belong to volume create") }
        if let f = format, !["qcow2", "raw"].contains(f) { throw ValidationError("--format: must be qcow2 or raw") }
        if let c = clone, !["linked", "full"].contains(c) { throw ValidationError("--clone: must be linked or full") }
        if clone != nil && from == nil { throw ValidationError("--clone: needs --from") }
    }

    func run() async throws {
        let client = try server.client()
        defer { Task { await client.close() } }
        func seg(_ s: String) -> String { s.addingPercentEncoding(withAllowedCharacters: .alphanumerics.union(.init(charactersIn: "-._"))) ?? s }
        let query = host.map { "?host=\(seg($0))" } ?? ""
        let base = "/v1/storage-pools/\(seg(pool))/volumes"
        let vol = base + "/" + seg(name ?? "")
        switch action {
        case "list":
            let vols: [VolumeStatus] = try await client.call(.GET, base + query)
            if output == .json { return try printJSON(vols) }
            func mib(_ b: UInt64) -> String { String(format: "%.1f GiB", Double(b) / 1_073_741_824) }
            table(["NAME", "FORMAT", "CAPACITY", "ALLOCATED", "BACKING", "USED BY", "PATH"], vols.map {
                [$0.name, $0.format ?? "-", mib($0.capacityBytes), mib($0.allocationBytes), $0.backing ?? "-", $0.usedBy.isEmpty ? "-" : $0.usedBy.joined(separator: ","), $0.path]
            })
        case "create", "resize":
            let v: VolumeStatus
            if action == "create" {
                let body = try JSONEncoder().encode(VolumeRequest(sizeGiB: sizeGiB, format: format, from: from, clone: from == nil ? nil : (clone ?? "linked")))
                v = try await client.call(.PUT, vol + query, body: body)
            } else {
                v = try await client.call(.POST, vol + "/resize" + query, body: try JSONEncoder().encode(VolumeResize(sizeGiB: sizeGiB!)))
            }
            if output == .json { return try printJSON(v) }
            print("volume \(pool)/\(v.name): " + String(format: "%.1f GiB ", Double(v.capacityBytes) / 1_073_741_824) + (v.format ?? "") + (v.backing.map { ", linked clone of \($0)" } ?? "") + " at \(v.path)")
        case "delete":
            let _: [String: String] = try await client.call(.DELETE, vol + query)
            print("volume \(pool)/\(name!) deleted")
        default:
            let snaps: [VolumeSnapshot]
            switch action {
            case "snapshot": snaps = try await client.call(.POST, vol + "/snapshots" + query, body: try JSONEncoder().encode(VolumeSnapshotRequest(name: snapshot!)))
            case "revert": snaps = try await client.call(.POST, vol + "/snapshots/\(seg(snapshot!))/revert" + query)
            case "delete-snapshot": snaps = try await client.call(.DELETE, vol + "/snapshots/\(seg(snapshot!))" + query)
            default: snaps = try await client.call(.GET, vol + "/snapshots" + query)
            }
            if output == .json { return try printJSON(snaps) }
            table(["SNAPSHOT", "ID", "TAKEN", "VM STATE"], snaps.map {
                [$0.name, $0.id ?? "-", $0.dateSeconds.map { isoTime($0 * 1000) } ?? "-", $0.vmStateBytes.map { $0 == 0 ? "disk only" : "\($0 >> 20) MiB" } ?? "-"]
            })
        }
    }
}
