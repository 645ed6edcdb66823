"""Message archive management (XEP-0313, urn:xmpp:mam:2) with result set management paging
(XEP-0059) and unique stanza ids (XEP-0359, urn:xmpp:sid:0)."""
import asyncio
import datetime as dt
import time
import xml.etree.ElementTree as ET
from typing import NamedTuple

import pytest

from xmpp_client import NS_MAM, NS_RSM, NS_SID, async_test, error_condition, stanza_ids

pytestmark = pytest.mark.xep("XEP-0313")

N = 7  # messages in the conversation
PAGE = 3


class Sent(NamedTuple):
    mid: str
    body: str
    recipient: str  # bare JID


async def converse(alice, bob, n: int = N) -> list[Sent]:
    """alice and bob take turns (alice first), each message delivered before the next is sent,
    so the archive order is the sending order. The received messages stay in the clients'
    ``received``."""
    sent = []
    for i in range(n):
        sender, recipient = (alice, bob) if i % 2 == 0 else (bob, alice)
        body = f"{i}: {'ping' if i % 2 == 0 else 'pong'} 消息"
        mid = sender.send_chat(recipient.boundjid.bare, body)
        await recipient.wait_message(sender=sender.boundjid.bare, body=body)
        sent.append(Sent(mid, body, recipient.boundjid.bare))
    return sent


def ids(results) -> list[str]:
    return [r.message_id for r in results]


def rsm(fin: ET.Element, name: str) -> str | None:
    return fin.findtext(f"{{{NS_RSM}}}set/{{{NS_RSM}}}{name}")


def complete(fin: ET.Element) -> bool:
    return fin.get("complete") in ("true", "1")


@async_test()
async def test_disco_advertises_archive_and_stanza_ids(xmpp, server):
    alice_acc = xmpp.new_user("alice")
    alice = await xmpp.login(alice_acc, "desk")
    account = await alice.disco_features(alice_acc.jid)
    assert NS_MAM in account, f"disco#info on the bare JID lacks {NS_MAM}: {sorted(account)}"
    domain = await alice.disco_features(server.domain)
    assert NS_SID in domain, f"server disco#info lacks {NS_SID}: {sorted(domain)}"


@async_test()
async def test_both_archives_hold_the_conversation_in_order(xmpp, server):
    alice_acc, bob_acc, carol_acc = (xmpp.new_user(n) for n in ("alice", "bob", "carol"))
    alice = await xmpp.login(alice_acc, "desk")
    bob = await xmpp.login(bob_acc, "desk")
    carol = await xmpp.login(carol_acc, "desk")
    start = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=5)
    sent = await converse(alice, bob)
    expected = [m.mid for m in sent]
    # carol's message to alice: in alice's archive, filtered out by with=bob
    carol_mid = carol.send_chat(alice_acc.jid, "carol here")
    await alice.wait_message(sender=carol_acc.jid, body="carol here")

    for me, peer in ((alice, bob_acc), (bob, alice_acc)):
        results, fin = await me.mam_query(with_jid=peer.jid)
        assert ids(results) == expected, f"{me.boundjid.bare}: archive {ids(results)} != sent {expected}"
        assert complete(fin), ET.tostring(fin)
        assert len(set(r.archive_id for r in results)) == N, "archive ids are not unique"
        assert rsm(fin, "first") == results[0].archive_id and rsm(fin, "last") == results[-1].archive_id
        assert [r.body for r in results] == [m.body for m in sent]
        for r in results:
            assert start <= r.stamp <= dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=5), r.stamp

    everything, fin = await alice.mam_query()
    assert ids(everything) == expected + [carol_mid] and complete(fin), ids(everything)
    only_carol, fin = await alice.mam_query(with_jid=carol_acc.jid)
    assert ids(only_carol) == [carol_mid] and complete(fin), ids(only_carol)
    bobs, _ = await bob.mam_query(with_jid=carol_acc.jid)
    assert bobs == [], "bob's archive holds alice's conversation with carol"


@async_test()
async def test_paging_forward_and_backward(xmpp, server):
    alice_acc, bob_acc = xmpp.new_user("alice"), xmpp.new_user("bob")
    alice = await xmpp.login(alice_acc, "desk")
    bob = await xmpp.login(bob_acc, "desk")
    expected = [m.mid for m in await converse(alice, bob)]

    # forward: pages of 3 with <after/>; only the last page is complete
    pages, after = [], None
    while True:
        results, fin = await alice.mam_query(with_jid=bob_acc.jid, max_items=PAGE, after=after)
        pages.append(ids(results))
        if results:
            assert rsm(fin, "first") == results[0].archive_id, ET.tostring(fin)
            assert rsm(fin, "last") == results[-1].archive_id, ET.tostring(fin)
        if complete(fin):
            break
        assert len(results) == PAGE, f"incomplete page of {len(results)}: {ET.tostring(fin)}"
        assert len(pages) <= N, "paging does not end"
        after = rsm(fin, "last")
    assert pages == [expected[0:3], expected[3:6], expected[6:7]], pages

    # backward: <before/> is the last page, then <before>first</before>; complete at the start
    pages, before = [], True
    while True:
        results, fin = await alice.mam_query(with_jid=bob_acc.jid, max_items=PAGE, before=before)
        pages.append(ids(results))
        if complete(fin):
            break
        assert len(results) == PAGE, f"incomplete page of {len(results)}: {ET.tostring(fin)}"
        assert len(pages) <= N, "paging does not end"
        before = rsm(fin, "first")
    assert pages == [expected[4:7], expected[1:4], expected[0:1]], pages


@async_test()
async def test_delivered_messages_carry_the_archive_id(xmpp, server):
    """XEP-0359: the recipient's server stamps <stanza-id by='recipient bare JID'/>; its id is
    the id of that message in the recipient's archive (XEP-0313, 'Communicating the archive ID')."""
    alice_acc, bob_acc = xmpp.new_user("alice"), xmpp.new_user("bob")
    alice = await xmpp.login(alice_acc, "desk")
    bob = await xmpp.login(bob_acc, "desk")
    sent = await converse(alice, bob)
    for me in (alice, bob):
        archive = {r.message_id: r.archive_id for r in (await me.mam_query())[0]}
        delivered = [m for m in me.received if m.name == "message" and m["body"]]
        assert [m["id"] for m in delivered] == [m.mid for m in sent if m.recipient == me.boundjid.bare]
        for m in delivered:
            sids = stanza_ids(m, me.boundjid.bare)
            assert len(sids) == 1, f"expected one stanza-id by {me.boundjid.bare}: {m}"
            assert sids[0] == archive[m["id"]], \
                f"stanza-id {sids[0]} != archive id {archive[m['id']]} of message {m['id']}"


@async_test()
async def test_archive_ids_are_opaque(xmpp, server):
    """XEP-0313 'Message archives': archive UIDs MUST be unpredictable; XEP-0359 'Security
    Considerations': nobody may infer anything from a stanza id. An id that is a clock reading
    tells when the message was archived, and the next ids can be guessed from it."""
    alice_acc, bob_acc = xmpp.new_user("alice"), xmpp.new_user("bob")
    alice = await xmpp.login(alice_acc, "desk")
    bob = await xmpp.login(bob_acc, "desk")
    await converse(alice, bob, 3)
    results, _ = await alice.mam_query()
    now = time.time()
    for r in results:
        if r.archive_id.isdigit():
            for unit, name in ((1, "s"), (1e3, "ms"), (1e6, "µs"), (1e9, "ns")):
                assert abs(int(r.archive_id) / unit - now) > 86400, \
                    f"archive id {r.archive_id} is the current Unix time in {name}"


@async_test()
async def test_forged_stanza_id_is_replaced(xmpp, server):
    """XEP-0359 business rule 3: a <stanza-id/> claiming to be from the recipient's server, put there by the
    sender, must not reach the recipient."""
    alice_acc, bob_acc = xmpp.new_user("alice"), xmpp.new_user("bob")
    alice = await xmpp.login(alice_acc, "desk")
    bob = await xmpp.login(bob_acc, "desk")
    forged = ET.Element(f"{{{NS_SID}}}stanza-id", {"by": alice_acc.jid, "id": "forged-id"})
    bob.send_chat(alice_acc.jid, "trust me", payload=[forged])
    m = await alice.wait_message(sender=bob_acc.jid, body="trust me")
    sids = stanza_ids(m, alice_acc.jid)
    assert "forged-id" not in sids and len(sids) == 1, m


@async_test()
async def test_time_filters(xmpp, server):
    """'start' and 'end' (XEP-0082 timestamps) MUST be supported; both bounds are inclusive."""
    alice_acc, bob_acc = xmpp.new_user("alice"), xmpp.new_user("bob")
    alice = await xmpp.login(alice_acc, "desk")
    bob = await xmpp.login(bob_acc, "desk")
    early = [m.mid for m in await converse(alice, bob, 2)]
    await asyncio.sleep(1.1)
    cut = dt.datetime.now(dt.timezone.utc)
    await asyncio.sleep(1.1)
    late = [m.mid for m in await converse(alice, bob, 2)]
    for stamp in (cut.replace(microsecond=0) + dt.timedelta(seconds=1), cut):  # whole and fractional seconds
        results, fin = await alice.mam_query(start=stamp)
        assert ids(results) == late and complete(fin), (stamp, ids(results))
        results, fin = await alice.mam_query(end=stamp)
        assert ids(results) == early and complete(fin), (stamp, ids(results))
    results, _ = await alice.mam_query(start=cut - dt.timedelta(hours=1), end=cut + dt.timedelta(hours=1))
    assert ids(results) == early + late


@async_test()
async def test_query_form_lists_the_mandatory_fields(xmpp, server):
    """XEP-0313 'Retrieving form fields': an iq 'get' with an empty <query/> returns the query
    form, which MUST include the mandatory fields (with, start, end), none marked required."""
    alice = await xmpp.login(xmpp.new_user("alice"), "desk")
    form = await alice.result(alice.plugin["xep_0313"].get_fields(), "MAM form")
    fields = form.get_fields()
    assert {"FORM_TYPE", "with", "start", "end"} <= set(fields), sorted(fields)
    assert fields["FORM_TYPE"]["value"] in (NS_MAM, [NS_MAM]), fields["FORM_TYPE"]["value"]
    assert not [f for f in fields.values() if f["required"]], "fields marked <required/>"


@async_test()
async def test_page_after_or_before_an_unknown_id_is_item_not_found(xmpp, server):
    """XEP-0313 'Requesting pages': an <after/> or <before/> UID that is not in the archive MUST give
    item-not-found — also a UID that exists in someone else's archive."""
    alice_acc, bob_acc, carol_acc = (xmpp.new_user(n) for n in ("alice", "bob", "carol"))
    alice = await xmpp.login(alice_acc, "desk")
    bob = await xmpp.login(bob_acc, "desk")
    carol = await xmpp.login(carol_acc, "desk")
    await converse(alice, bob, 3)
    await converse(carol, bob, 1)
    own = [r.archive_id for r in (await alice.mam_query())[0]]
    (carols,), _ = await carol.mam_query()
    assert carols.archive_id not in own
    unknown = {"never issued": "1" + max(own),  # numeric and larger than any, like a real id
               "in carol's archive": carols.archive_id,
               "not an id at all": "no-such-id"}
    wrong = []
    for what, uid in unknown.items():
        for direction in ("after", "before"):
            try:
                res = await alice.iq(alice.mam_query_iq(max_items=PAGE, **{direction: uid}))
            except AssertionError as e:  # an iq error
                if "item-not-found" not in str(e):
                    wrong.append(f"<{direction}>{uid}</{direction}> ({what}): {e}")
            else:
                wrong.append(f"<{direction}>{uid}</{direction}> ({what}): result {res}")
    assert not wrong, "no item-not-found for:\n" + "\n".join(wrong)
    # known ids still work
    results, _ = await alice.mam_query(after=own[0])
    assert [r.archive_id for r in results] == own[1:]


@async_test()
async def test_archive_is_private(xmpp, server):
    alice_acc, bob_acc = xmpp.new_user("alice"), xmpp.new_user("bob")
    alice = await xmpp.login(alice_acc, "desk")
    bob = await xmpp.login(bob_acc, "desk")
    await converse(alice, bob, 2)
    err = await bob.iq_error(bob.mam_query_iq(to=alice_acc.jid))
    assert error_condition(err) in ("forbidden", "not-allowed", "service-unavailable"), err
    leaked = [s for s in bob.received
              if s.name == "message" and s.xml.find(f"{{{NS_MAM}}}result") is not None]
    assert not leaked, f"bob received results from alice's archive: {leaked}"


@pytest.mark.xep("XEP-0280")
@async_test()
async def test_each_message_archived_once_despite_copies(xmpp, server):
    """XEP-0313 'User Archives': copies made by carbons or by delivery to several resources are stored
    once per archive."""
    alice_acc, bob_acc = xmpp.new_user("alice"), xmpp.new_user("bob")
    alice_desk = await xmpp.login(alice_acc, "desk")
    alice_phone = await xmpp.login(alice_acc, "phone")
    bob_desk = await xmpp.login(bob_acc, "desk")
    bob_phone = await xmpp.login(bob_acc, "phone")
    for c in (alice_desk, alice_phone, bob_desk, bob_phone):
        await c.enable_carbons()
    to_bare = bob_desk.send_chat(alice_acc.jid, "to all of alice")
    await alice_desk.wait_message(sender=bob_acc.jid, body="to all of alice")
    to_full = alice_desk.send_chat(f"{bob_acc.jid}/phone", "to bob's phone")
    await bob_phone.wait_message(sender=alice_acc.jid, body="to bob's phone")
    for c in (alice_desk, bob_phone):
        results, _ = await c.mam_query()
        assert ids(results) == [to_bare, to_full], f"{c.boundjid.bare}: {ids(results)}"


@pytest.mark.xep("XEP-0280")
@async_test()
async def test_no_stanza_ids_of_other_archives(xmpp, server):
    """XEP-0313 'Communicating the archive ID': the server MUST NOT include a <stanza-id/> in
    messages to a JID that has no access to that archive. Alice must not learn bob's archive
    ids, neither in the sent carbon of her message to bob nor in her own archive."""
    alice_acc, bob_acc = xmpp.new_user("alice"), xmpp.new_user("bob")
    desk = await xmpp.login(alice_acc, "desk")
    phone = await xmpp.login(alice_acc, "phone")
    bob = await xmpp.login(bob_acc, "desk")
    for c in (desk, phone):
        await c.enable_carbons()
    mid = desk.send_chat(bob_acc.jid, "hello bob")
    await bob.wait_message(sender=alice_acc.jid, body="hello bob")
    _, sent = await phone.wait_carbon("sent", "hello bob")
    assert stanza_ids(sent, bob_acc.jid) == [], \
        f"sent carbon carries bob's archive id: {ET.tostring(sent, encoding='unicode')}"
    (archived,), _ = await desk.mam_query(with_jid=bob_acc.jid)
    assert archived.message_id == mid
    assert stanza_ids(archived.message, bob_acc.jid) == [], \
        f"alice's archive carries bob's archive id: {ET.tostring(archived.message, encoding='unicode')}"


@pytest.mark.xep("XEP-0280")
@async_test()
async def test_sent_carbon_carries_own_archive_id(xmpp, server):
    """XEP-0313 'Communicating the archive ID': the server SHOULD include its <stanza-id/> (the
    sender's archive id) in the forwarded message of a sent carbon, so the sender's other
    devices can sync by it."""
    alice_acc, bob_acc = xmpp.new_user("alice"), xmpp.new_user("bob")
    desk = await xmpp.login(alice_acc, "desk")
    phone = await xmpp.login(alice_acc, "phone")
    bob = await xmpp.login(bob_acc, "desk")
    for c in (desk, phone):
        await c.enable_carbons()
    desk.send_chat(bob_acc.jid, "synced")
    await bob.wait_message(sender=alice_acc.jid, body="synced")
    _, sent = await phone.wait_carbon("sent", "synced")
    (archived,), _ = await phone.mam_query(with_jid=bob_acc.jid)
    assert stanza_ids(sent, alice_acc.jid) == [archived.archive_id], ET.tostring(sent, encoding="unicode")


@async_test()
async def test_preferences_choose_what_enters_ones_own_archive(xmpp, server):
    """XEP-0313 §6: default never with bob always archived; carol's messages stay out of alice's
    archive (carol's own archive is hers to decide)."""
    alice_acc, bob_acc, carol_acc = (xmpp.new_user(n) for n in ("alice", "bob", "carol"))
    alice = await xmpp.login(alice_acc, "desk")
    bob = await xmpp.login(bob_acc, "desk")
    carol = await xmpp.login(carol_acc, "desk")
    iq = alice.make_iq_set()
    prefs = ET.SubElement(iq.xml, f"{{{NS_MAM}}}prefs", {"default": "never"})
    ET.SubElement(ET.SubElement(prefs, f"{{{NS_MAM}}}always"), f"{{{NS_MAM}}}jid").text = bob_acc.jid
    ET.SubElement(prefs, f"{{{NS_MAM}}}never")
    result = await iq.send()
    assert result.xml.find(f"{{{NS_MAM}}}prefs").get("default") == "never"
    query = alice.make_iq_get()
    query.append(ET.Element(f"{{{NS_MAM}}}prefs"))
    answer = await query.send()
    assert answer.xml.findtext(f"{{{NS_MAM}}}prefs/{{{NS_MAM}}}always/{{{NS_MAM}}}jid") == bob_acc.jid

    bob_mid = bob.send_chat(alice_acc.jid, "from bob")
    await alice.wait_message(sender=bob_acc.jid, body="from bob")
    carol.send_chat(alice_acc.jid, "from carol")
    await alice.wait_message(sender=carol_acc.jid, body="from carol")
    results, fin = await alice.mam_query()
    assert ids(results) == [bob_mid] and complete(fin), [r.body for r in results]
    carols, _ = await carol.mam_query()
    assert [r.body for r in carols] == ["from carol"]
