"""Message carbons (XEP-0280, urn:xmpp:carbons:2): a user's devices see each other's chats."""
import xml.etree.ElementTree as ET

import pytest

from xmpp_client import NS_CARBONS, NS_CLIENT, async_test, carbon

pytestmark = pytest.mark.xep("XEP-0280")


def private_hint() -> list[ET.Element]:
    """<private/> (XEP-0280 'Avoiding Carbons') alone, without the <no-copy/> hint (XEP-0334)
    clients add next to it: the server must honour <private/> by itself."""
    return [ET.Element(f"{{{NS_CARBONS}}}private")]


def body_of(message: ET.Element) -> str | None:
    return message.findtext(f"{{{NS_CLIENT}}}body")


def is_carbon(stanza) -> bool:
    return carbon(stanza, "sent") is not None or carbon(stanza, "received") is not None


def message_or_carbon(body: str):
    """Predicate: a message with ``body``, or a received carbon of one."""
    def match(st):
        if st.name != "message":
            return False
        fwd = carbon(st, "received")
        return st["body"] == body or (fwd is not None and body_of(fwd) == body)
    return match


@async_test()
async def test_server_advertises_carbons(xmpp, server):
    alice = await xmpp.login(xmpp.new_user("alice"), "desk")
    features = await alice.disco_features(server.domain)
    assert NS_CARBONS in features, sorted(features)


@async_test()
async def test_received_and_sent_carbons(xmpp, server):
    alice_acc, bob_acc = xmpp.new_user("alice"), xmpp.new_user("bob")
    desk = await xmpp.login(alice_acc, "desk")
    phone = await xmpp.login(alice_acc, "phone")
    tablet = await xmpp.login(alice_acc, "tablet")  # never enables carbons
    bob = await xmpp.login(bob_acc, "desk")
    for c in (desk, phone):
        await c.enable_carbons()

    # bob -> alice/desk: desk gets the message, phone a received carbon
    mid = bob.send_chat(f"{alice_acc.jid}/desk", "for your desk")
    await desk.wait_message(sender=bob_acc.jid, body="for your desk")
    wrapper, fwd = await phone.wait_carbon("received", "for your desk")
    # XEP-0280 'Security Considerations': carbons come from the user's bare JID
    assert str(wrapper["from"]) == alice_acc.jid, wrapper
    assert str(wrapper["to"]) == f"{alice_acc.jid}/phone"
    assert fwd.get("from") == f"{bob_acc.jid}/desk"
    assert fwd.get("to") == f"{alice_acc.jid}/desk"
    assert fwd.get("id") == mid
    assert fwd.get("type") == "chat"

    # alice/desk -> bob: bob gets it, phone a sent carbon
    mid = desk.send_chat(bob_acc.jid, "from my desk")
    await bob.wait_message(sender=f"{alice_acc.jid}/desk", body="from my desk")
    wrapper, fwd = await phone.wait_carbon("sent", "from my desk")
    assert str(wrapper["from"]) == alice_acc.jid
    assert fwd.get("from") == f"{alice_acc.jid}/desk"
    assert fwd.get("to") == bob_acc.jid
    assert fwd.get("id") == mid

    # bob -> alice (bare JID): every carbons-enabled resource sees it exactly once, as the
    # message itself or as a received carbon
    bob.send_chat(alice_acc.jid, "for any of you")
    for c in (desk, phone):
        await c.wait_for(message_or_carbon("for any of you"), "the message to the bare JID or its carbon")
        await c.expect_nothing(message_or_carbon("for any of you"),
                               "a second copy of the message to the bare JID", 0.3)

    # the sender gets no copy of its own message, the recipient no carbon of what it got,
    # and a resource without carbons no copies at all
    await desk.expect_nothing(is_carbon, "carbon on the resource that sent/received the message", 0.5)
    await tablet.expect_nothing(lambda s: is_carbon(s) or (
        s.name == "message" and s["body"] in ("for your desk", "from my desk")),
        "copy on a resource that did not enable carbons", 0.3)

    # after disabling, phone gets no more copies
    await phone.result(phone.plugin["xep_0280"].disable(), "disable carbons")
    bob.send_chat(f"{alice_acc.jid}/desk", "after disable")
    await desk.wait_message(sender=bob_acc.jid, body="after disable")
    await phone.expect_nothing(is_carbon, "carbon after <disable/>", 0.5)


@async_test()
async def test_private_messages_are_not_copied(xmpp, server):
    alice_acc, bob_acc = xmpp.new_user("alice"), xmpp.new_user("bob")
    desk = await xmpp.login(alice_acc, "desk")
    phone = await xmpp.login(alice_acc, "phone")
    bob = await xmpp.login(bob_acc, "desk")
    for c in (desk, phone):
        await c.enable_carbons()

    desk.send_chat(bob_acc.jid, "private outgoing", payload=private_hint())
    await bob.wait_message(sender=f"{alice_acc.jid}/desk", body="private outgoing")
    bob.send_chat(f"{alice_acc.jid}/desk", "private incoming", payload=private_hint())
    await desk.wait_message(sender=bob_acc.jid, body="private incoming")
    # a normal message afterwards is copied, so the private ones had their chance to show up
    bob.send_chat(f"{alice_acc.jid}/desk", "not private")
    await phone.wait_carbon("received", "not private")
    copies = [body_of(carbon(s, d)) for s in phone.received for d in ("sent", "received")
              if carbon(s, d) is not None]
    assert "private outgoing" not in copies and "private incoming" not in copies, copies
