"""Blocking command (XEP-0191, urn:xmpp:blocking)."""
import asyncio

import pytest

from xmpp_client import (NS_BLOCKING, NS_BLOCKING_ERRORS, NS_CLIENT, async_test, error_condition,
                         subscribe_both)

pytestmark = pytest.mark.xep("XEP-0191")


def is_error_for(mid: str):
    """Predicate: the error reply to the message with id ``mid`` (RFC 6120 §8.3.1: same id)."""
    def match(st):
        return st.name == "message" and st["type"] == "error" and st["id"] == mid
    return match


@async_test()
async def test_server_advertises_blocking(xmpp, server):
    alice = await xmpp.login(xmpp.new_user("alice"), "desk")
    features = await alice.disco_features(server.domain)
    assert NS_BLOCKING in features, sorted(features)


@pytest.mark.xep("XEP-0313")
@async_test()
async def test_block_and_unblock(xmpp, server):
    alice_acc, bob_acc = xmpp.new_user("alice"), xmpp.new_user("bob")
    desk = await xmpp.login(alice_acc, "desk")
    phone = await xmpp.login(alice_acc, "phone")
    bob = await xmpp.login(bob_acc, "desk")
    await subscribe_both(desk, bob)
    await bob.wait_presence(f"{alice_acc.jid}/phone")
    assert await phone.blocklist() == set()  # phone asks for the list, so it gets pushes

    # block
    await desk.block(bob_acc.jid)
    push = await phone.wait_block_push("block", bob_acc.jid)
    assert push["from"].bare in ("", alice_acc.jid), push
    assert await desk.blocklist() == {bob_acc.jid}
    assert await phone.blocklist() == {bob_acc.jid}
    # bob sees alice go offline (XEP-0191, 'User Blocks Contact')
    for r in ("desk", "phone"):
        await bob.wait_presence(f"{alice_acc.jid}/{r}", "unavailable")

    # bob -> alice bounces with service-unavailable; alice gets nothing
    for to in (alice_acc.jid, f"{alice_acc.jid}/phone"):
        mid = bob.send_chat(to, "let me in")
        err = await bob.wait_for(is_error_for(mid), f"error for the message to {to}")
        assert error_condition(err) == "service-unavailable", err
    # alice -> bob is refused: not-acceptable with <blocked/>; bob gets nothing
    mid = desk.send_chat(bob_acc.jid, "are you there?")
    err = await desk.wait_for(is_error_for(mid), "error for a message to a blocked JID")
    assert error_condition(err) == "not-acceptable", err
    assert err.xml.find(f"{{{NS_CLIENT}}}error/{{{NS_BLOCKING_ERRORS}}}blocked") is not None, \
        f"no <blocked xmlns='{NS_BLOCKING_ERRORS}'/> in the error: {err}"
    # iq requests to alice's resources bounce too (slixmpp would answer a ping)
    err = await bob.iq_error(bob.ping_iq(f"{alice_acc.jid}/phone"))
    assert error_condition(err) == "service-unavailable", err
    for c in (desk, phone):
        await c.expect_nothing(lambda s: s.name == "message" and s["type"] != "error"
                               and s["from"].bare == bob_acc.jid, "message from a blocked JID", 0.3)
    await bob.expect_nothing(lambda s: s.name == "message" and s["body"] == "are you there?"
                             and s["type"] != "error", "message from the user who blocked bob", 0.3)

    # what was rejected is not in alice's archive either (XEP-0313, 'Storage and Retrieval Rules')
    archived, _ = await desk.mam_query(with_jid=bob_acc.jid)
    assert [r.body for r in archived if r.message.get("from", "").startswith(bob_acc.jid)] == [], \
        "messages from a blocked JID in the archive"

    # unblock
    await desk.unblock(bob_acc.jid)
    await phone.wait_block_push("unblock", bob_acc.jid)
    assert await phone.blocklist() == set()
    bob.send_chat(f"{alice_acc.jid}/desk", "thanks")
    await desk.wait_message(sender=bob_acc.jid, body="thanks")
    desk.send_chat(bob_acc.jid, "you're welcome")
    await bob.wait_message(sender=f"{alice_acc.jid}/desk", body="you're welcome")
    await bob.iq(bob.ping_iq(f"{alice_acc.jid}/phone"))


@async_test()
async def test_full_jid_block_and_unblock_all(xmpp, server):
    """XEP-0191 'JID Matching': a full JID in the list blocks that resource only; an empty <unblock/>
    clears the list (pushed as an empty <unblock/>)."""
    alice_acc, bob_acc, carol_acc = (xmpp.new_user(n) for n in ("alice", "bob", "carol"))
    alice = await xmpp.login(alice_acc, "desk")
    assert await alice.blocklist() == set()
    bob_desk = await xmpp.login(bob_acc, "desk")
    bob_phone = await xmpp.login(bob_acc, "phone")
    carol = await xmpp.login(carol_acc, "desk")
    await alice.block(f"{bob_acc.jid}/desk", carol_acc.jid)
    assert await alice.blocklist() == {f"{bob_acc.jid}/desk", carol_acc.jid}

    blocked = bob_desk.send_chat(f"{alice_acc.jid}/desk", "from the blocked resource")
    err = await bob_desk.wait_for(is_error_for(blocked), "error for the blocked resource")
    assert error_condition(err) == "service-unavailable", err
    bob_phone.send_chat(f"{alice_acc.jid}/desk", "from another resource")
    await alice.wait_message(sender=f"{bob_acc.jid}/phone", body="from another resource")

    await alice.unblock()
    await alice.wait_block_push("unblock", None)
    assert await alice.blocklist() == set()
    for c in (bob_desk, carol):
        c.send_chat(f"{alice_acc.jid}/desk", "unblocked now")
        await alice.wait_message(sender=str(c.boundjid), body="unblocked now")


@async_test()
async def test_block_holds_while_offline_and_after_logout(xmpp, server):
    """The blocklist is stored: it still applies while the user is offline (nothing from a
    blocked JID is stored for later delivery) and in the next session."""
    alice_acc, bob_acc, carol_acc = (xmpp.new_user(n) for n in ("alice", "bob", "carol"))
    alice = await xmpp.login(alice_acc, "desk")
    await alice.block(bob_acc.jid, carol_acc.jid)
    await alice.stop()

    bob = await xmpp.login(bob_acc, "desk")
    offline_mid = bob.send_chat(alice_acc.jid, "while you are offline")
    await asyncio.sleep(0.5)

    alice = await xmpp.login(alice_acc, "desk")
    await alice.expect_nothing(lambda s: s.name == "message" and s["from"].bare == bob_acc.jid,
                               "message from a blocked JID, stored while offline", 1.0)
    err = await bob.wait_for(is_error_for(offline_mid), "error for a message to an offline blocker")
    assert error_condition(err) == "service-unavailable", err
    assert await alice.blocklist() == {bob_acc.jid, carol_acc.jid}
    mid = bob.send_chat(alice_acc.jid, "still blocked?")
    err = await bob.wait_for(is_error_for(mid), "error for a message to the blocker")
    assert error_condition(err) == "service-unavailable", err
