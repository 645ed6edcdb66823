"""Nothing acknowledged is lost when the server process is killed (SIGKILL, no shutdown).

Archive copies and audit records are made durable in the message journal before a XEP-0198
acknowledgement goes out, and applied to the database about once a second. Killing the
process right after the acknowledgement leaves them in the journal only; the restarted server
must apply them before it serves anyone, so every acknowledged message is in both archives,
exactly once."""
from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from conftest import running_server, server_kind
from xmpp_client import NS_CLIENT, NS_SM, Session, async_test

pytestmark = pytest.mark.skipif(server_kind() != "switchboard", reason="kills and restarts the Switchboard process")

N = 300


@pytest.fixture(scope="module")
def crashable(request):
    with running_server(request.config) as srv:
        yield srv


def bodies(results) -> list[str]:
    return [r.message.findtext(f"{{{NS_CLIENT}}}body") for r in results]


async def whole_archive(client, with_jid: str) -> list[str]:
    found, after = [], None
    while True:
        results, fin = await client.mam_query(with_jid=with_jid, max_items=100, after=after)
        found += bodies(results)
        if fin.get("complete") in ("true", "1") or not results:
            return found
        after = results[-1].archive_id


@async_test(timeout=120)
async def test_acknowledged_messages_survive_sigkill(crashable):
    xmpp = Session(crashable)
    alice_acc, bob_acc = xmpp.new_user("alice"), xmpp.new_user("bob")
    try:
        alice = await xmpp.login(alice_acc, "phone", stream_management=True)
        bob = await xmpp.login(bob_acc, "desk")
        sent = [f"crash-safe {i} 消息" for i in range(N)]
        for body in sent:
            alice.send_chat(bob_acc.jid, body)
        await alice.roundtrip()  # everything queued is on the wire (and handled)
        expected = alice.sm.seq
        assert expected >= N, expected
        alice.sm.request_ack()
        await alice.wait_sm("a", lambda e: int(e.get("h")) == expected, f"<a h='{expected}'/>")
        # Acknowledged: kill at once, before the journal's next apply to the database.
        crashable.proc.send_signal(signal.SIGKILL)
        crashable.proc.wait()
    finally:
        await xmpp.aclose()

    journal = Path(crashable.tmp) / "data" / "journal"
    left = sum(p.stat().st_size for p in journal.glob("*.journal"))
    assert left > 0, "the journal was empty at the kill: this test no longer exercises recovery"

    crashable.status_file.unlink()
    crashable.start()
    assert "journal recovered" in crashable.logs(tail=200), crashable.logs()
    xmpp = Session(crashable)
    try:
        alice = await xmpp.login(alice_acc, "desk")
        bob = await xmpp.login(bob_acc, "desk")
        assert await whole_archive(alice, bob_acc.jid) == sent, "alice's archive lost or repeated messages"
        assert await whole_archive(bob, alice_acc.jid) == sent, "bob's archive lost or repeated messages"
    finally:
        await xmpp.aclose()
