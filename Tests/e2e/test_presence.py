"""Presence subscriptions and broadcast (RFC 6121 §3, §4)."""
from xmpp_client import NS_ROSTER, async_test, subscribe_both


def sub_state(push, jid):
    item = next(i for i in push.xml.find(f"{{{NS_ROSTER}}}query") if i.get("jid") == jid)
    return item.get("subscription"), item.get("ask")


@async_test()
async def test_subscription_handshake_both_ways(xmpp, server):
    alice_acc, bob_acc = xmpp.new_user("alice"), xmpp.new_user("bob")
    alice = await xmpp.login(alice_acc, "desk")
    bob = await xmpp.login(bob_acc, "desk")
    A, B = alice_acc.jid, bob_acc.jid

    # alice -> bob: subscribe
    alice.send_subscription(B, "subscribe")
    push = await alice.wait_roster_push(B)
    assert sub_state(push, B) == ("none", "subscribe")
    req = await bob.wait_presence(A, "subscribe")
    assert str(req["from"]) == A, "subscription requests come from the bare JID"

    # bob approves
    bob.send_subscription(A, "subscribed")
    push = await bob.wait_roster_push(A)
    assert sub_state(push, A) == ("from", None)
    await alice.wait_presence(B, "subscribed")
    push = await alice.wait_roster_push(B)
    assert sub_state(push, B) == ("to", None)
    # alice now receives bob's current presence (the server probes / forwards it)
    await alice.wait_presence(f"{B}/desk")

    # bob -> alice: subscribe, alice approves
    bob.send_subscription(A, "subscribe")
    push = await bob.wait_roster_push(A)
    assert sub_state(push, A) == ("from", "subscribe")
    await alice.wait_presence(B, "subscribe")
    alice.send_subscription(B, "subscribed")
    push = await alice.wait_roster_push(B)
    assert sub_state(push, B) == ("both", None)
    await bob.wait_presence(A, "subscribed")
    push = await bob.wait_roster_push(A)
    assert sub_state(push, A) == ("both", None)
    await bob.wait_presence(f"{A}/desk")

    for c, other in ((alice, B), (bob, A)):
        items, _ = await c.fetch_roster()
        assert items[other].get("subscription") == "both"
        assert items[other].get("ask") is None


@async_test()
async def test_presence_broadcast_and_unavailable_on_disconnect(xmpp, server):
    alice_acc, bob_acc = xmpp.new_user("alice"), xmpp.new_user("bob")
    alice = await xmpp.login(alice_acc, "desk")
    bob = await xmpp.login(bob_acc, "desk")
    await subscribe_both(alice, bob)

    # A broadcast presence change reaches the subscribed contact, with its payload.
    bob.send_presence(pshow="dnd", pstatus="在开会 (in a meeting)")
    p = await alice.wait_presence(f"{bob_acc.jid}/desk")
    while p["status"] != "在开会 (in a meeting)":
        p = await alice.wait_presence(f"{bob_acc.jid}/desk")
    assert p["show"] == "dnd"

    # A new session of alice gets bob's current presence right after its initial presence.
    alice2 = await xmpp.login(alice_acc, "phone")
    p = await alice2.wait_presence(f"{bob_acc.jid}/desk")
    assert p["show"] == "dnd"
    # ... bob sees alice's new resource come online, and so do alice's other resources
    # (a user is implicitly subscribed to her own presence, RFC 6121 §4.2.2).
    await bob.wait_presence(f"{alice_acc.jid}/phone")
    await alice.wait_presence(f"{alice_acc.jid}/phone")

    # Disconnecting (without sending unavailable ourselves) -> contacts get unavailable.
    await bob.stop()
    for c in (alice, alice2):
        await c.wait_presence(f"{bob_acc.jid}/desk", "unavailable")


@async_test()
async def test_no_presence_without_subscription(xmpp, server):
    alice_acc, bob_acc = xmpp.new_user("alice"), xmpp.new_user("bob")
    alice = await xmpp.login(alice_acc, "desk")
    bob = await xmpp.login(bob_acc, "desk")
    bob.send_presence(pstatus="secret status")
    await alice.expect_nothing(lambda s: s.name == "presence" and s["from"].bare == bob_acc.jid,
                               "presence from a non-contact", 1.0)
