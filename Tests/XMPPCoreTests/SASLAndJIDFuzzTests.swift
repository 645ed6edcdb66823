import FuzzSupport
import Foundation
import Testing

@testable import XMPPCore

/// Seeded random and mutated input for the parsers that see bytes from unauthenticated peers:
/// SCRAM client-first and client-final, PLAIN, and JIDs. They must never crash, fail only with
/// their typed errors (`throws(SASLError)`/`throws(JIDError)` make that a compile-time fact; the
/// test adds the run-time half: no trap, no hang), and a JID they accept must print back to the
/// same JID.
///
/// `SWITCHBOARD_FUZZ_SECONDS` (default 2 per test) runs longer; `SWITCHBOARD_FUZZ_SEED` replays.
@Suite struct SASLAndJIDFuzzTests {
    static let fakeSaltKey = [UInt8](repeating: 7, count: 32)
    static let specials = Array(",=n y p a r s i c v m e :@/\\\u{0}".utf8) + [0x80, 0xC3, 0xE4, 0xED, 0xF0, 0xFF]
    static let fragments = ["n,,", "y,,", "p=tls-unique,,", "n=", "r=", "c=", "p=", "a=", "m=", "=2C", "=3D", "=", ",", "biws", "n,a=user@x,n=user,r=abc", "\u{0}"]
        .map { Array($0.utf8) }

    static func mutate(_ seed: [UInt8], _ random: inout SplitMix64) -> [UInt8] {
        var bytes = seed
        if random.next() % 8 == 0 {
            return (0..<Int(random.next() % 300)).map { _ in UInt8(truncatingIfNeeded: random.next()) }
        }
        for _ in 0...(random.next() % 5) {
            let position = bytes.isEmpty ? 0 : Int(random.next() % UInt64(bytes.count))
            switch random.next() % 6 {
            case 0: if !bytes.isEmpty { bytes.remove(at: position) }
            case 1: bytes.insert(specials[Int(random.next() % UInt64(specials.count))], at: position)
            case 2: if !bytes.isEmpty { bytes[position] = specials[Int(random.next() % UInt64(specials.count))] }
            case 3: bytes.insert(contentsOf: fragments[Int(random.next() % UInt64(fragments.count))], at: position)
            case 4: bytes = Array(bytes.prefix(position))
            default:
                let length = min(bytes.count - position, Int(random.next() % 32))
                let slice = bytes[position..<(position + length)]
                for _ in 0..<(random.next() % 40) { bytes.insert(contentsOf: slice, at: position) }
            }
        }
        return bytes
    }

    @Test func scramServerSurvivesRandomClientMessages() throws {
        let budget = FuzzBudget(name: "SCRAM server")
        var random = SplitMix64(seed: budget.seed)
        let credentials = [
            SCRAMHash.sha1: try SCRAMCredentials.generate(password: "pencil", hash: .sha1, iterations: 64),
            SCRAMHash.sha256: try SCRAMCredentials.generate(password: "pencil", hash: .sha256, iterations: 64),
        ]
        var cases = 0
        var accepted = 0
        var wrongAccepts: [String] = []
        while budget.goOn(cases) {
            cases += 1
            let hash: SCRAMHash = random.next() % 2 == 0 ? .sha1 : .sha256
            var client = SCRAMClient(hash: hash, username: random.next() % 3 == 0 ? "us,er=é" : "user", password: "pencil")
            var server = SCRAMServer(hash: hash)
            let clientFirst = client.clientFirst()
            let mutateFirst = random.next() % 2 == 0
            let first = mutateFirst ? Self.mutate(clientFirst, &random) : clientFirst
            guard (try? server.receiveClientFirst(first)) != nil else { continue }
            let challenge = server.serverFirst(credentials: credentials[hash], fakeSaltKey: Self.fakeSaltKey, fakeIterations: 64)
            guard let clientFinal = try? client.receiveServerFirst(challenge) else { continue }
            let final = Self.mutate(clientFinal, &random)
            do {
                _ = try server.receiveClientFinal(final)
                accepted += 1
                // Only the exact, untampered proof may succeed (a mutation that changes nothing is fine).
                if final != clientFinal {
                    wrongAccepts.append("seed \(budget.seed) case \(cases): accepted \(String(decoding: final, as: UTF8.self).debugDescription)")
                }
            } catch {
                // typed SASLError by construction
            }
        }
        budget.finish(cases)
        #expect(wrongAccepts.isEmpty, "\(wrongAccepts.prefix(5))")
    }

    @Test func plainParserSurvivesRandomInput() {
        let budget = FuzzBudget(name: "PLAIN")
        var random = SplitMix64(seed: budget.seed)
        var cases = 0
        var problems: [String] = []
        let seeds = [
            PLAINMessage.encode(authcid: "user", password: "pencil"),
            PLAINMessage.encode(authzid: "user@example.test", authcid: "张伟", password: "p\u{0301}ässwörd"),
            Array(repeating: 0x41, count: 1100),
        ]
        while budget.goOn(cases) {
            cases += 1
            let bytes = Self.mutate(seeds[Int(random.next() % UInt64(seeds.count))], &random)
            do {
                let message = try PLAINMessage.parse(bytes)
                // What it accepts is what encode would have produced.
                if PLAINMessage.encode(authzid: message.authzid, authcid: message.authcid, password: message.password) != bytes {
                    problems.append("seed \(budget.seed) case \(cases): round trip differs for \(bytes)")
                }
            } catch {
                if bytes.count > PLAINMessage.maximumLength, error.condition != .malformedRequest { problems.append("\(error)") }
            }
        }
        budget.finish(cases)
        #expect(problems.isEmpty, "\(problems.prefix(5))")
    }

    @Test func jidParserSurvivesRandomInputAndIsIdempotent() {
        let budget = FuzzBudget(name: "JID")
        var random = SplitMix64(seed: budget.seed)
        var cases = 0
        var problems: [String] = []
        let seeds = [
            "juliet@example.com/balcony", "张伟@例子.测试/手机", "a@[::1]/r", "a@127.0.0.1", "Ünïcødé@ExAmPlE.CoM./Res ource",
            "x@xn--fsq.example/r/with/slashes", "@a", "a@", "a@b/", "a@b@c", String(repeating: "l", count: 1100) + "@d",
        ].map { Array($0.utf8) }
        while budget.goOn(cases) {
            cases += 1
            let bytes = Self.mutate(seeds[Int(random.next() % UInt64(seeds.count))], &random)
            let string = String(decoding: bytes, as: UTF8.self)
            guard let jid = try? JID(string) else { continue }
            // PRECIS preparation is idempotent: the printed JID parses to the same JID.
            do {
                let again = try JID(jid.description)
                if again != jid || again.description != jid.description {
                    problems.append("seed \(budget.seed) case \(cases): \(string.debugDescription) -> \(jid) -> \(again)")
                }
            } catch {
                problems.append("seed \(budget.seed) case \(cases): \(string.debugDescription) -> \(jid.description.debugDescription) does not parse again: \(error)")
            }
        }
        budget.finish(cases)
        #expect(problems.isEmpty, "\(problems.count) problems:\n\(problems.prefix(8).joined(separator: "\n"))")
    }
}


