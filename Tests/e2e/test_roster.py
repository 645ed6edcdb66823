"""Roster management (RFC 6121 §2): get / set / remove, pushes to every interested resource,
roster versioning."""
import xml.etree.ElementTree as ET

import pytest

from xmpp_client import NS_ROSTER, async_test

NS_ROSTERVER = "urn:xmpp:features:rosterver"


def groups(item):
    return sorted(g.text for g in item.findall(f"{{{NS_ROSTER}}}group"))


def push_item(push, jid):
    q = push.xml.find(f"{{{NS_ROSTER}}}query")
    return next(i for i in q.findall(f"{{{NS_ROSTER}}}item") if i.get("jid") == jid)


@async_test()
async def test_roster_set_get_remove_with_push_to_other_resource(xmpp, server):
    alice, bob = xmpp.new_user("alice"), xmpp.new_user("bob")
    desk = await xmpp.login(alice, "desk")
    phone = await xmpp.login(alice, "phone")
    items, _ = await desk.fetch_roster()
    assert items == {}, f"new account has a non-empty roster: {list(items)}"

    await desk.roster_set(bob.jid, name="王经理 Bob", groups=["研发部", "Friends"])
    for c in (desk, phone):  # every interested resource, the requesting one included
        push = await c.wait_roster_push(bob.jid)
        assert push["from"].bare in ("", alice.jid), f"push from a foreign JID: {push}"
        item = push_item(push, bob.jid)
        assert item.get("name") == "王经理 Bob"
        assert item.get("subscription") == "none"
        assert groups(item) == ["Friends", "研发部"]

    items, _ = await phone.fetch_roster()
    assert list(items) == [bob.jid]
    assert items[bob.jid].get("name") == "王经理 Bob"
    assert items[bob.jid].get("subscription") == "none"
    assert groups(items[bob.jid]) == ["Friends", "研发部"]

    # update: rename, one group
    await phone.roster_set(bob.jid, name="Bob", groups=["研发部"])
    for c in (desk, phone):
        push = await c.wait_roster_push(bob.jid)
        assert push_item(push, bob.jid).get("name") == "Bob"
        assert groups(push_item(push, bob.jid)) == ["研发部"]

    await phone.roster_set(bob.jid, subscription="remove")
    for c in (desk, phone):
        await c.wait_roster_push(bob.jid, subscription="remove")
    items, _ = await desk.fetch_roster()
    assert items == {}


@async_test()
async def test_roster_versioning(xmpp, server):
    alice, bob, carol = xmpp.new_user("alice"), xmpp.new_user("bob"), xmpp.new_user("carol")
    c = await xmpp.login(alice, "desk", roster=False)
    if not any(f.find(f"{{{NS_ROSTERVER}}}ver") is not None for f in c.features_seen):
        pytest.skip(f"{server.kind} does not advertise roster versioning")

    async def get(ver):
        iq = c.Iq(stype="get")
        iq.append(ET.Element(f"{{{NS_ROSTER}}}query", {"ver": ver}))
        return (await c.iq(iq)).xml.find(f"{{{NS_ROSTER}}}query")

    async def add(jid):
        await c.roster_set(jid)
        push = await c.wait_roster_push(jid)
        return push.xml.find(f"{{{NS_ROSTER}}}query").get("ver")

    await get("")  # become an interested resource (RFC 6121 §2.1.6) so pushes arrive
    await add(bob.jid)
    q = await get("")
    assert q is not None, "ver='' must return the full roster"
    v0 = q.get("ver")
    assert v0, "the roster result carries no ver attribute although rosterver is advertised"
    assert [i.get("jid") for i in q] == [bob.jid]

    # Up to date: an empty result (no <query/>), RFC 6121 §2.6.3.
    q = await get(v0)
    assert q is None or len(q) == 0, "roster unchanged since ver, but items were returned"

    v1 = await add(carol.jid)
    assert v1 and v1 != v0, f"roster push must carry a new ver (was {v0!r}, push has {v1!r})"
    q = await get(v1)
    assert q is None or len(q) == 0, "roster unchanged since ver, but items were returned"

    # Stale version: either the full roster with the current ver, or an empty result
    # followed by pushes for what changed since.
    q = await get(v0)
    if q is not None and len(q):
        assert q.get("ver") == v1
        assert {i.get("jid") for i in q} == {bob.jid, carol.jid}
    else:
        await c.wait_roster_push(carol.jid)
