"""Client state indication (XEP-0352, urn:xmpp:csi:0): while a client says it is inactive,
the server holds back its contacts' presence updates (keeping only the latest per contact)
until something important (a message with a body) arrives or the client is active again."""
import asyncio
import xml.etree.ElementTree as ET

import pytest

from xmpp_client import NS_CSI, async_test, subscribe_both

pytestmark = pytest.mark.xep("XEP-0352")


def presence_from(jid: str):
    def match(st):
        return st.name == "presence" and str(st["from"]) == jid and st.xml.get("type") is None
    return match


async def contacts(xmpp, **login):
    """alice (the client that goes inactive) and bob, subscribed to each other, with all the
    presence of the subscription handshake behind them."""
    alice_acc, bob_acc = xmpp.new_user("alice"), xmpp.new_user("bob")
    alice = await xmpp.login(alice_acc, "phone", **login)
    bob = await xmpp.login(bob_acc, "desk")
    await subscribe_both(alice, bob)
    await alice.wait_presence(f"{bob_acc.jid}/desk")
    await bob.wait_presence(f"{alice_acc.jid}/phone")
    await asyncio.sleep(0.3)  # a server may send the current presence twice (approval, probe)
    alice.skip_received()
    return alice, bob


@async_test()
async def test_csi_offered_after_authentication(xmpp, server):
    alice = await xmpp.login(xmpp.new_user("alice"), "phone")
    assert alice.stream_features.find(f"{{{NS_CSI}}}csi") is not None, \
        ET.tostring(alice.stream_features, encoding="unicode")
    assert alice.plugin["xep_0352"].enabled


@async_test()
async def test_inactive_client_gets_latest_presence_before_next_message(xmpp, server):
    alice, bob = await contacts(xmpp)
    bob_full = str(bob.boundjid)
    alice.set_client_state(active=False)
    await alice.roundtrip()  # the server has taken note of <inactive/>

    for show, status in (("away", "one"), ("dnd", "two"), ("xa", "three")):
        await bob.announce(pshow=show, pstatus=status)
    await alice.expect_nothing(presence_from(bob_full), "presence while inactive", 1.0)

    # a message with a body: the held presence (only the latest) comes first, right before it
    bob.send_chat(alice.boundjid.bare, "wake up")
    msg = await alice.wait_message(sender=bob_full, body="wake up")
    p = await alice.wait_for(presence_from(bob_full), "held presence")
    assert (p["show"], p["status"]) == ("xa", "three"), p
    assert alice.received.index(p) == alice.received.index(msg) - 1, \
        "the held presence did not come right before the message"
    await alice.expect_nothing(presence_from(bob_full), "superseded or repeated presence", 0.3)

    # still inactive: held again; <active/> delivers the latest at once, then presence flows
    await bob.announce(pshow="away", pstatus="four")
    await bob.announce(pshow="chat", pstatus="five")
    await alice.expect_nothing(presence_from(bob_full), "presence while inactive", 0.5)
    alice.set_client_state(active=True)
    p = await alice.wait_for(presence_from(bob_full), "held presence after <active/>")
    assert (p["show"], p["status"]) == ("chat", "five"), p
    await alice.expect_nothing(presence_from(bob_full), "superseded or repeated presence", 0.3)
    await bob.announce(pstatus="six")
    p = await alice.wait_for(presence_from(bob_full), "presence while active")
    assert p["status"] == "six", p


@pytest.mark.xep("XEP-0198")
@async_test()
async def test_presence_held_while_inactive_survives_resumption(xmpp, server):
    """Presence held back for an inactive client belongs to the session, not the connection:
    after the connection drops and the session is resumed (XEP-0198), the client still learns
    the contact's latest presence (at the latest once it says <active/> again)."""
    alice, bob = await contacts(xmpp, stream_management=True)
    bob_full = str(bob.boundjid)
    alice.set_client_state(active=False)
    await alice.roundtrip()

    await bob.announce(pshow="dnd", pstatus="in a meeting")
    await alice.expect_nothing(presence_from(bob_full), "presence while inactive", 0.5)
    await alice.drop_connection()
    await alice.resume()
    alice.set_client_state(active=True)
    p = await alice.wait_for(presence_from(bob_full), "bob's presence, held before the resumption")
    assert (p["show"], p["status"]) == ("dnd", "in a meeting"), p
