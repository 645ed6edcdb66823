"""Server-side services: disco#info, vCard-temp, version, time, private storage, ping."""
import datetime as dt
import xml.etree.ElementTree as ET


from xmpp_client import async_test, error_condition

NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"
NS_VCARD = "vcard-temp"
NS_VERSION = "jabber:iq:version"
NS_TIME = "urn:xmpp:time"
NS_PRIVATE = "jabber:iq:private"
NS_PING = "urn:xmpp:ping"

#: Features the server's disco#info must list (each one is exercised by a test below).
REQUIRED_SERVER_FEATURES = {NS_DISCO_INFO, NS_VERSION, NS_TIME, NS_PING, NS_VCARD, NS_PRIVATE}


def iq(client, itype, to, payload: ET.Element):
    stanza = client.Iq(stype=itype)
    if to:
        stanza["to"] = to
    stanza.append(payload)
    return stanza


@async_test()
async def test_disco_info_on_server(xmpp, server):
    c = await xmpp.login(xmpp.new_user("alice"), "desk")
    res = await c.iq(iq(c, "get", server.domain, ET.Element(f"{{{NS_DISCO_INFO}}}query")))
    q = res.xml.find(f"{{{NS_DISCO_INFO}}}query")
    identities = {(i.get("category"), i.get("type")) for i in q.findall(f"{{{NS_DISCO_INFO}}}identity")}
    assert ("server", "im") in identities, identities
    features = {f.get("var") for f in q.findall(f"{{{NS_DISCO_INFO}}}feature")}
    missing = REQUIRED_SERVER_FEATURES - features
    assert not missing, f"disco#info lacks {sorted(missing)}; has {sorted(features)}"
    assert str(res["from"]) == server.domain


@async_test()
async def test_vcard_temp_set_and_get(xmpp, server):
    alice_acc, bob_acc = xmpp.new_user("alice"), xmpp.new_user("bob")
    alice = await xmpp.login(alice_acc, "desk")
    fields = {"FN": "张伟", "NICKNAME": "Zhang Wei", "TITLE": "高级工程师", "ROLE": "Developer"}
    vcard = ET.Element(f"{{{NS_VCARD}}}vCard")
    for k, v in fields.items():
        ET.SubElement(vcard, f"{{{NS_VCARD}}}{k}").text = v
    org = ET.SubElement(vcard, f"{{{NS_VCARD}}}ORG")
    ET.SubElement(org, f"{{{NS_VCARD}}}ORGNAME").text = "示例公司"
    ET.SubElement(org, f"{{{NS_VCARD}}}ORGUNIT").text = "研发部"
    email = ET.SubElement(vcard, f"{{{NS_VCARD}}}EMAIL")
    ET.SubElement(email, f"{{{NS_VCARD}}}INTERNET")
    ET.SubElement(email, f"{{{NS_VCARD}}}USERID").text = "zhang.wei@example.test"
    await alice.iq(iq(alice, "set", None, vcard))

    def check(res):
        v = res.xml.find(f"{{{NS_VCARD}}}vCard")
        assert v is not None, f"no vCard in {res}"
        for k, val in fields.items():
            assert v.findtext(f"{{{NS_VCARD}}}{k}") == val, (k, ET.tostring(v, encoding="unicode"))
        assert v.findtext(f"{{{NS_VCARD}}}ORG/{{{NS_VCARD}}}ORGUNIT") == "研发部"
        assert v.findtext(f"{{{NS_VCARD}}}EMAIL/{{{NS_VCARD}}}USERID") == "zhang.wei@example.test"

    # own vCard: to-less get
    check(await alice.iq(iq(alice, "get", None, ET.Element(f"{{{NS_VCARD}}}vCard"))))
    # someone else's vCard, addressed to the bare JID, from another account and a new session
    bob = await xmpp.login(bob_acc, "desk")
    res = await bob.iq(iq(bob, "get", alice_acc.jid, ET.Element(f"{{{NS_VCARD}}}vCard")))
    assert res["from"].bare == alice_acc.jid
    check(res)


@async_test()
async def test_software_version(xmpp, server):
    c = await xmpp.login(xmpp.new_user("alice"), "desk")
    res = await c.iq(iq(c, "get", server.domain, ET.Element(f"{{{NS_VERSION}}}query")))
    q = res.xml.find(f"{{{NS_VERSION}}}query")
    assert q.findtext(f"{{{NS_VERSION}}}name"), "no <name/>"
    assert q.findtext(f"{{{NS_VERSION}}}version"), "no <version/>"
    if server.kind == "switchboard":
        assert "switchboard" in q.findtext(f"{{{NS_VERSION}}}name").lower()


@async_test()
async def test_entity_time(xmpp, server):
    c = await xmpp.login(xmpp.new_user("alice"), "desk")
    res = await c.iq(iq(c, "get", server.domain, ET.Element(f"{{{NS_TIME}}}time")))
    t = res.xml.find(f"{{{NS_TIME}}}time")
    utc, tzo = t.findtext(f"{{{NS_TIME}}}utc"), t.findtext(f"{{{NS_TIME}}}tzo")
    assert utc and utc.endswith("Z"), utc
    assert tzo and (tzo == "Z" or tzo[0] in "+-") and len(tzo) in (1, 6), tzo
    server_now = dt.datetime.fromisoformat(utc.replace("Z", "+00:00"))
    drift = abs((server_now - dt.datetime.now(dt.timezone.utc)).total_seconds())
    assert drift < 60, f"server clock off by {drift} s"


@async_test()
async def test_private_xml_storage(xmpp, server):
    alice_acc, bob_acc = xmpp.new_user("alice"), xmpp.new_user("bob")
    alice = await xmpp.login(alice_acc, "desk")
    ns = "switchboard:test:prefs"

    def query(text=None):
        q = ET.Element(f"{{{NS_PRIVATE}}}query")
        p = ET.SubElement(q, f"{{{ns}}}prefs")
        if text is not None:
            ET.SubElement(p, f"{{{ns}}}theme", {"variant": "深色"}).text = text
        return q

    # nothing stored yet: the empty element comes back
    res = await alice.iq(iq(alice, "get", None, query()))
    assert res.xml.find(f"{{{NS_PRIVATE}}}query/{{{ns}}}prefs") is not None
    assert res.xml.find(f"{{{NS_PRIVATE}}}query/{{{ns}}}prefs/{{{ns}}}theme") is None

    await alice.iq(iq(alice, "set", None, query("dark 暗")))
    again = await xmpp.login(alice_acc, "phone")  # another session reads it back
    res = await again.iq(iq(again, "get", None, query()))
    theme = res.xml.find(f"{{{NS_PRIVATE}}}query/{{{ns}}}prefs/{{{ns}}}theme")
    assert theme is not None and theme.text == "dark 暗" and theme.get("variant") == "深色"

    # another account cannot read it
    bob = await xmpp.login(bob_acc, "desk")
    err = await bob.iq_error(iq(bob, "get", alice_acc.jid, query()))
    assert error_condition(err) in ("forbidden", "service-unavailable", "not-allowed"), err


@async_test()
async def test_ping_server(xmpp, server):
    c = await xmpp.login(xmpp.new_user("alice"), "desk")
    res = await c.iq(iq(c, "get", server.domain, ET.Element(f"{{{NS_PING}}}ping")))
    assert res["type"] == "result"
    assert str(res["from"]) == server.domain
