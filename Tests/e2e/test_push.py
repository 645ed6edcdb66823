"""Push notifications (XEP-0357, urn:xmpp:push:0): a phone registers an app server; messages
that arrive while the phone sleeps (connection lost, XEP-0198 session waiting for resumption)
or is offline make the server publish a body-free summary to the app server's node."""
import asyncio
import xml.etree.ElementTree as ET

import pytest

from conftest import metric, metrics, server_kind
from xmpp_client import async_test

pytestmark = [pytest.mark.xep("XEP-0357"),
              pytest.mark.skipif(server_kind() != "switchboard",
                                 reason="the suite's Prosody runs without mod_cloud_notify")]

NS_PUSH = "urn:xmpp:push:0"
NS_PUBSUB = "http://jabber.org/protocol/pubsub"
NS_DATA = "jabber:x:data"
SECRET = "s3cr3t-令牌"


def push_iq(client, action: str, app_server: str, node: str, secret: str | None = None):
    iq = client.Iq(stype="set")
    el = ET.Element(f"{{{NS_PUSH}}}{action}", {"jid": app_server, "node": node})
    if secret is not None:
        form = ET.SubElement(el, f"{{{NS_DATA}}}x", {"type": "submit"})
        for var, value in (("FORM_TYPE", f"{NS_PUBSUB}#publish-options"), ("secret", secret)):
            field = ET.SubElement(form, f"{{{NS_DATA}}}field", {"var": var})
            ET.SubElement(field, f"{{{NS_DATA}}}value").text = value
    iq.append(el)
    return iq


def disable_all(client, app_server: str):
    """<disable/> without a node: every registration with ``app_server`` (XEP-0357 §6)."""
    iq = client.Iq(stype="set")
    iq.append(ET.Element(f"{{{NS_PUSH}}}disable", {"jid": app_server}))
    return iq


def is_push(st) -> bool:
    return st.name == "iq" and st["type"] == "set" and st.xml.find(f"{{{NS_PUBSUB}}}pubsub/{{{NS_PUBSUB}}}publish") is not None


def form_fields(form: ET.Element) -> dict[str, str]:
    return {f.get("var"): f.findtext(f"{{{NS_DATA}}}value") for f in form.findall(f"{{{NS_DATA}}}field")}


def check_push(push, user: str, node: str, sender: str, secret_body: str):
    assert str(push["from"]) == user, push
    publish = push.xml.find(f"{{{NS_PUBSUB}}}pubsub/{{{NS_PUBSUB}}}publish")
    assert publish.get("node") == node, push
    summary = publish.find(f"{{{NS_PUBSUB}}}item/{{{NS_PUSH}}}notification/{{{NS_DATA}}}x")
    assert summary is not None, push
    fields = form_fields(summary)
    assert fields.get("FORM_TYPE") == "urn:xmpp:push:summary", fields
    assert int(fields.get("message-count") or 0) >= 1, fields
    assert fields.get("last-message-sender") == sender, fields
    assert "last-message-body" not in fields, fields
    assert secret_body not in ET.tostring(push.xml, encoding="unicode"), push
    options = push.xml.find(f"{{{NS_PUBSUB}}}pubsub/{{{NS_PUBSUB}}}publish-options/{{{NS_DATA}}}x")
    assert options is not None and form_fields(options).get("secret") == SECRET, push


async def drop_and_wait_detached(session, server, within: float = 10.0):
    """Drops the connection and waits until the server has noticed (its open-connection gauge
    drops once the session is detached): a message sent before that would go to the live
    session's dead socket, not be pushed."""
    before = metric(metrics(server), "switchboard_connections_open")
    await session.drop_connection()
    deadline = asyncio.get_running_loop().time() + within
    while metric(metrics(server), "switchboard_connections_open") >= before:
        assert asyncio.get_running_loop().time() < deadline, "the server never noticed the dropped connection"
        await asyncio.sleep(0.02)


@async_test(timeout=30)
async def test_sleeping_phone_is_pushed_without_the_body(xmpp, server):
    alice_acc, bob_acc, app_acc = xmpp.new_user("alice"), xmpp.new_user("bob"), xmpp.new_user("pushbot")
    app = await xmpp.login(app_acc, "app")
    app_jid = app.boundjid.full
    bob = await xmpp.login(bob_acc, "pc")
    phone = await xmpp.login(alice_acc, "phone", stream_management=True)
    node = "device-7f3a"
    await phone.iq(push_iq(phone, "enable", app_jid, node, SECRET))

    # Awake: the message is delivered, nothing is pushed.
    bob.send_chat(alice_acc.jid, "are you awake?")
    await phone.wait_message(sender=bob_acc.jid, body="are you awake?")
    await app.expect_nothing(is_push, "push while the phone is online", 0.5)

    # Asleep: the connection dies, the session waits for resumption.
    await drop_and_wait_detached(phone, server)
    bob.send_chat(alice_acc.jid, "董事会纪要：机密")
    push = await app.wait_for(is_push, "push publish for the sleeping phone")
    check_push(push, alice_acc.jid, node, bob_acc.jid, "董事会纪要")

    # The phone comes back, gets the message, and unregisters.
    await phone.resume()
    await phone.wait_message(sender=bob_acc.jid, body="董事会纪要：机密")
    await phone.iq(push_iq(phone, "disable", app_jid, node))
    await drop_and_wait_detached(phone, server)
    bob.send_chat(alice_acc.jid, "after disable")
    await app.expect_nothing(is_push, "push after <disable/>", 1.0)
    await phone.resume()
    await phone.wait_message(sender=bob_acc.jid, body="after disable")


@async_test(timeout=30)
async def test_offline_user_is_pushed_and_disable_by_jid_stops_it(xmpp, server):
    alice_acc, bob_acc, app_acc = xmpp.new_user("alice"), xmpp.new_user("bob"), xmpp.new_user("pushbot")
    app = await xmpp.login(app_acc, "app")
    bob = await xmpp.login(bob_acc, "pc")
    phone = await xmpp.login(alice_acc, "phone")
    # the app server's bare JID: delivered to its available session(s)
    await phone.iq(push_iq(phone, "enable", app_acc.jid, "node-a", SECRET))
    await phone.iq(push_iq(phone, "enable", app_acc.jid, "node-b", SECRET))
    await phone.stop()  # clean logout: no session at all

    bob.send_chat(alice_acc.jid, "offline secret")
    nodes = set()
    for _ in range(2):
        push = await app.wait_for(is_push, "push publish for the offline user")
        node = push.xml.find(f"{{{NS_PUBSUB}}}pubsub/{{{NS_PUBSUB}}}publish").get("node")
        check_push(push, alice_acc.jid, node, bob_acc.jid, "offline secret")
        nodes.add(node)
    assert nodes == {"node-a", "node-b"}, nodes
    # A second message while still away: the summary counts both (XEP-0357 message-count).
    bob.send_chat(alice_acc.jid, "offline secret 2")
    counts = []
    for _ in range(2):
        push = await app.wait_for(is_push, "second push for the offline user")
        summary = push.xml.find(f"{{{NS_PUBSUB}}}pubsub/{{{NS_PUBSUB}}}publish/{{{NS_PUBSUB}}}item/{{{NS_PUSH}}}notification/{{{NS_DATA}}}x")
        counts.append(form_fields(summary).get("message-count"))
    assert counts == ["2", "2"], counts

    # <disable/> without a node removes every registration with that app server.
    phone = await xmpp.login(alice_acc, "phone2")
    await phone.wait_message(sender=bob_acc.jid, body="offline secret")
    await phone.wait_message(sender=bob_acc.jid, body="offline secret 2")
    await phone.iq(disable_all(phone, app_acc.jid))
    await phone.stop()
    bob.send_chat(alice_acc.jid, "offline, no push")
    await app.expect_nothing(is_push, "push after disabling all nodes", 1.0)
