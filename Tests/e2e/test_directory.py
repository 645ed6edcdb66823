"""The organisation directory from LDAP, end to end: a real slapd (Tests/Fixtures/ldap/company.ldif,
syncprov overlay), a real Switchboard syncing from it, real slixmpp clients.

* login by LDAP bind (SASL PLAIN over STARTTLS), refused for a wrong password and for an account
  disabled in LDAP, temporary-auth-failure (not a hang) while slapd is hung;
* the directory roster (colleagues of the own unit, group = unit path, subscription both) with
  presence shared without subscriptions, kept live by content sync (roster pushes, sessions of
  users deleted in LDAP closed);
* XEP-0055 search by initials and Chinese name, vCards from the directory;
* the ``switchboard ldap sync --dry-run`` / ``ldap history`` commands.

Switchboard only (Prosody has no LDAP directory): skipped with E2E_SERVER=prosody.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from conftest import Switchboard, server_kind
from slapd_fixture import ADMIN_DN, ADMIN_PASSWORD, COMPANY_LDIF, Slapd, parent_dn, parse_ldif
from xmpp_client import NS_ROSTER, NS_STREAMS_ERR, Account, LoginFailed, Session, async_test

pytestmark = [
    pytest.mark.skipif(server_kind() != "switchboard", reason="the LDAP directory is Switchboard's"),
    pytest.mark.skipif(not os.access("/usr/sbin/slapd", os.X_OK), reason="slapd not installed"),
]

DOMAIN = "example.com"
NS_SEARCH = "jabber:iq:search"
NS_DATA = "jabber:x:data"
NS_VCARD = "vcard-temp"

DEPARTMENTS = "ou=Departments,dc=example,dc=com"
#: zhangwei's unit and its roster group
UNIT_DN = "ou=存储组,ou=平台部,ou=研发中心," + DEPARTMENTS
UNIT_PATH = "研发中心/平台部/存储组"
#: seconds within which an LDAP change must reach clients (incremental sync every 1 s,
#: directory refresh every 200 ms)
LIVE = 8


# ---------------------------------------------------------------------------------------
# What the fixture LDIF says (the expectations are computed from it, not hard-coded)
# ---------------------------------------------------------------------------------------
ENTRIES = parse_ldif(COMPANY_LDIF)
PEOPLE = {e["uid"][0]: e for e in ENTRIES if "inetOrgPerson" in e.get("objectClass", [])
          and e["dn"][0].endswith(DEPARTMENTS)}


def disabled(uid: str) -> bool:
    return "disabled" in PEOPLE[uid].get("employeeType", [])


def members_of(unit_dn: str) -> set[str]:
    """Active users whose primary unit (the entry's parent) or seeAlso unit is ``unit_dn``."""
    return {uid for uid, e in PEOPLE.items()
            if (parent_dn(e["dn"][0]) == unit_dn or unit_dn in e.get("seeAlso", [])) and not disabled(uid)}


def person(uid: str) -> Account:
    """An LDAP user as an XMPP account (password convention of the fixture: secret-<uid>)."""
    return Account(uid, DOMAIN, f"secret-{uid}")


ZHANGWEI = person("zhangwei")
COLLEAGUES = sorted(members_of(UNIT_DN) - {"zhangwei"})
#: members of the unit by their entry's place (not by seeAlso); the tests log in as different ones
PRIMARY_COLLEAGUES = sorted(u for u in COLLEAGUES if parent_dn(PEOPLE[u]["dn"][0]) == UNIT_DN)
#: a user disabled in LDAP (employeeType: disabled)
DISABLED_USER = sorted(u for u in PEOPLE if disabled(u))[0]
#: an active user in no unit zhangwei belongs to
STRANGER = next(u for u in sorted(PEOPLE) if u not in members_of(UNIT_DN) and not disabled(u)
                and not PEOPLE[u].get("seeAlso"))


def test_fixture_expectations_are_sane():
    """The LDIF facts the tests below rely on (fails loudly if the fixture is regenerated)."""
    zw = PEOPLE["zhangwei"]
    assert zw["displayName"] == ["张伟"] and parent_dn(zw["dn"][0]) == UNIT_DN
    assert len(COLLEAGUES) >= 5, COLLEAGUES
    assert any(PEOPLE[u].get("seeAlso") == [UNIT_DN] for u in COLLEAGUES), "no seeAlso member in the unit"
    assert DISABLED_USER and STRANGER


# ---------------------------------------------------------------------------------------
# slapd + a Switchboard syncing from it (one of each for the module)
# ---------------------------------------------------------------------------------------
class LDAPSwitchboard(Switchboard):
    """conftest's Switchboard with domain example.com and the ldap/directory sections."""

    def __init__(self, tmp: Path, slapd: Slapd):
        super().__init__(tmp)
        self.domain = DOMAIN
        self.slapd = slapd
        self.config.write_text(
            f"domain: {DOMAIN}\n"
            f"data_dir: {tmp / 'data'}\n"
            "log_level: info\n"
            "c2s: {bind: 127.0.0.1, port: 0, require_tls: true}\n"
            "c2s_direct_tls: {bind: 127.0.0.1, port: 0}\n"
            "http: {bind: 127.0.0.1, port: 0}\n"
            "bootstrap_admin: false\n"
            "registration: {enabled: false}\n"
            "directory: {refresh_interval_ms: 200}\n"
            "ldap:\n"
            "  enabled: true\n"
            f"  url: {slapd.url}\n"
            "  start_tls: false\n"
            "  allow_plaintext: true\n"
            f"  bind_dn: {ADMIN_DN}\n"
            f"  bind_password: {ADMIN_PASSWORD}\n"
            f"  unit_base: {DEPARTMENTS}\n"
            "  group_base: ou=Groups,dc=example,dc=com\n"
            "  group_roles: {im-admins: admin, auditors: auditor}\n"
            "  disabled_attribute: employeeType\n"
            "  disabled_values: [disabled]\n"
            "  incremental_interval_seconds: 1\n"
            "  timeout_ms: 2000\n"
        )

    def cli(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
        """``switchboard ARGS --config <this server's config>``."""
        return subprocess.run([str(self.bin), *args, "--config", str(self.config)],
                              capture_output=True, text=True, timeout=timeout)

    def wait_first_sync(self, timeout: float = 20) -> None:
        """Until the full sync at start has committed and the server has loaded the result."""
        deadline = time.monotonic() + timeout
        while True:
            history = self.cli("ldap", "history")
            if re.search(r"^\S+ full ok ", history.stdout, re.M):
                break
            if not self.alive():
                raise RuntimeError(f"switchboard exited with {self.proc.returncode}\n{self.logs()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"no successful full LDAP sync within {timeout} s: "
                                   f"{history.stdout}{history.stderr}\n{self.logs()}\n{self.slapd.logs()}")
            time.sleep(0.1)
        # The running server loads the committed version right after the run, and its refresh
        # loop (refresh_interval_ms) would anyway: wait for its log line saying it did (only
        # written with the directory roster on), else give the refresh loop a few rounds.
        loaded = time.monotonic() + 2
        while not any(re.search(r"directory\.version=[1-9]\d*.*directory changed", f.read_text(errors="replace"))
                      for f in self.log_files if f.exists()):
            if time.monotonic() > loaded:
                break
            time.sleep(0.05)


@pytest.fixture(scope="module")
def slapd(request):
    with Slapd.start(COMPANY_LDIF) as s:
        request.config._e2e_servers.append(s)  # its log in failure reports
        try:
            yield s
        finally:
            request.config._e2e_servers.remove(s)


@pytest.fixture(scope="module")
def ldap_server(request, slapd):
    """Switchboard with ldap enabled, after its first full sync from ``slapd``."""
    tmp = Path(tempfile.mkdtemp(prefix="e2e-ldap-switchboard-"))
    srv = LDAPSwitchboard(tmp, slapd)
    servers = request.config._e2e_servers
    try:
        srv.start()
        servers.append(srv)
        srv.wait_first_sync()
        yield srv
    finally:
        code = srv.stop() if hasattr(srv, "proc") else 0
        if srv in servers:
            servers.remove(srv)
        if os.environ.get("E2E_KEEP"):
            print(f"\n[e2e] kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    assert code == 0, f"switchboard exited with {code} after SIGTERM\n{srv.logs()}"


@pytest.fixture
def dxmpp(ldap_server):
    """Like ``xmpp``, for the LDAP-backed server (logins use SASL PLAIN: LDAP bind)."""
    return Session(ldap_server)


async def login(session: Session, account: Account, resource: str = "e2e", **kwargs):
    """SASL PLAIN only (LDAP users have no SCRAM credentials), over STARTTLS."""
    c = await session.login(account, resource, mechanisms=["PLAIN"], **kwargs)
    assert c.sasl_mechanism == "PLAIN" and c.tls_active
    return c


async def login_fails(session: Session, account: Account, password: str | None = None) -> LoginFailed:
    with pytest.raises(LoginFailed) as failed:
        await login(session, account, password=password)
    return failed.value


def groups(item: ET.Element) -> list[str]:
    return sorted(g.text or "" for g in item.findall(f"{{{NS_ROSTER}}}group"))


def roster_items(push) -> dict[str, ET.Element]:
    q = push.xml.find(f"{{{NS_ROSTER}}}query")
    return {i.get("jid"): i for i in q.findall(f"{{{NS_ROSTER}}}item")}


def subscription_requests(client) -> list:
    return [st for st in client.received if st.name == "presence"
            and st.xml.get("type") in ("subscribe", "subscribed", "unsubscribe", "unsubscribed")]


# ---------------------------------------------------------------------------------------
# 1. Login by LDAP bind
# ---------------------------------------------------------------------------------------
@async_test()
async def test_ldap_bind_login_with_plain_over_starttls(dxmpp, slapd):
    c = await login(dxmpp, ZHANGWEI, roster=False, presence=False)
    assert c.boundjid.bare == ZHANGWEI.jid
    await c.roundtrip()
    await c.stop()

    wrong = await login_fails(dxmpp, ZHANGWEI, password="secret-zhangwei-wrong")
    assert wrong.condition == "not-authorized", wrong

    # The disabled user's LDAP password is right (slapd accepts the bind) ...
    dn = PEOPLE[DISABLED_USER]["dn"][0]
    who = subprocess.run(["ldapwhoami", "-x", "-H", slapd.url, "-D", dn, "-w", f"secret-{DISABLED_USER}"],
                         capture_output=True, text=True, timeout=10)
    assert who.returncode == 0, f"fixture: {dn} cannot bind: {who.stderr}"
    # ... but employeeType: disabled keeps them out of the chat server.
    refused = await login_fails(dxmpp, person(DISABLED_USER))
    assert refused.condition == "account-disabled", refused


# ---------------------------------------------------------------------------------------
# 2. Directory roster and presence without subscriptions
# ---------------------------------------------------------------------------------------
@async_test()
async def test_roster_has_unit_colleagues_and_presence_is_shared(dxmpp):
    zw = await login(dxmpp, ZHANGWEI, roster=False)
    items, _ = await zw.fetch_roster()
    expected = {f"{u}@{DOMAIN}" for u in COLLEAGUES}
    assert set(items) == expected, (f"missing {sorted(expected - set(items))}, "
                                    f"unexpected {sorted(set(items) - expected)}")
    for jid, item in items.items():
        uid = jid.split("@")[0]
        assert item.get("subscription") == "both", ET.tostring(item, encoding="unicode")
        assert item.get("ask") is None, ET.tostring(item, encoding="unicode")
        assert item.get("name") == PEOPLE[uid]["displayName"][0], ET.tostring(item, encoding="unicode")
        assert groups(item) == [UNIT_PATH], ET.tostring(item, encoding="unicode")

    colleague = person(PRIMARY_COLLEAGUES[0])
    other = await login(dxmpp, colleague, roster=True, presence=False)
    stranger = await login(dxmpp, person(STRANGER), roster=True, presence=False)
    zw.skip_received()
    await other.announce()
    await stranger.announce()
    # No subscription was ever requested, yet presence flows both ways between colleagues ...
    await zw.wait_presence(colleague.jid)
    await other.wait_presence(ZHANGWEI.jid)
    other.send_presence(pshow="away", pstatus="在开会")
    away = await zw.wait_presence(colleague.jid)
    assert away["show"] == "away" and away["status"] == "在开会", away
    # ... and not to somebody outside zhangwei's units.
    await zw.expect_nothing(lambda st: st.name == "presence" and st["from"].bare == f"{STRANGER}@{DOMAIN}",
                            "presence from a user of another unit", seconds=1.0)
    assert not any(st["from"].bare == ZHANGWEI.jid for st in stranger.received if st.name == "presence")
    for c in (zw, other, stranger):
        assert subscription_requests(c) == [], f"{c.boundjid}: {subscription_requests(c)}"


# ---------------------------------------------------------------------------------------
# 3. Live LDAP changes: roster pushes, sessions of deleted users closed
# ---------------------------------------------------------------------------------------
@async_test()
async def test_ldap_changes_reach_rosters_and_sessions_live(dxmpp, slapd):
    uid = f"e2enew{uuid.uuid4().hex[:6]}"
    dn = f"uid={uid},{UNIT_DN}"
    newcomer = Account(uid, DOMAIN, f"pw-{uuid.uuid4().hex[:8]}")
    zw = await login(dxmpp, ZHANGWEI)
    try:
        slapd.modify(f"dn: {dn}\nchangetype: add\nobjectClass: inetOrgPerson\nuid: {uid}\n"
                     f"cn: 新同事\nsn: 新\ndisplayName: 新同事\ntitle: 实习生\n"
                     f"mail: {uid}@example.com\nuserPassword: {newcomer.password}\n")
        push = await zw.wait_roster_push(newcomer.jid, timeout=LIVE)
        item = roster_items(push)[newcomer.jid]
        assert item.get("subscription") == "both" and item.get("name") == "新同事", ET.tostring(item, encoding="unicode")
        assert groups(item) == [UNIT_PATH]
        items, _ = await zw.fetch_roster()
        assert newcomer.jid in items

        # The newcomer logs in with the LDAP password and shares presence with zhangwei at once.
        nc = await login(dxmpp, newcomer)
        await zw.wait_presence(newcomer.jid)
        await nc.wait_presence(ZHANGWEI.jid)

        zw.skip_received()
        slapd.modify(f"dn: {dn}\nchangetype: delete\n")
        await nc.wait_disconnected(timeout=LIVE)
        assert [e.xml.find(f"{{{NS_STREAMS_ERR}}}not-authorized") is not None for e in nc.stream_errors] == [True], \
            f"expected one <not-authorized/> stream error, got {[str(e) for e in nc.stream_errors]}"
        await zw.wait_roster_push(newcomer.jid, subscription="remove", timeout=LIVE)
        items, _ = await zw.fetch_roster()
        assert newcomer.jid not in items
        assert set(items) == {f"{u}@{DOMAIN}" for u in COLLEAGUES}

        # Deleted in LDAP: no login any more, even with the (formerly) right password.
        failed = await login_fails(dxmpp, newcomer)
        # (not-authorized: the entry is gone, so the LDAP bind fails before the account flag counts)
        assert failed.condition in ("account-disabled", "not-authorized"), failed
        dn = None
    finally:
        if dn is not None:
            with contextlib.suppress(Exception):
                slapd.modify(f"dn: {dn}\nchangetype: delete\n")


@async_test()
async def test_colleague_deleted_in_ldap_goes_offline_for_colleagues(dxmpp, slapd):
    """RFC 6121 §3.2.3: when a contact leaves the roster (subscription both → none), the user
    gets unavailable presence from the contact's available resources."""
    uid = f"e2egone{uuid.uuid4().hex[:6]}"
    dn = f"uid={uid},{UNIT_DN}"
    gone = Account(uid, DOMAIN, f"pw-{uuid.uuid4().hex[:8]}")
    zw = await login(dxmpp, ZHANGWEI)
    try:
        slapd.modify(f"dn: {dn}\nchangetype: add\nobjectClass: inetOrgPerson\nuid: {uid}\n"
                     f"cn: 离职者\nsn: 离\ndisplayName: 离职者\nuserPassword: {gone.password}\n")
        await zw.wait_roster_push(gone.jid, timeout=LIVE)
        g = await login(dxmpp, gone)
        await zw.wait_presence(gone.jid)
        zw.skip_received()
        slapd.modify(f"dn: {dn}\nchangetype: delete\n")
        dn = None
        await g.wait_disconnected(timeout=LIVE)
        await zw.wait_roster_push(gone.jid, subscription="remove", timeout=LIVE)
        await zw.wait_presence(gone.jid, "unavailable", timeout=LIVE)
    finally:
        if dn is not None:
            with contextlib.suppress(Exception):
                slapd.modify(f"dn: {dn}\nchangetype: delete\n")


# ---------------------------------------------------------------------------------------
# 4. XEP-0055 search and vCards
# ---------------------------------------------------------------------------------------
def search_iq(client, **fields: str):
    iq = client.Iq(stype="set")
    iq["to"] = DOMAIN
    query = ET.Element(f"{{{NS_SEARCH}}}query")
    form = ET.SubElement(query, f"{{{NS_DATA}}}x", {"type": "submit"})
    ft = ET.SubElement(form, f"{{{NS_DATA}}}field", {"var": "FORM_TYPE", "type": "hidden"})
    ET.SubElement(ft, f"{{{NS_DATA}}}value").text = NS_SEARCH
    for var, value in fields.items():
        field = ET.SubElement(form, f"{{{NS_DATA}}}field", {"var": var})
        ET.SubElement(field, f"{{{NS_DATA}}}value").text = value
    iq.append(query)
    return iq


async def search(client, **fields: str) -> dict[str, dict[str, str]]:
    """Submit the search form; returns {jid: {field: value}} of the result rows."""
    res = await client.iq(search_iq(client, **fields))
    form = res.xml.find(f"{{{NS_SEARCH}}}query/{{{NS_DATA}}}x")
    assert form is not None and form.get("type") == "result", f"no result form: {res}"
    rows = {}
    for item in form.findall(f"{{{NS_DATA}}}item"):
        row = {f.get("var"): f.findtext(f"{{{NS_DATA}}}value") or "" for f in item.findall(f"{{{NS_DATA}}}field")}
        rows[row["jid"]] = row
    return rows


@async_test()
async def test_search_by_initials_and_chinese_name_and_vcard(dxmpp):
    c = await login(dxmpp, person(PRIMARY_COLLEAGUES[-1]), roster=False, presence=False)

    iq = c.Iq(stype="get")
    iq["to"] = DOMAIN
    iq.append(ET.Element(f"{{{NS_SEARCH}}}query"))
    blank = await c.iq(iq)
    offered = {f.get("var") for f in blank.xml.iter(f"{{{NS_DATA}}}field")}
    assert {"q", "name", "department", "title", "phone", "email"} <= offered, offered

    namesakes = {f"{u}@{DOMAIN}" for u, e in PEOPLE.items() if e["displayName"] == ["张伟"] and not disabled(u)}
    for term in ("zw", "张伟", "zhangwei"):
        rows = await search(c, name=term)
        assert ZHANGWEI.jid in rows, f"name={term!r}: zhangwei not found in {sorted(rows)}"
        # ... and not just anybody: 程超 (chengchao, cc) matches none of these.
        assert "chengchao@example.com" not in rows, f"name={term!r} matched chengchao: {sorted(rows)}"
    rows = await search(c, name="张伟")
    assert namesakes <= set(rows), f"every 张伟 must be found: {namesakes - set(rows)}"
    assert all("张伟" in r["name"] for r in rows.values()), rows
    me = rows[ZHANGWEI.jid]
    assert (me["name"], me["department"], me["email"]) == ("张伟", UNIT_PATH, "zhangwei@example.com"), me
    assert await search(c, name="qqqxxzz") == {}
    # Criteria combine: zhangwei's namesake sits in another department.
    rows = await search(c, name="张伟", department="存储组")
    assert ZHANGWEI.jid in rows and not (namesakes - {ZHANGWEI.jid}) & set(rows), rows

    iq = c.Iq(stype="get")
    iq["to"] = ZHANGWEI.jid
    iq.append(ET.Element(f"{{{NS_VCARD}}}vCard"))
    vcard = (await c.iq(iq)).xml.find(f"{{{NS_VCARD}}}vCard")
    assert vcard is not None

    def text(path: str) -> str | None:
        return vcard.findtext("/".join(f"{{{NS_VCARD}}}{p}" for p in path.split("/")))

    zw = PEOPLE["zhangwei"]
    assert text("FN") == "张伟"
    assert text("TITLE") == zw["title"][0]
    assert (text("ORG/ORGNAME"), text("ORG/ORGUNIT")) == ("研发中心", "平台部/存储组")
    assert text("EMAIL/USERID") == zw["mail"][0]
    numbers = {t.findtext(f"{{{NS_VCARD}}}NUMBER") for t in vcard.findall(f"{{{NS_VCARD}}}TEL")}
    assert set(zw["telephoneNumber"]) <= numbers, numbers


# ---------------------------------------------------------------------------------------
# 5. LDAP outage: a quick temporary failure, not a hang
# ---------------------------------------------------------------------------------------
@async_test()
async def test_hung_ldap_gives_temporary_auth_failure(dxmpp, slapd):
    account = person(PRIMARY_COLLEAGUES[1])
    slapd.suspend()
    try:
        started = time.monotonic()
        failed = await login_fails(dxmpp, account)
        elapsed = time.monotonic() - started
        assert failed.condition == "temporary-auth-failure", failed
        assert elapsed < 10, f"the login took {elapsed:.1f} s to fail"
    finally:
        slapd.resume()
    # Back to normal once slapd answers again.
    c = await login(dxmpp, account, roster=False, presence=False)
    assert c.boundjid.bare == account.jid


# ---------------------------------------------------------------------------------------
# 6. The ldap commands
# ---------------------------------------------------------------------------------------
def test_ldap_sync_dry_run_and_history(ldap_server):
    def dry_runs() -> int:
        history = ldap_server.cli("ldap", "history", "--limit", "100000")
        assert history.returncode == 0, history.stderr
        return len(re.findall(r"^\S+ full \(dry run\) dry-run ", history.stdout, re.M))

    before_tree = ldap_server.cli("org", "tree")
    assert before_tree.returncode == 0, before_tree.stderr
    before_runs = dry_runs()

    dry = ldap_server.cli("ldap", "sync", "--dry-run")
    assert dry.returncode == 0, f"exit {dry.returncode}\n{dry.stdout}\n{dry.stderr}"
    summary = dry.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"full sync dry-run in \d+\.\d\d s: added \d+, updated \d+, moved \d+, disabled \d+, "
                        r"re-enabled \d+; units added \d+, changed \d+, removed \d+; "
                        r"roles granted \d+, revoked \d+; errors 0", summary), summary
    # The server is in step with slapd, so the dry run finds nothing to do, and changes nothing.
    assert "added 0, updated 0, moved 0, disabled 0, re-enabled 0" in summary, summary
    assert ldap_server.cli("org", "tree").stdout == before_tree.stdout

    # history lists the runs, newest first: the dry run just made, the server's incremental
    # runs (every second: wait for one if the module has been quick) and, oldest, the full run
    # at start that added every LDAP user.
    assert dry_runs() == before_runs + 1
    deadline = time.monotonic() + 5
    while True:
        history = ldap_server.cli("ldap", "history", "--limit", "100000")
        assert history.returncode == 0, history.stderr
        runs = [line for line in history.stdout.splitlines() if not line.startswith(" ")]
        if any(re.search(r" incremental ok ", r) for r in runs):
            break
        assert time.monotonic() < deadline, f"no incremental run listed:\n{history.stdout}"
        time.sleep(0.2)
    first = runs[-1]
    assert re.search(r" full ok [\d.]+s added (\d+) ", first), f"oldest run is not the start sync: {first}"
    assert f" added {len(PEOPLE)} " in first, first
    stamps = [r.split(" ", 1)[0] for r in runs]
    assert stamps == sorted(stamps, reverse=True), "history is not newest first"
