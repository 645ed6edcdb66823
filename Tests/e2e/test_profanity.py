"""A real terminal client: two Profanity instances under tmux chat over STARTTLS.
See PROFANITY.md for the recipe and its gotchas."""
import shutil
import time

import pytest

from xmpp_client import Profanity, Tmux

pytestmark = [
    pytest.mark.profanity,
    pytest.mark.skipif(not (shutil.which("profanity") and shutil.which("tmux")),
                       reason="profanity/tmux not installed (run scripts/e2e-deps.sh)"),
]


@pytest.mark.timeout(120)
def test_profanity_two_clients_chat(xmpp, server, tmp_path):
    alice_acc, bob_acc = xmpp.new_user("alice"), xmpp.new_user("bob")
    tmux = Tmux()
    alice = Profanity(tmux, "alice", str(tmp_path / "alice"))
    bob = Profanity(tmux, "bob", str(tmp_path / "bob"))
    try:
        for client, acc in ((alice, alice_acc), (bob, bob_acc)):
            client.start()
            client.connect(acc.jid, acc.password, server.host, server.c2s_port)

        # alice opens a chat with bob; bob sees a notification in his console window
        alice.type(f"/msg {bob_acc.jid} hello bob, this is alice")
        bob.wait_screen(f"<< chat message: {alice_acc.jid}")
        # further lines typed in alice's chat window go to bob; Chinese included
        alice.type("你好，鲍勃！下午三点开会。")
        bob.type("/win 2")
        screen = bob.wait_screen("你好，鲍勃！下午三点开会。")
        assert "hello bob, this is alice" in screen

        # bob answers from his chat window; alice's chat window shows it
        bob.type("收到，谢谢 👍 ok")
        alice.wait_screen("收到，谢谢")
        assert f"{bob_acc.jid}" in alice.screen()
    finally:
        alice.quit()
        bob.quit()
        time.sleep(0.5)
        tmux.kill_server()


@pytest.mark.timeout(60)
def test_profanity_wrong_password(xmpp, server, tmp_path):
    acc = xmpp.new_user("carol")
    tmux = Tmux()
    carol = Profanity(tmux, "carol", str(tmp_path / "carol"))
    try:
        carol.start()
        carol.type(f"/connect {acc.jid} server {server.host} port {server.c2s_port} tls trust")
        carol.wait_screen("Enter password:")
        carol.type("not-the-password")
        carol.wait_screen("Login failed.")
    finally:
        carol.quit()
        time.sleep(0.3)
        tmux.kill_server()
