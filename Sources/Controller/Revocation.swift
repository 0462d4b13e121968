import AgentAPI
import ClusterModel
import Foundation
import SystemFiles
import TLSSupport

extension Controller {
    /// The cluster's revocation list: `pki/revoked.txt` beside the CA (`vsphere-controller revoke` adds
    /// to it), serial numbers in lowercase hexadecimal.
    func revokedSerials() -> [String] {
        guard let ca, let text = TextFile.read(ca.directory + "/revoked.txt") else { return [] }
        // What no agent would take (not a serial number) is left out rather than spoiling the list.
        return ClientAuthorizer.parseRevoked(text).sorted()
    }

    /// Gives every answering agent the revocation list when it has not got this one yet, and every 30 s
    /// (an agent reinstalled with an empty list, or whose list was replaced by an operator, gets it
    /// back): agents refuse those certificates in the handshake.
    func pushRevocations(_ manifest: ClusterManifest, observed: Observed) async {
        let serials = revokedSerials()
        let now = ContinuousClock.now
        let agents = (manifest.hosts ?? []).compactMap { h in h.agent.map { (h.name, $0) } }.filter { observed.inventories[$0.0] != nil }
        let stale = revocationsPushed.withLock { pushed in
            agents.filter { pushed[$0.0].map { $0.serials != serials || now - $0.at > .seconds(30) } ?? true }
        }
        guard !stale.isEmpty else { return }
        await withTaskGroup(of: Void.self) { group in
            for (host, url) in stale {
                group.addTask {
                    do {
                        try await self.agents.setRevoked(url, RevokedCertificates(serials: serials))
                        self.revocationsPushed.withLock { $0[host] = (serials, now) }
                    } catch {
                        self.logger.warning("pushing the revocation list failed", metadata: ["host": "\(host)", "error": "\(error)"])
                    }
                }
            }
        }
    }
}
