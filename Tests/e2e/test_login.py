"""Login over each transport the server offers: STARTTLS, direct TLS and WebSocket."""
import asyncio
import xml.etree.ElementTree as ET

from xmpp_client import NS_SASL, WebSocketClient, async_test, insecure_ssl_context

NS_TLS = "urn:ietf:params:xml:ns:xmpp-tls"
NS_BIND = "urn:ietf:params:xml:ns:xmpp-bind"


def mechanisms(features: ET.Element) -> list[str]:
    return [m.text for m in features.iter(f"{{{NS_SASL}}}mechanism")]


@async_test()
async def test_login_starttls(xmpp, server):
    alice = xmpp.new_user("alice")
    c = await xmpp.login(alice, "laptop")
    assert c.boundjid.full == f"{alice.jid}/laptop"
    assert c.tls_active, "session is not encrypted after STARTTLS"
    first = c.features_seen[0]
    starttls = first.find(f"{{{NS_TLS}}}starttls")
    assert starttls is not None, f"STARTTLS not offered: {ET.tostring(first)}"
    assert starttls.find(f"{{{NS_TLS}}}required") is not None, "require_tls is on: <required/> expected"
    assert "PLAIN" not in mechanisms(first), "PLAIN offered before TLS"
    # After TLS: mechanisms, no second STARTTLS; after SASL: bind.
    assert c.features_seen[1].find(f"{{{NS_TLS}}}starttls") is None
    assert mechanisms(c.features_seen[1]), "no SASL mechanisms after TLS"
    assert c.features_seen[-1].find(f"{{{NS_BIND}}}bind") is not None


@async_test()
async def test_login_direct_tls(xmpp, server):
    alice = xmpp.new_user("alice")
    c = await xmpp.login(alice, "tablet", transport="direct_tls")
    assert c.boundjid.full == f"{alice.jid}/tablet"
    assert c.tls_active
    tls = c.transport.get_extra_info("ssl_object")
    assert tls.version() in ("TLSv1.2", "TLSv1.3"), tls.version()
    first = c.features_seen[0]
    assert first.find(f"{{{NS_TLS}}}starttls") is None, "STARTTLS offered on a direct-TLS stream"
    assert mechanisms(first), "no SASL mechanisms on the direct-TLS port"


@async_test()
async def test_direct_tls_port_speaks_tls_first(server):
    """The direct TLS port completes a TLS handshake before any XMPP byte."""
    _, writer = await asyncio.open_connection(
        server.host, server.tls_port, ssl=insecure_ssl_context(), server_hostname=server.domain)
    assert writer.get_extra_info("ssl_object") is not None
    writer.close()


@async_test()
async def test_login_websocket_and_chat_with_tcp_client(xmpp, server):
    alice, bob = xmpp.new_user("alice"), xmpp.new_user("bob")
    ws = WebSocketClient(server.ws_url, server.domain)
    xmpp.closers.append(ws.close)
    jid = await ws.login(alice.local, alice.password, resource="browser")
    assert jid == f"{alice.jid}/browser"
    await ws.send('<presence xmlns="jabber:client"/>')

    tcp = await xmpp.login(bob, "desk")
    # WebSocket -> TCP
    await ws.send(f'<message xmlns="jabber:client" to="{bob.jid}/desk" type="chat" id="w1">'
                  f'<body>hello from websocket</body></message>')
    m = await tcp.wait_message(sender=f"{alice.jid}/browser", body="hello from websocket")
    assert m["type"] == "chat"
    # TCP -> WebSocket
    tcp.send_message(mto=f"{alice.jid}/browser", mbody="hello from tcp 你好", mtype="chat")
    got = await ws.recv_until(lambda e: e.tag == "{jabber:client}message", "message")
    assert got.get("from") == f"{bob.jid}/desk"
    assert got.findtext("{jabber:client}body") == "hello from tcp 你好"
