import Testing

@testable import Server

@Suite struct PlainLoginCacheTests {
    @Test func remembersOnlyTheVerifiedPasswordForTheCurrentCredentials() {
        let cache = PlainLoginCache(capacity: 2)
        #expect(!cache.matches("alice", password: "pw", storedKey: [1]))
        cache.remember("alice", password: "pw", storedKey: [1])
        #expect(cache.matches("alice", password: "pw", storedKey: [1]))
        #expect(!cache.matches("alice", password: "other", storedKey: [1]))
        // After a password change the stored key differs: the old password is not accepted from cache.
        #expect(!cache.matches("alice", password: "pw", storedKey: [2]))
        #expect(!cache.matches("bob", password: "pw", storedKey: [1]))
        // Bounded: filling past capacity starts over rather than growing.
        cache.remember("bob", password: "b", storedKey: [3])
        cache.remember("carol", password: "c", storedKey: [4])
        #expect(cache.matches("carol", password: "c", storedKey: [4]))
    }
}
