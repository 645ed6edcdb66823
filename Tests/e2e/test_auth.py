"""SASL: each mechanism selected explicitly, wrong credentials, non-ASCII (Chinese) accounts."""
import pytest

from xmpp_client import Account, LoginFailed, async_test

SCRAM = ["SCRAM-SHA-1", "SCRAM-SHA-256"]


def offered(client) -> set[str]:
    """Mechanisms offered on the encrypted stream (the last features before SASL)."""
    feats = [f for f in client.features_seen
             if f.find("{urn:ietf:params:xml:ns:xmpp-sasl}mechanisms") is not None]
    return {m.text for m in feats[-1].iter("{urn:ietf:params:xml:ns:xmpp-sasl}mechanism")}


def require_scram(server, mech):
    if mech not in server.scram_mechanisms:
        pytest.skip(f"{server.kind} is configured to store keys for "
                    f"{sorted(server.scram_mechanisms)} only (Prosody keeps one hash; "
                    f"run with E2E_PROSODY_HASH={mech[6:]} to test {mech})")


@pytest.mark.parametrize("mech", SCRAM)
@async_test()
async def test_scram_login(xmpp, server, mech):
    require_scram(server, mech)
    alice = xmpp.new_user("alice")
    c = await xmpp.login(alice, "scram", mechanisms=[mech])
    assert mech in offered(c)
    assert c.sasl_mechanism == mech
    assert c.boundjid.full == f"{alice.jid}/scram"


@async_test()
async def test_plain_login_over_tls(xmpp, server):
    alice = xmpp.new_user("alice")
    c = await xmpp.login(alice, "plain", mechanisms=["PLAIN"])
    assert c.tls_active
    assert "PLAIN" in offered(c)
    assert c.sasl_mechanism == "PLAIN"


@pytest.mark.parametrize("which", ["PLAIN", "SCRAM"])
@async_test()
async def test_wrong_password_is_not_authorized(xmpp, server, which):
    mech = "PLAIN" if which == "PLAIN" else sorted(server.scram_mechanisms)[-1]
    alice = xmpp.new_user("alice")
    with pytest.raises(LoginFailed) as exc:
        await xmpp.login(alice, password=alice.password + "x", mechanisms=[mech])
    assert exc.value.condition == "not-authorized", exc.value


@pytest.mark.parametrize("which", ["PLAIN", "SCRAM"])
@async_test()
async def test_unknown_user_is_not_authorized(xmpp, server, which):
    """Same answer as a wrong password: no account enumeration."""
    mech = "PLAIN" if which == "PLAIN" else sorted(server.scram_mechanisms)[-1]
    ghost = Account("nobody-here", server.domain, "whatever-pw")
    with pytest.raises(LoginFailed) as exc:
        await xmpp.login(ghost, mechanisms=[mech])
    assert exc.value.condition == "not-authorized", exc.value


@pytest.mark.parametrize("which", ["PLAIN", "SCRAM"])
@async_test()
async def test_chinese_username_and_message(xmpp, server, which):
    """A Chinese localpart and password log in (UTF-8 in SASL, SASLprep) and a Chinese body
    travels unchanged in both directions."""
    mech = "PLAIN" if which == "PLAIN" else sorted(server.scram_mechanisms)[-1]
    suffix = "甲" if which == "PLAIN" else "乙"
    zhang = xmpp.new_user(local=f"张伟{suffix}", password="密码-秘密")
    li = xmpp.new_user(local=f"李娜{suffix}", password="口令-secret")
    a = await xmpp.login(zhang, "电脑", mechanisms=[mech])
    b = await xmpp.login(li, "手机", mechanisms=[mech])
    assert a.boundjid.full == f"张伟{suffix}@{server.domain}/电脑"
    text = "你好，李娜！今天下午三点在三楼会议室开会。🙂"
    a.send_message(mto=f"{li.jid}/手机", mbody=text, mtype="chat")
    m = await b.wait_message(sender=f"{zhang.jid}/电脑")
    assert m["body"] == text
    b.send_message(mto=zhang.jid, mbody="收到，谢谢！", mtype="chat")
    m = await a.wait_message(sender=li.jid)
    assert m["body"] == "收到，谢谢！"
