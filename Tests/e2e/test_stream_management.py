"""Stream management (XEP-0198, urn:xmpp:sm:3): enabling with resumption, acks, resuming a
session after its TCP connection died without losing or duplicating a message, and what
happens to the unacknowledged messages of a session that is never resumed."""
import asyncio
import datetime as dt
import xml.etree.ElementTree as ET

import pytest

from conftest import SHORT_RESUMPTION_SECONDS
from xmpp_client import (NS_SM, NS_STANZAS, NS_STREAMS_ERR, async_test, delay_stamp,
                         eventually)

pytestmark = pytest.mark.xep("XEP-0198")


def message_ids_from(client, sender: str) -> list[str]:
    """Ids of all chat messages ``client`` received from ``sender``, in order of arrival
    (across every connection of this client)."""
    return [m["id"] for m in client.received
            if m.name == "message" and m["from"].bare == sender and m["body"]]


async def acknowledged(client) -> int:
    """Ask the server for an ack; returns its ``h`` once it equals the number of stanzas the
    client sent since enabling (acks are cumulative, so an earlier, smaller one may come first).
    """
    expected = client.sm.seq
    client.sm.request_ack()
    a = await client.wait_sm("a", lambda e: int(e.get("h")) == expected,
                             f"<a h='{expected}'/> (stanzas sent since <enable/>)")
    return int(a.get("h"))


@async_test()
async def test_enable_with_resumption(xmpp, server):
    alice = await xmpp.login(xmpp.new_user("alice"), "phone", stream_management=True)
    assert alice.stream_features.find(f"{{{NS_SM}}}sm") is not None, \
        f"no <sm xmlns='{NS_SM}'/> in the features after authentication: " \
        f"{ET.tostring(alice.stream_features, encoding='unicode')}"
    for f in alice.features_seen[:-1]:  # before TLS and before SASL: not offered
        assert f.find(f"{{{NS_SM}}}sm") is None, "stream management offered before authentication"
    enabled = next(s.xml for s in alice.received if s.xml.tag == f"{{{NS_SM}}}enabled")
    assert enabled.get("resume") in ("true", "1"), ET.tostring(enabled)
    assert enabled.get("id"), "resumable <enabled/> without an id"
    assert alice.sm.sm_id == enabled.get("id")
    if enabled.get("max") is not None:
        assert int(enabled.get("max")) > 0, enabled.get("max")


@async_test()
async def test_acks_count_handled_stanzas(xmpp, server):
    alice_acc, bob_acc = xmpp.new_user("alice"), xmpp.new_user("bob")
    alice = await xmpp.login(alice_acc, "phone", stream_management=True)
    bob = await xmpp.login(bob_acc, "desk")
    first = await acknowledged(alice)  # roster get + initial presence, sent after <enable/>
    assert first >= 2, first
    for i in range(3):
        alice.send_chat(bob_acc.jid, f"counted {i}")
    await alice.roundtrip()
    assert await acknowledged(alice) == first + 4  # 3 messages + 1 iq
    # Acks never claim more than was sent.
    acks = [int(s.xml.get("h")) for s in alice.received if s.xml.tag == f"{{{NS_SM}}}a"]
    assert max(acks) <= alice.sm.seq, acks
    for i in range(3):
        await bob.wait_message(sender=alice_acc.jid, body=f"counted {i}")

    # The server asks for acks too; slixmpp answers each <r/> with its handled count.
    for i in range(12):
        bob.send_chat(f"{alice_acc.jid}/phone", f"to be acked {i}")
    await eventually(lambda: len(message_ids_from(alice, bob_acc.jid)) == 12, "12 messages at alice")
    assert any(s.xml.tag == f"{{{NS_SM}}}r" for s in alice.received), \
        "the server never requested an ack after 12 unacknowledged stanzas"


@async_test()
async def test_ack_of_more_than_was_sent_ends_the_stream(xmpp, server):
    """XEP-0198 'Acks': an 'h' higher than the number of stanzas sent is a stream error
    (undefined-condition)."""
    alice = await xmpp.login(xmpp.new_user("alice"), "phone", stream_management=True)
    alice.send_raw(f"<a xmlns='{NS_SM}' h='{alice.sm.handled + 1000}'/>")
    await alice.wait_disconnected()
    assert alice.stream_errors, "connection closed without a stream error"
    err = alice.stream_errors[-1].xml
    assert err.find(f"{{{NS_STREAMS_ERR}}}undefined-condition") is not None, ET.tostring(err)


@pytest.mark.parametrize("server_notices", [True, False], ids=["closed", "silently-dead"])
@async_test()
async def test_resumption_after_dropped_connection_loses_and_duplicates_nothing(
        xmpp, server, server_notices):
    """Messages alice handled but did not acknowledge must not come again; messages the server
    wrote into the dying connection (never read) and messages sent while alice was away must
    all arrive after <resumed/>: exactly the sent sequence, across both connections.

    closed: the socket is gone (the server sees the connection close).
    silently-dead: the server's end stays open (it has not noticed the network change) when
    alice resumes from a new connection; the server must take the session over from there."""
    alice_acc, bob_acc = xmpp.new_user("alice"), xmpp.new_user("bob")
    alice = await xmpp.login(alice_acc, "phone", stream_management=True)
    bob = await xmpp.login(bob_acc, "desk")
    to = f"{alice_acc.jid}/phone"
    sm_id = alice.sm.sm_id

    # 1. handled by alice; the last ones unacknowledged (the server asks every few stanzas)
    sent = [bob.send_chat(to, f"handled {i}", mid=f"handled-{i}") for i in range(7)]
    await eventually(lambda: len(message_ids_from(alice, bob_acc.jid)) == 7, "7 messages at alice")
    # 2. written by the server into the connection, never read by alice
    alice.stop_reading()
    sent += [bob.send_chat(to, f"in flight {i}", mid=f"in-flight-{i}") for i in range(6)]
    await bob.roundtrip()  # the server has routed them
    await asyncio.sleep(0.2)
    stanzas_sent_by_alice = alice.sm.seq
    await alice.drop_connection(server_notices=server_notices)
    assert len(message_ids_from(alice, bob_acc.jid)) == 7
    # 3. sent while alice is away
    sent += [bob.send_chat(to, f"meanwhile {i}", mid=f"meanwhile-{i}") for i in range(7)]
    await bob.roundtrip()
    await asyncio.sleep(0.2)

    resumed = await alice.resume()
    assert resumed.get("previd") == sm_id, ET.tostring(resumed)
    assert int(resumed.get("h")) == stanzas_sent_by_alice, \
        f"<resumed h='{resumed.get('h')}'/> but alice had sent {stanzas_sent_by_alice} stanzas"
    await eventually(lambda: len(message_ids_from(alice, bob_acc.jid)) >= len(sent),
                     f"all {len(sent)} messages at alice")
    await asyncio.sleep(1.0)  # room for duplicates to show up
    got = message_ids_from(alice, bob_acc.jid)
    assert got == sent, f"messages lost, duplicated or reordered across the resumption:\n" \
                        f" got  {got}\n sent {sent}"
    assert not [s for s in alice.received if s.name == "message" and s["type"] == "error"]
    assert not [s for s in bob.received if s.name == "message" and s["type"] == "error"], \
        "bob got errors for messages to a resumable session"

    # The resumed session is the same session: it still works both ways and keeps counting.
    alice.send_chat(bob_acc.jid, "back again")
    await bob.wait_message(sender=to, body="back again")
    bob.send_chat(to, "welcome back")
    await alice.wait_message(sender=bob_acc.jid, body="welcome back")
    assert str(alice.boundjid) == to
    assert await acknowledged(alice) == alice.sm.seq


async def expect_resumption_refused(client):
    with pytest.raises(AssertionError, match="resumption refused"):
        await client.resume()
    failed = next(s.xml for s in client.received if s.xml.tag == f"{{{NS_SM}}}failed")
    assert failed.find(f"{{{NS_STANZAS}}}item-not-found") is not None, ET.tostring(failed)


@async_test()
async def test_resumption_with_unknown_or_foreign_id_fails(xmpp, server):
    alice_acc, mallory_acc = xmpp.new_user("alice"), xmpp.new_user("mallory")
    alice = await xmpp.login(alice_acc, "phone", stream_management=True)
    mallory = await xmpp.login(mallory_acc, "laptop", stream_management=True)
    await mallory.drop_connection()
    mallory.sm.sm_id = "no-such-session-" + mallory.sm.sm_id
    await expect_resumption_refused(mallory)

    # alice's id, tried by another account, is refused and leaves alice's session alone
    mallory = await xmpp.login(mallory_acc, "desktop", stream_management=True)
    await alice.drop_connection()
    await mallory.drop_connection()
    mallory.sm.sm_id = alice.sm.sm_id
    await expect_resumption_refused(mallory)
    assert mallory.boundjid.bare == mallory_acc.jid
    await alice.resume()
    assert str(alice.boundjid) == f"{alice_acc.jid}/phone"
    await alice.roundtrip()


@async_test(timeout=60 + SHORT_RESUMPTION_SECONDS)
async def test_unacked_messages_of_an_expired_session_go_offline(xmpp_short_resumption,
                                                                 short_resumption_server):
    """limits.resumption_timeout_seconds = SHORT_RESUMPTION_SECONDS: the session is never
    resumed, so once it expires its unacknowledged messages are stored offline and delivered
    (with XEP-0203 delay) at the next login; acknowledged ones are not delivered again."""
    xmpp = xmpp_short_resumption
    alice_acc, bob_acc = xmpp.new_user("alice"), xmpp.new_user("bob")
    alice = await xmpp.login(alice_acc, "phone", stream_management=True)
    enabled = next(s.xml for s in alice.received if s.xml.tag == f"{{{NS_SM}}}enabled")
    if enabled.get("max") is not None:
        assert int(enabled.get("max")) <= SHORT_RESUMPTION_SECONDS, ET.tostring(enabled)
    bob = await xmpp.login(bob_acc, "desk")
    to = f"{alice_acc.jid}/phone"

    acked = [bob.send_chat(to, f"seen {i}") for i in range(3)]
    await eventually(lambda: len(message_ids_from(alice, bob_acc.jid)) == 3, "3 messages at alice")
    alice.sm.send_ack()
    await acknowledged(alice)  # answered after the server processed our <a/>
    before = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=5)
    alice.stop_reading()
    unacked = [bob.send_chat(to, f"in flight {i}") for i in range(2)]
    await bob.roundtrip()
    await alice.drop_connection()
    unacked += [bob.send_chat(to, f"meanwhile {i}") for i in range(3)]
    await bob.roundtrip()
    await asyncio.sleep(SHORT_RESUMPTION_SECONDS + 1.5)  # the session expires

    again = await xmpp.login(alice_acc, "tablet", presence=False)
    again.send_presence()
    got = [await again.wait_message(sender=bob_acc.jid) for _ in unacked]
    assert [m["id"] for m in got] == unacked, [m["body"] for m in got]
    for m in got:
        assert before <= delay_stamp(m) <= dt.datetime.now(dt.timezone.utc), delay_stamp(m)
    await again.expect_nothing(lambda s: s.name == "message" and s["id"] in acked + unacked,
                               "acknowledged message delivered again, or a duplicate", 1.0)
    assert not [s for s in bob.received if s.name == "message" and s["type"] == "error"]

    # The expired session cannot be resumed any more.
    await expect_resumption_refused(alice)
