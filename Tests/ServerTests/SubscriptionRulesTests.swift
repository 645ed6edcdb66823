import Storage
import Testing

@testable import Modules

@Suite struct SubscriptionRulesTests {
    typealias Rules = Subscriptions.Rules

    @Test func fullHandshakeReachesBoth() throws {
        // alice asks bob, bob approves: alice none→to, bob none→from.
        let alice = Rules.outboundSubscribe(RosterItem(jid: "bob@x"))
        #expect(alice.askSubscribe && alice.subscription == .none)
        let bobPending = RosterItem(jid: "alice@x", pendingIn: true, inRoster: false)
        let bob = try #require(Rules.outboundSubscribed(bobPending))
        #expect(bob.subscription == .from && !bob.pendingIn && bob.inRoster)
        let aliceAfter = try #require(Rules.inboundSubscribed(alice))
        #expect(aliceAfter.subscription == .to && !aliceAfter.askSubscribe)
        // and the other way: to→both, from→both.
        var bobAsks = Rules.outboundSubscribe(bob)
        #expect(bobAsks.askSubscribe)
        var aliceWithPending = aliceAfter
        aliceWithPending.pendingIn = true
        #expect(Rules.outboundSubscribed(aliceWithPending)?.subscription == .both)
        bobAsks = try #require(Rules.inboundSubscribed(bobAsks))
        #expect(bobAsks.subscription == .both)
    }

    @Test func unsolicitedAnswersAreIgnored() {
        #expect(Rules.inboundSubscribed(RosterItem(jid: "x@y")) == nil)
        #expect(Rules.outboundSubscribed(RosterItem(jid: "x@y", subscription: .none)) == nil)
    }

    @Test(arguments: [
        (Subscription.both, Subscription.from, Subscription.to),
        (.to, .none, .to),
        (.from, .from, .none),
        (.none, .none, .none),
    ])
    func cancellations(start: Subscription, afterDropTo: Subscription, afterDropFrom: Subscription) {
        #expect(Rules.dropTo(RosterItem(jid: "x@y", subscription: start, askSubscribe: true)).subscription == afterDropTo)
        #expect(Rules.dropFrom(RosterItem(jid: "x@y", subscription: start, pendingIn: true)).subscription == afterDropFrom)
        #expect(!Rules.dropTo(RosterItem(jid: "x@y", subscription: start, askSubscribe: true)).askSubscribe)
        #expect(!Rules.dropFrom(RosterItem(jid: "x@y", subscription: start, pendingIn: true)).pendingIn)
    }
}
