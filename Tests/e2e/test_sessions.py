"""Resource binding (RFC 6120 §7): several resources, conflicts, server-generated resources."""
import asyncio

from xmpp_client import LoginFailed, async_test

NS_STREAMS_ERR = "urn:ietf:params:xml:ns:xmpp-streams"


@async_test()
async def test_several_resources_one_account(xmpp, server):
    alice_acc, bob_acc = xmpp.new_user("alice"), xmpp.new_user("bob")
    resources = ["desk", "phone", "平板"]
    alices = {r: await xmpp.login(alice_acc, r) for r in resources}
    assert {c.boundjid.full for c in alices.values()} == {f"{alice_acc.jid}/{r}" for r in resources}
    bob = await xmpp.login(bob_acc, "desk")
    for r in resources:
        bob.send_message(mto=f"{alice_acc.jid}/{r}", mbody=f"for {r}", mtype="chat")
    for r, c in alices.items():
        await c.wait_message(sender=bob_acc.jid, body=f"for {r}")
    await asyncio.sleep(0.3)
    for r, c in alices.items():
        bodies = [s["body"] for s in c.received if s.name == "message"]
        assert bodies == [f"for {r}"], f"{r} got {bodies}"


@async_test()
async def test_resource_conflict(xmpp, server):
    """Binding a resource that is in use: RFC 6120 §7.7.2.2 allows the server to
    (1) terminate the old session with a <conflict/> stream error and bind the new one,
    (2) refuse the new bind with a <conflict/> iq error, or
    (3) bind the new session to a different, server-chosen resource."""
    alice_acc = xmpp.new_user("alice")
    old = await xmpp.login(alice_acc, "same")
    new = xmpp.client(alice_acc, "same")
    try:
        await new.start(server.host, server.c2s_port)
        bind_failed = False
    except LoginFailed:
        bind_failed = True

    if bind_failed:  # (2)
        err = [s for s in new.received if s.name == "iq" and s["type"] == "error"]
        assert err and err[-1].xml.find(
            "{jabber:client}error/{urn:ietf:params:xml:ns:xmpp-stanzas}conflict") is not None, \
            f"bind refused without <conflict/>: {new.received}"
        behaviour = "refused"
    elif new.boundjid.resource == "same":  # (1)
        await old.wait_disconnected()
        conds = [e.xml.find(f"{{{NS_STREAMS_ERR}}}conflict") for e in old.stream_errors]
        assert any(c is not None for c in conds), "old session closed without <conflict/>"
        behaviour = "replaced"
    else:  # (3)
        assert new.boundjid.resource, "no resource bound"
        assert new.boundjid.bare == alice_acc.jid
        behaviour = "renamed"

    # Whatever happened, the surviving session(s) work.
    bob_acc = xmpp.new_user("bob")
    bob = await xmpp.login(bob_acc, "desk")
    survivors = {"refused": [old], "replaced": [new], "renamed": [old, new]}[behaviour]
    for i, c in enumerate(survivors):
        bob.send_message(mto=c.boundjid.full, mbody=f"still there {i}?", mtype="chat")
        await c.wait_message(sender=bob_acc.jid, body=f"still there {i}?")
    print(f"resource conflict behaviour of {server.kind}: {behaviour}")


@async_test()
async def test_server_generated_resource(xmpp, server):
    alice_acc = xmpp.new_user("alice")
    a = await xmpp.login(alice_acc)  # no resource requested
    b = await xmpp.login(alice_acc)
    for c in (a, b):
        assert c.boundjid.bare == alice_acc.jid
        assert c.boundjid.resource, "server did not generate a resource"
    assert a.boundjid.resource != b.boundjid.resource, "two sessions got the same generated resource"
    # the generated full JIDs are routable
    a.send_message(mto=b.boundjid.full, mbody="hi other me", mtype="chat")
    await b.wait_message(sender=a.boundjid.full, body="hi other me")
