"""Personal eventing (XEP-0163) with the payloads clients keep there: avatar metadata
(XEP-0084, presence access), bookmarks (XEP-0402, whitelist: owner only) and the OMEMO device
list (XEP-0384, open access)."""
import xml.etree.ElementTree as ET

import pytest

from conftest import server_kind
from xmpp_client import NS_CLIENT, async_test, error_condition, subscribe_both

pytestmark = [pytest.mark.xep("XEP-0163"),
              pytest.mark.skipif(server_kind() != "switchboard",
                                 reason="the suite's Prosody runs without mod_pep")]

NS_PUBSUB = "http://jabber.org/protocol/pubsub"
NS_EVENT = NS_PUBSUB + "#event"
NS_ERRORS = NS_PUBSUB + "#errors"
NS_DATA = "jabber:x:data"
AVATAR = "urn:xmpp:avatar:metadata"
BOOKMARKS = "urn:xmpp:bookmarks:1"
DEVICES = "eu.siacs.conversations.axolotl.devicelist"
NS_OMEMO = "eu.siacs.conversations.axolotl"


def publish_iq(client, node: str, item_id: str, payload: str, **options: str):
    """<publish/> of one item; ``options``: pubsub#… publish-options (``access_model=…``)."""
    iq = client.Iq(stype="set")
    pubsub = ET.Element(f"{{{NS_PUBSUB}}}pubsub")
    item = ET.SubElement(ET.SubElement(pubsub, f"{{{NS_PUBSUB}}}publish", {"node": node}),
                         f"{{{NS_PUBSUB}}}item", {"id": item_id})
    item.append(ET.fromstring(payload))
    if options:
        form = ET.SubElement(ET.SubElement(pubsub, f"{{{NS_PUBSUB}}}publish-options"),
                             f"{{{NS_DATA}}}x", {"type": "submit"})
        values = {"FORM_TYPE": f"{NS_PUBSUB}#publish-options",
                  **{f"pubsub#{k}": v for k, v in options.items()}}
        for var, value in values.items():
            field = ET.SubElement(form, f"{{{NS_DATA}}}field", {"var": var})
            ET.SubElement(field, f"{{{NS_DATA}}}value").text = value
    iq.append(pubsub)
    return iq


def items_iq(client, owner: str, node: str):
    iq = client.Iq(stype="get")
    iq["to"] = owner
    pubsub = ET.Element(f"{{{NS_PUBSUB}}}pubsub")
    ET.SubElement(pubsub, f"{{{NS_PUBSUB}}}items", {"node": node})
    iq.append(pubsub)
    return iq


def items_of(result) -> list[ET.Element]:
    return result.xml.findall(f"{{{NS_PUBSUB}}}pubsub/{{{NS_PUBSUB}}}items/{{{NS_PUBSUB}}}item")


async def login_interested(xmpp, server, account, resource: str, *nodes: str):
    """Log in as a client that wants events for ``nodes``: its XEP-0115 caps advertise
    ``NODE+notify`` (XEP-0163 §4.3.3: the filter a PEP service applies)."""
    client = xmpp.client(account, resource)
    client.register_plugin("xep_0115")
    await client.start(server.host, server.c2s_port)
    for node in nodes:
        client.plugin["xep_0030"].add_feature(f"{node}+notify", jid=client.boundjid)
    await client.plugin["xep_0115"].update_caps(broadcast=False)
    await client.fetch_roster()
    await client.announce()
    return client


def event_for(node: str, owner: str):
    """Predicate: a pubsub event message from ``owner`` about ``node``."""
    def match(st):
        if st.name != "message" or str(st["from"]) != owner:
            return False
        items = st.xml.find(f"{{{NS_EVENT}}}event/{{{NS_EVENT}}}items")
        return items is not None and items.get("node") == node
    return match


@async_test(timeout=30)
async def test_avatar_metadata_notifies_contacts_only(xmpp, server):
    alice_acc, bob_acc, carol_acc = xmpp.new_user("alice"), xmpp.new_user("bob"), xmpp.new_user("carol")
    alice = await login_interested(xmpp, server, alice_acc, "desk", AVATAR)
    bob = await login_interested(xmpp, server, bob_acc, "pc", AVATAR)
    carol = await login_interested(xmpp, server, carol_acc, "pc", AVATAR)
    await subscribe_both(alice, bob)

    payload = (f"<metadata xmlns='{AVATAR}'><info id='1a2b3c' bytes='4242' type='image/png' "
               f"width='64' height='64'/></metadata>")
    res = await alice.iq(publish_iq(alice, AVATAR, "1a2b3c", payload))
    published = res.xml.find(f"{{{NS_PUBSUB}}}pubsub/{{{NS_PUBSUB}}}publish/{{{NS_PUBSUB}}}item")
    assert published is not None and published.get("id") == "1a2b3c", res

    event = await bob.wait_for(event_for(AVATAR, alice_acc.jid), "avatar metadata event")
    info = event.xml.find(f"{{{NS_EVENT}}}event/{{{NS_EVENT}}}items/{{{NS_EVENT}}}item/{{{AVATAR}}}metadata/{{{AVATAR}}}info")
    assert info is not None and info.get("id") == "1a2b3c" and info.get("bytes") == "4242", event
    await alice.wait_for(event_for(AVATAR, alice_acc.jid), "avatar event to the owner")

    # default access model 'presence': the contact reads it, the stranger neither gets the
    # event nor may read the node
    assert [i.get("id") for i in items_of(await bob.iq(items_iq(bob, alice_acc.jid, AVATAR)))] == ["1a2b3c"]
    denied = await carol.iq_error(items_iq(carol, alice_acc.jid, AVATAR))
    assert error_condition(denied) in ("not-authorized", "forbidden", "not-allowed"), denied
    await carol.expect_nothing(event_for(AVATAR, alice_acc.jid), "avatar event to a stranger", 0.3)

    # a new device of the contact gets the last item at initial presence
    phone = await login_interested(xmpp, server, bob_acc, "phone", AVATAR)
    await phone.wait_for(event_for(AVATAR, alice_acc.jid), "last avatar item at login")


@async_test(timeout=30)
async def test_bookmarks_are_owner_only(xmpp, server):
    alice_acc, bob_acc = xmpp.new_user("alice"), xmpp.new_user("bob")
    alice = await login_interested(xmpp, server, alice_acc, "desk", BOOKMARKS)
    laptop = await login_interested(xmpp, server, alice_acc, "laptop", BOOKMARKS)
    bob = await login_interested(xmpp, server, bob_acc, "pc", BOOKMARKS)
    await subscribe_both(alice, bob)

    rooms = {"研发部@conference.example.test": "研发部周会", "ops@conference.example.test": "Ops"}
    for jid, name in rooms.items():
        payload = (f"<conference xmlns='{BOOKMARKS}' name='{name}' autojoin='true'>"
                   f"<nick>爱丽丝</nick></conference>")
        await alice.iq(publish_iq(alice, BOOKMARKS, jid, payload,
                                  persist_items="true", access_model="whitelist", max_items="max"))
    # the owner's other device hears of it, the contact does not
    await laptop.wait_for(event_for(BOOKMARKS, alice_acc.jid), "bookmark event to the owner's other device")
    await bob.expect_nothing(event_for(BOOKMARKS, alice_acc.jid), "bookmark event to a contact", 0.3)

    stored = items_of(await alice.iq(items_iq(alice, alice_acc.jid, BOOKMARKS)))
    got = {i.get("id"): i.find(f"{{{BOOKMARKS}}}conference") for i in stored}
    assert set(got) == set(rooms), [ET.tostring(i, encoding="unicode") for i in stored]
    for jid, name in rooms.items():
        assert got[jid].get("name") == name and got[jid].findtext(f"{{{BOOKMARKS}}}nick") == "爱丽丝"

    denied = await bob.iq_error(items_iq(bob, alice_acc.jid, BOOKMARKS))
    assert error_condition(denied) in ("not-authorized", "forbidden", "not-allowed"), denied
    assert "conference" not in str(denied)
    # nobody but the owner may publish to the owner's PEP service
    err = await bob.iq_error(_publish_to(bob, alice_acc.jid))
    assert error_condition(err) in ("forbidden", "not-allowed"), err


def _publish_to(client, owner: str):
    iq = publish_iq(client, BOOKMARKS, "evil@conference.example.test", f"<conference xmlns='{BOOKMARKS}'/>")
    iq["to"] = owner
    return iq


@async_test(timeout=30)
async def test_open_omemo_device_list_is_readable_by_a_stranger(xmpp, server):
    alice_acc, carol_acc = xmpp.new_user("alice"), xmpp.new_user("carol")
    alice = await xmpp.login(alice_acc, "desk")
    carol = await xmpp.login(carol_acc, "pc")  # no subscription with alice at all
    devices = f"<list xmlns='{NS_OMEMO}'><device id='1234567'/><device id='89'/></list>"
    await alice.iq(publish_iq(alice, DEVICES, "current", devices, access_model="open"))

    res = await carol.iq(items_iq(carol, alice_acc.jid, DEVICES))
    [item] = items_of(res)
    assert item.get("id") == "current"
    ids = [d.get("id") for d in item.findall(f"{{{NS_OMEMO}}}list/{{{NS_OMEMO}}}device")]
    assert ids == ["1234567", "89"], ET.tostring(item, encoding="unicode")

    # publish-options are preconditions for an existing node: another access model is refused
    err = await alice.iq_error(publish_iq(alice, DEVICES, "current", f"<list xmlns='{NS_OMEMO}'/>",
                                          access_model="whitelist"))
    assert err.xml.find(f"{{{NS_CLIENT}}}error/{{{NS_ERRORS}}}precondition-not-met") is not None, err
    # ...and left the node as it was
    [item] = items_of(await carol.iq(items_iq(carol, alice_acc.jid, DEVICES)))
    assert len(item.findall(f"{{{NS_OMEMO}}}list/{{{NS_OMEMO}}}device")) == 2
