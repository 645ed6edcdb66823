"""One-to-one messages (RFC 6121 §5, §8) and offline delivery (XEP-0160 with XEP-0203 delay)."""
import datetime as dt

from xmpp_client import NS_DELAY, async_test, delay_stamp, error_condition, eventually


@async_test()
async def test_message_to_full_jid(xmpp, server):
    alice_acc, bob_acc = xmpp.new_user("alice"), xmpp.new_user("bob")
    alice = await xmpp.login(alice_acc, "desk")
    bob = await xmpp.login(bob_acc, "phone")
    bob_other = await xmpp.login(bob_acc, "tablet")
    alice.send_message(mto=f"{bob_acc.jid}/phone", mbody="to your phone", mtype="chat")
    m = await bob.wait_message(sender=f"{alice_acc.jid}/desk", body="to your phone")
    assert m["type"] == "chat"
    assert str(m["to"]) == f"{bob_acc.jid}/phone"
    await bob_other.expect_nothing(lambda s: s.name == "message" and s["body"] == "to your phone",
                                   "message addressed to another resource", 0.5)


@async_test()
async def test_message_to_bare_jid(xmpp, server):
    alice_acc, bob_acc = xmpp.new_user("alice"), xmpp.new_user("bob")
    alice = await xmpp.login(alice_acc, "desk")
    bob = await xmpp.login(bob_acc, "phone")
    alice.send_message(mto=bob_acc.jid, mbody="to whichever device", mtype="chat")
    m = await bob.wait_message(sender=f"{alice_acc.jid}/desk", body="to whichever device")
    assert m["to"].bare == bob_acc.jid
    # normal-type message too
    alice.send_message(mto=bob_acc.jid, mbody="a normal message", mtype="normal")
    await bob.wait_message(sender=alice_acc.jid, body="a normal message")


@async_test()
async def test_message_to_bare_jid_with_two_resources(xmpp, server):
    """RFC 6121 §8.5.2.1.1: delivered to the most available resource(s) — at least one."""
    alice_acc, bob_acc = xmpp.new_user("alice"), xmpp.new_user("bob")
    alice = await xmpp.login(alice_acc, "desk")
    bobs = [await xmpp.login(bob_acc, r) for r in ("phone", "laptop")]
    alice.send_message(mto=bob_acc.jid, mbody="anyone there?", mtype="chat")
    await eventually(lambda: any(s.name == "message" and s["body"] == "anyone there?"
                                 for b in bobs for s in b.received),
                     "message to bare JID reached one of the online resources")


@async_test()
async def test_message_to_unknown_local_user_bounces(xmpp, server):
    alice_acc = xmpp.new_user("alice")
    alice = await xmpp.login(alice_acc, "desk")
    ghost = f"no-such-user@{server.domain}"
    alice.send_message(mto=ghost, mbody="hello?", mtype="chat")
    err = await alice.wait_for(lambda s: s.name == "message" and s["type"] == "error",
                               "message error")
    assert err["from"].bare == ghost
    assert error_condition(err) == "service-unavailable", err


@async_test()
async def test_offline_delivery_with_delay(xmpp, server):
    alice_acc, bob_acc = xmpp.new_user("alice"), xmpp.new_user("bob")
    # bob has been online once, then left
    bob = await xmpp.login(bob_acc, "phone")
    await bob.stop()
    alice = await xmpp.login(alice_acc, "desk")
    before = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=5)
    bodies = ["first while you were away", "第二条：明天放假"]
    for b in bodies:
        alice.send_message(mto=bob_acc.jid, mbody=b, mtype="chat")
    await alice.expect_nothing(lambda s: s.name == "message" and s["type"] == "error",
                               "error for a message to an offline user", 0.5)

    # Offline messages are delivered on initial presence (not before).
    bob = await xmpp.login(bob_acc, "phone", presence=False)
    await bob.expect_nothing(lambda s: s.name == "message", "offline message before presence", 0.5)
    bob.send_presence()
    got = [await bob.wait_message(sender=alice_acc.jid) for _ in bodies]
    assert [m["body"] for m in got] == bodies, "offline messages lost or reordered"
    for m in got:
        stamp = delay_stamp(m)
        assert before <= stamp <= dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=5), stamp
        delay = m.xml.find(f"{{{NS_DELAY}}}delay")
        assert delay.get("from") in (None, server.domain, alice_acc.jid,
                                     f"{alice_acc.jid}/desk"), delay.get("from")
    # delivered once: a new session does not get them again
    bob2 = await xmpp.login(bob_acc, "tablet")
    await bob2.expect_nothing(lambda s: s.name == "message" and s["body"] in bodies,
                              "offline message delivered twice", 1.0)
