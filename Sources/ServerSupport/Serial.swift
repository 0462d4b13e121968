/// Runs async bodies one after another, in the order they arrive.
public actor Serial {
    public init() {}

    private var tail: Task<Void, Never>?

    public func run<T: Sendable>(_ body: @escaping @Sendable () async throws -> T) async throws -> T {
        let before = tail
        let task = Task<T, any Error> {
            await before?.value
            return try await body()
        }
        tail = Task { _ = try? await task.value }
        return try await task.value
    }
}
