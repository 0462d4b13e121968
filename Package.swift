// swift-tools-version:6.2
import PackageDescription

let strict: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
]

let package = Package(
    name: "vsphere",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "vsphere-agent", targets: ["vsphere-agent"]),
        .executable(name: "vsphere-controller", targets: ["vsphere-controller"]),
        .executable(name: "vsphere-ctl", targets: ["vsphere-ctl"]),
    ],
    dependencies: [
        // Without its default traits: full Foundation (CoreFoundation and ICU, megabytes an idle agent would
        // carry) and swift-configuration, neither of which this product uses.
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.28.1", traits: []),
        .package(url: "https://github.com/swift-server/async-http-client.git", from: "1.37.0"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-certificates.git", from: "1.21.1"),
        .package(url: "https://github.com/apple/swift-crypto.git", "3.12.3"..<"5.0.0"),
        .package(url: "https://github.com/apple/swift-asn1.git", from: "1.7.4"),
        .package(url: "https://github.com/apple/swift-http-types.git", from: "1.8.0"),
        .package(url: "https://github.com/vapor/sqlite-nio.git", from: "1.13.2"),
        .package(url: "https://github.com/vapor/postgres-nio.git", from: "1.33.2"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
    ],
    targets: [
        // System libraries: module maps only.
        .systemLibrary(name: "CLibvirt", pkgConfig: "libvirt", providers: [.apt(["libvirt-dev"])]),
        .systemLibrary(name: "CLibXML2", pkgConfig: "libxml-2.0", providers: [.apt(["libxml2-dev"])]),

        // Pure: the VM spec, its validation and service-level arithmetic. No I/O.
        .target(name: "ClusterModel", swiftSettings: strict),
        // Pure: the scheduler (filters and weights over a snapshot).
        .target(name: "Placement", dependencies: ["ClusterModel"], swiftSettings: strict),
        // What both HTTPS servers share: JSON responses, rate limits, systemd readiness, watchdog and
        // journal priorities.
        .target(
            name: "ServerSupport",
            dependencies: [
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strict),
        // posix_spawn attributes for children that start with no signal blocked.
        .target(name: "Spawn", dependencies: ["ClusterModel"], swiftSettings: strict),
        // Small text files and kernel pseudo-files read whole (FoundationEssentials leaks on empty ones),
        // and the process's memory as the kernel accounts it.
        .target(name: "SystemFiles", swiftSettings: strict),
        // Pure: DRS and DPM planners (consolidation, balance) over placement's snapshot.
        .target(name: "Planner", dependencies: ["ClusterModel", "Placement"], swiftSettings: strict),
        // Pure: live migration's convergence policies, pricing and compatibility checks.
        .target(name: "MigrationPolicy", dependencies: ["ClusterModel", "Placement"], swiftSettings: strict),
        // Pure: VM spec -> libvirt domain XML and back, built with libxml2's tree API.
        .target(name: "DomainXML", dependencies: ["ClusterModel", "CLibXML2"], swiftSettings: strict),
        // Safe wrapper over libvirt's C API.
        .target(
            name: "Libvirt",
            dependencies: [
                "CLibvirt",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            ],
            swiftSettings: strict),
        // Desired and observed state: SQLite (PostgreSQL next), versioned migrations.
        .target(
            name: "Store",
            dependencies: [
                "ClusterModel",
                .product(name: "SQLiteNIO", package: "sqlite-nio"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict),
        // TLS identities of the daemons (swift-certificates).
        .target(
            name: "TLSSupport",
            dependencies: [
                "ClusterModel", "SystemFiles",
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
            ],
            swiftSettings: strict),
        // The host side of the distributed switch as a plan of ip/bridge commands (pure).
        .target(name: "HostNetwork", dependencies: ["AgentAPI", "ClusterModel"], swiftSettings: strict),
        // Wire types of the agent's HTTP API (Schemas/agent-api.json).
        .target(name: "AgentAPI", dependencies: ["ClusterModel", "MigrationPolicy"], swiftSettings: strict),
        // The host agent service.
        .target(
            name: "HostAgent",
            dependencies: [
                "AgentAPI", "ClusterModel", "DomainXML", "HostNetwork", "Libvirt", "MigrationPolicy", "ServerSupport", "Spawn", "SystemFiles", "TLSSupport",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdTLS", package: "hummingbird"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            ],
            swiftSettings: strict),
        // Wire types of the controller's HTTP API (Schemas/controller-api.json).
        .target(
            name: "ControllerAPI",
            dependencies: ["AgentAPI", "ClusterModel", "MigrationPolicy", .product(name: "Crypto", package: "swift-crypto")],
            swiftSettings: strict),
        // The controller service: desired state, reconcile loop, HTTPS API.
        .target(
            name: "Controller",
            dependencies: [
                "AgentAPI", "ClusterModel", "ControllerAPI", "MigrationPolicy", "Placement", "Planner", "ServerSupport", "Spawn", "Store", "SystemFiles", "TLSSupport",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdTLS", package: "hummingbird"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ],
            swiftSettings: strict),
        .executableTarget(
            name: "vsphere-agent",
            dependencies: [
                "HostAgent", "ServerSupport", "TLSSupport",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strict),
        .executableTarget(
            name: "vsphere-controller",
            dependencies: [
                "Controller", "ServerSupport", "Store", "SystemFiles", "TLSSupport",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strict),
        .executableTarget(
            name: "vsphere-ctl",
            dependencies: [
                "AgentAPI", "ClusterModel", "Placement", "Planner", "ControllerAPI", "MigrationPolicy", "SystemFiles", "TLSSupport",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: strict),

        // Test-only helpers (a seeded generator for property tests).
        .target(name: "TestSupport", path: "Tests/TestSupport"),
        .testTarget(name: "ClusterModelTests", dependencies: ["ClusterModel", "TestSupport"]),
        .testTarget(name: "MigrationPolicyTests", dependencies: ["MigrationPolicy", "Placement", "ClusterModel", "TestSupport"]),
        .testTarget(name: "PlannerTests", dependencies: ["Planner", "Placement", "ClusterModel", "TestSupport"]),
        .testTarget(name: "PlacementTests", dependencies: ["Placement", "ClusterModel", "TestSupport"]),
        .testTarget(name: "StoreTests", dependencies: ["Store", "ClusterModel", "Spawn"]),
        .testTarget(name: "HostAgentTests", dependencies: ["HostAgent", "AgentAPI", "DomainXML", "SystemFiles", "TestSupport"]),
        .testTarget(name: "HostNetworkTests", dependencies: ["HostNetwork", "AgentAPI", "TestSupport"]),
        .testTarget(name: "ControllerTests", dependencies: ["Controller", "ClusterModel", "AgentAPI", "ControllerAPI", "Store", .product(name: "Logging", package: "swift-log"), "Planner", "Spawn", "TLSSupport", .product(name: "X509", package: "swift-certificates"), .product(name: "SwiftASN1", package: "swift-asn1"), .product(name: "Crypto", package: "swift-crypto")]),
        .testTarget(name: "DomainXMLTests", dependencies: ["DomainXML", "ClusterModel", "TestSupport"]),
        .testTarget(name: "LibvirtTests", dependencies: ["Libvirt", "DomainXML", "ClusterModel"]),
        .testTarget(
            name: "IntegrationTests",
            dependencies: [
                "AgentAPI", "ClusterModel", "ControllerAPI", "MigrationPolicy", "Spawn",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ]),
    ]
)
