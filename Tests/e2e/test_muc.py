"""Multi-user chat (XEP-0045) with slixmpp's own MUC plugin: room creation and configuration,
joining, chat, history, kick and ban, the room's archive (XEP-0313) with moderation
(XEP-0425), self-ping (XEP-0410), invitations (mediated and XEP-0249) and rooms surviving a
server restart."""
import asyncio
import datetime as dt
import uuid
import xml.etree.ElementTree as ET

import pytest
from slixmpp import JID
from slixmpp.exceptions import PresenceError
from slixmpp.plugins.xep_0410.self_ping import PingStatus

from conftest import running_server, server_kind
from xmpp_client import NS_DELAY, NS_MAM, NS_SID, Session, async_test, error_condition

pytestmark = pytest.mark.xep("XEP-0045")

NS_MUC_USER = "http://jabber.org/protocol/muc#user"
NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"
NS_DISCO_ITEMS = "http://jabber.org/protocol/disco#items"
NS_RETRACT = "urn:xmpp:message-retract:1"
NS_MODERATE = "urn:xmpp:message-moderate:1"
MUC_PLUGINS = ("xep_0045", "xep_0249", "xep_0410", "xep_0421", "xep_0424", "xep_0425")


def service(server) -> str:
    return f"conference.{server.domain}"


def new_room(server, prefix: str = "room") -> JID:
    return JID(f"{prefix}-{uuid.uuid4().hex[:8]}@{service(server)}")


async def login(xmpp: Session, account, resource: str = "desk"):
    """Log in with slixmpp's MUC plugins loaded (they only add stanza types and handlers)."""
    c = xmpp.client(account, resource)
    for plugin in MUC_PLUGINS:
        c.register_plugin(plugin)
    await c.start(xmpp.server.host, xmpp.server.c2s_port, "starttls")
    await c.fetch_roster()
    await c.announce()
    return c


def status_codes(stanza) -> set[str]:
    x = stanza.xml.find(f"{{{NS_MUC_USER}}}x")
    return {s.get("code") for s in x.findall(f"{{{NS_MUC_USER}}}status")} if x is not None else set()


def room_stanza_id(message, room: JID) -> str:
    ids = [e.get("id") for e in message.xml.findall(f"{{{NS_SID}}}stanza-id") if e.get("by") == room.bare]
    assert len(ids) == 1, f"expected one stanza-id by {room.bare}: {message}"
    return ids[0]


async def create_room(client, room: JID, nick: str, **fields):
    """Join (creating the room, status 201), fetch the configuration form, set ``fields``."""
    presence, _subject, _occupants, _history = await client.plugin["xep_0045"].join_muc_wait(room, nick, maxstanzas=0, timeout=10)
    assert {"110", "201"} <= status_codes(presence), presence
    form = await client.plugin["xep_0045"].get_room_config(room)
    offered = set(form.get_fields())
    for var in ("muc#roomconfig_roomname", "muc#roomconfig_persistentroom", "muc#roomconfig_membersonly",
                "muc#roomconfig_moderatedroom", "muc#roomconfig_whois", "muc#roomconfig_maxusers"):
        assert var in offered, f"the configuration form lacks {var}: {sorted(offered)}"
    submit = client.plugin["xep_0004"].make_form(ftype="submit")
    submit.add_field(var="FORM_TYPE", value="http://jabber.org/protocol/muc#roomconfig")
    for var, value in fields.items():
        submit.add_field(var=f"muc#roomconfig_{var}", value=value)
    await client.plugin["xep_0045"].set_room_config(room, submit)
    return presence


async def groupchat(sender, room: JID, body: str, *readers):
    """Send a groupchat message; wait until every reader (the sender included) got it."""
    sender.send_message(mto=room, mbody=body, mtype="groupchat")
    got = []
    for reader in (sender, *readers):
        got.append(await reader.wait_message(sender=room.bare, body=body, mtype="groupchat"))
    return got


@async_test()
async def test_server_and_service_discovery(xmpp, server):
    alice = await login(xmpp, xmpp.new_user("alice"))
    iq = alice.Iq(stype="get", sto=server.domain)
    iq.append(ET.Element(f"{{{NS_DISCO_ITEMS}}}query"))
    items = (await alice.iq(iq)).xml.find(f"{{{NS_DISCO_ITEMS}}}query")
    assert service(server) in {i.get("jid") for i in items}, ET.tostring(items)
    features = await alice.disco_features(service(server))
    assert "http://jabber.org/protocol/muc" in features, features


@async_test()
async def test_create_configure_join_chat_and_history(xmpp, server):
    alice, bob, carol = [await login(xmpp, xmpp.new_user(n)) for n in ("alice", "bob", "carol")]
    room = new_room(server, "plans")
    await create_room(alice, room, "Alice", roomname="Plans", roomdesc="Quarterly plans", persistentroom="1",
                      historylength="10")
    features = await bob.disco_features(room.bare)
    assert {"http://jabber.org/protocol/muc", "muc_persistent", "muc_open", "muc_nonanonymous",
            "muc_unmoderated", "muc_unsecured", NS_MAM} <= features, features

    presence, _subject, occupants, _history = await bob.plugin["xep_0045"].join_muc_wait(room, "Bob", maxstanzas=0, timeout=10)
    assert {"110", "100", "170"} <= status_codes(presence), presence
    others = [p for p in occupants if p["from"].resource != "Bob"]
    assert [str(p["from"]) for p in others] == [f"{room}/Alice"]
    # Non-anonymous: bob sees alice's real JID.
    assert others[0]["muc"]["jid"].bare == alice.boundjid.bare

    alice.plugin["xep_0045"].set_subject(room, "Q3 plans")
    for c in (alice, bob):
        subject = await c.wait_for(lambda st: st.name == "message" and st["subject"] == "Q3 plans", "subject change")
        assert str(subject["from"]) == f"{room}/Alice"

    for i in range(3):
        got = await groupchat(bob if i % 2 else alice, room, f"line {i}", alice if i % 2 else bob)
        assert len({room_stanza_id(m, room) for m in got}) == 1, "every occupant sees the room's one stanza-id"

    # carol joins later and asks for the last two messages of history: delayed, from the room.
    _presence, subject, _occupants, history = await carol.plugin["xep_0045"].join_muc_wait(room, "Carol", maxstanzas=2, timeout=10)
    assert [m["body"] for m in history] == ["line 1", "line 2"]
    for m in history:
        delay = m.xml.find(f"{{{NS_DELAY}}}delay")
        assert delay is not None and delay.get("from") == room.bare, m
    assert subject["subject"] == "Q3 plans"

    # A private message between occupants.
    carol.send_message(mto=JID(f"{room}/Alice"), mbody="just to you", mtype="chat")
    pm = await alice.wait_message(sender=f"{room}/Carol", body="just to you")
    assert pm.xml.find(f"{{{NS_MUC_USER}}}x") is not None

    # Nick conflict.
    with pytest.raises(PresenceError) as conflict:
        await xmpp_login_and_join(xmpp, room, "Carol")
    assert conflict.value.condition == "conflict"


async def xmpp_login_and_join(xmpp, room: JID, nick: str):
    dave = await login(xmpp, xmpp.new_user("dave"))
    return await dave.plugin["xep_0045"].join_muc_wait(room, nick, maxstanzas=0, timeout=10)


@async_test()
async def test_kick_ban_and_moderated_rooms(xmpp, server):
    alice, bob, carol = [await login(xmpp, xmpp.new_user(n)) for n in ("alice", "bob", "carol")]
    room = new_room(server, "mod")
    await create_room(alice, room, "Alice", moderatedroom="1")
    muc = alice.plugin["xep_0045"]
    presence, *_ = await bob.plugin["xep_0045"].join_muc_wait(room, "Bob", maxstanzas=0, timeout=10)
    assert presence["muc"]["role"] == "visitor"
    # A visitor's message bounces with forbidden.
    bob.send_message(mto=room, mbody="can I talk?", mtype="groupchat")
    bounced = await bob.wait_for(lambda st: st.name == "message" and st["type"] == "error", "groupchat error")
    assert error_condition(bounced) == "forbidden"
    await muc.set_role(room, "Bob", "participant")
    voiced = await bob.wait_for(lambda st: st.name == "presence" and "110" in status_codes(st) and st["muc"]["role"] == "participant",
                                "voice granted")
    assert voiced is not None
    await groupchat(bob, room, "thank you", alice)
    roles = await muc.get_roles_list(room, "participant")
    assert roles == ["Bob"], roles

    # Kick: bob learns it with 307 and the reason.
    await muc.set_role(room, "Bob", "none", reason="too loud")
    kicked = await bob.wait_for(lambda st: st.name == "presence" and st["type"] == "unavailable", "kick")
    assert {"110", "307"} <= status_codes(kicked), kicked
    assert kicked["muc"]["item"]["reason"] == "too loud"

    # Ban: carol is thrown out with 301 and cannot come back.
    await carol.plugin["xep_0045"].join_muc_wait(room, "Carol", maxstanzas=0, timeout=10)
    await muc.set_affiliation(room, "outcast", jid=carol.boundjid.bare, reason="spam")
    banned = await carol.wait_for(lambda st: st.name == "presence" and st["type"] == "unavailable", "ban")
    assert {"110", "301"} <= status_codes(banned), banned
    with pytest.raises(PresenceError) as refused:
        await carol.plugin["xep_0045"].join_muc_wait(room, "Carol", maxstanzas=0, timeout=10)
    assert refused.value.condition == "forbidden"
    outcasts = await muc.get_affiliation_list(room, "outcast")
    assert outcasts == [JID(carol.boundjid.bare)], outcasts
    # Only owners/admins may ban: bob's attempt is refused.
    err = await bob.iq_error(ban_iq(bob, room, alice.boundjid.bare))
    assert error_condition(err) == "forbidden"


def ban_iq(client, room: JID, jid: str):
    iq = client.Iq(stype="set", sto=room.bare)
    query = ET.SubElement(ET.Element("x"), "{http://jabber.org/protocol/muc#admin}query")
    ET.SubElement(query, "{http://jabber.org/protocol/muc#admin}item", affiliation="outcast", jid=jid)
    iq.append(query)
    return iq


@async_test()
async def test_room_archive_and_moderation(xmpp, server):
    alice, bob = [await login(xmpp, xmpp.new_user(n)) for n in ("alice", "bob")]
    room = new_room(server, "arch")
    await create_room(alice, room, "Alice")
    await bob.plugin["xep_0045"].join_muc_wait(room, "Bob", maxstanzas=0, timeout=10)
    ids = []
    for i in range(5):
        got = await groupchat(bob, room, f"archived {i}", alice)
        ids.append(room_stanza_id(got[0], room))

    # XEP-0313 on the room JID, paged with XEP-0059; results come from the room.
    first, fin = await alice.mam_query(to=room.bare, max_items=3)
    assert [r.body for r in first] == ["archived 0", "archived 1", "archived 2"]
    assert [r.archive_id for r in first] == ids[:3], "MAM ids are the room's stanza-ids"
    assert fin.get("complete") not in ("true", "1")
    rest, fin = await alice.mam_query(to=room.bare, after=first[-1].archive_id)
    assert [r.body for r in rest] == ["archived 3", "archived 4"] and fin.get("complete") in ("true", "1")

    # XEP-0425: a participant may not moderate; the owner (moderator) may.
    with pytest.raises(Exception):
        await bob.plugin["xep_0425"].moderate(room, ids[1], reason="not you", timeout=10)
    await alice.plugin["xep_0425"].moderate(room, ids[1], reason="off topic", timeout=10)
    notice = await bob.wait_for(lambda st: st.name == "message" and st.xml.find(f"{{{NS_RETRACT}}}retract") is not None,
                                "moderation notice")
    retract = notice.xml.find(f"{{{NS_RETRACT}}}retract")
    assert retract.get("id") == ids[1]
    assert retract.find(f"{{{NS_MODERATE}}}moderated").get("by") == f"{room}/Alice"
    after, _fin = await alice.mam_query(to=room.bare, max_items=5)
    assert [r.body for r in after] == ["archived 0", None, "archived 2", "archived 3", "archived 4"]
    tombstone = after[1].message.find(f"{{{NS_RETRACT}}}retracted")
    assert tombstone is not None, ET.tostring(after[1].message)


@async_test()
async def test_self_ping_and_invitations(xmpp, server):
    alice, bob = [await login(xmpp, xmpp.new_user(n)) for n in ("alice", "bob")]
    room = new_room(server, "ping")
    await create_room(alice, room, "Alice")
    ping = alice.plugin["xep_0410"]
    assert await ping.send_self_ping(JID(f"{room}/Alice"), timeout=10) == PingStatus.JOINED
    assert await bob.plugin["xep_0410"].send_self_ping(JID(f"{room}/Alice"), timeout=10) == PingStatus.DISCONNECTED

    # Mediated invitation (XEP-0045 §7.8.2) through the room.
    alice.plugin["xep_0045"].invite(room, bob.boundjid.bare, reason="come in")
    invitation = await bob.wait_for(lambda st: st.name == "message" and st.xml.find(f"{{{NS_MUC_USER}}}x/{{{NS_MUC_USER}}}invite") is not None,
                                    "mediated invitation")
    assert invitation["from"] == room.bare
    assert invitation.xml.find(f"{{{NS_MUC_USER}}}x/{{{NS_MUC_USER}}}invite").get("from") == alice.boundjid.bare
    # Direct invitation (XEP-0249) is a message from alice herself.
    alice.plugin["xep_0249"].send_invitation(bob.boundjid.bare, room.bare, reason="or directly")
    direct = await bob.wait_for(lambda st: st.name == "message" and st.xml.find("{jabber:x:conference}x") is not None,
                                "direct invitation")
    assert direct["from"].bare == alice.boundjid.bare
    assert direct.xml.find("{jabber:x:conference}x").get("jid") == room.bare

    # After leaving, the self-ping says so.
    alice.plugin["xep_0045"].leave_muc(room, "Alice")
    await alice.wait_for(lambda st: st.name == "presence" and st["type"] == "unavailable", "own unavailable")
    status = await ping.send_self_ping(JID(f"{room}/Alice"), timeout=10)
    assert status == PingStatus.DISCONNECTED, status


@pytest.mark.skipif(server_kind() != "switchboard", reason="restarts the server process")
def test_rooms_survive_a_restart(request):
    """Configuration, affiliations and subject of a persistent room survive a restart."""
    with running_server(request.config) as srv:
        xmpp = Session(srv)
        owner_account, member_account = xmpp.new_user("owner"), xmpp.new_user("member")
        room = new_room(srv, "keep")

        async def before():
            owner = await login(xmpp, owner_account)
            await create_room(owner, room, "Owner", roomname="Kept room", persistentroom="1", membersonly="1")
            await owner.plugin["xep_0045"].set_affiliation(room, "member", jid=member_account.jid)
            owner.plugin["xep_0045"].set_subject(room, "Survives restarts")
            await owner.wait_for(lambda st: st.name == "message" and st["subject"] == "Survives restarts", "subject")
            await xmpp.aclose()

        async def after():
            member = await login(xmpp, member_account)
            presence, subject, _occupants, _history = await member.plugin["xep_0045"].join_muc_wait(room, "Member", timeout=10)
            assert presence["muc"]["affiliation"] == "member"
            assert subject["subject"] == "Survives restarts"
            features = await member.disco_features(room.bare)
            assert {"muc_persistent", "muc_membersonly"} <= features, features
            await xmpp.aclose()

        asyncio.run(asyncio.wait_for(before(), 60))
        assert srv.stop() == 0
        srv.status_file.unlink()
        srv.start()
        xmpp = Session(srv)
        asyncio.run(asyncio.wait_for(after(), 60))
