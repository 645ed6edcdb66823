"""Certificate login (XEP-0178): certificates from `switchboard ca`, presented by slixmpp.

A server of its own (module scope) whose data directory holds a CA made by ``switchboard ca
init`` before it starts, with ``certificate_login: {required_roles: [admin]}``. Every
certificate is issued by ``switchboard ca issue`` (PKCS#12 + PEM files) and read back with the
openssl command, so the tests cover the CLI as an administrator runs it.
"""
from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

from conftest import Switchboard, server_kind
from xmpp_client import Account, LoginFailed, Session, async_test

pytestmark = pytest.mark.skipif(server_kind() != "switchboard",
                                reason="certificate issuing uses switchboard's own CA commands")

P12_PASSWORD = "transport-secret"


class CertServer(Switchboard):
    """Switchboard with a CA and the certificate_login policy."""

    def __init__(self, tmp: Path):
        super().__init__(tmp)
        with open(self.config, "a") as f:
            f.write("certificate_login: {required_roles: [admin]}\n")
            f.write("directory: {refresh_interval_ms: 100}\n")

    def cli(self, *args: str, stdin: str | None = None, ok: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run([str(self.bin), *args, "--config", str(self.config)], cwd=self.tmp,
                           input=stdin.encode() if stdin is not None else None,
                           capture_output=True, timeout=60)
        if ok:
            assert r.returncode == 0, (f"switchboard {' '.join(args)} failed ({r.returncode}):\n"
                                       f"{r.stdout.decode(errors='replace')}\n{r.stderr.decode(errors='replace')}")
        return r

    def issue(self, local: str) -> tuple[Path, Path, Path]:
        """``ca issue`` with a PKCS#12 password on stdin; returns (p12, cert PEM, key PEM)."""
        out = self.tmp / f"{local}.p12"
        self.cli("ca", "issue", local, "--out", str(out), "--password-stdin", stdin=P12_PASSWORD + "\n")
        return out, self.tmp / f"{local}-cert.pem", self.tmp / f"{local}-key.pem"


@pytest.fixture(scope="module")
def cert_server(request):
    tmp = Path(tempfile.mkdtemp(prefix="e2e-cert-"))
    srv = CertServer(tmp)
    srv.cli("ca", "init", "--subject", "CN=Example Corp IM CA, O=Example Corp", "--days", "30")
    srv.start()
    request.config._e2e_servers.append(srv)
    yield srv
    request.config._e2e_servers.remove(srv)
    code = srv.stop()
    shutil.rmtree(tmp, ignore_errors=True)
    assert code == 0, f"switchboard exited with {code} after SIGTERM\n{srv.logs()}"


async def cert_login(srv: CertServer, session: Session, account, cert: Path, key: Path, *,
                     transport: str = "starttls", authzid: str = "", mechanisms=("EXTERNAL",)):
    c = session.client(account, "token", mechanisms=list(mechanisms))
    c.certfile, c.keyfile = str(cert), str(key)
    c.credentials["authzid"] = authzid
    port = srv.c2s_port if transport == "starttls" else srv.tls_port
    return await c.start(srv.host, port, transport)


def p12_certificate(p12: Path) -> str:
    """The certificates in a PKCS#12 file, as `openssl pkcs12` reads them with the password."""
    r = subprocess.run(["openssl", "pkcs12", "-in", str(p12), "-passin", f"pass:{P12_PASSWORD}", "-nokeys"],
                       capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    return r.stdout.decode()


@pytest.mark.parametrize("transport", ["starttls", "direct_tls"])
@async_test()
async def test_external_login_with_issued_certificate(cert_server, transport):
    session = Session(cert_server)
    try:
        alice = session.new_user("alice")
        p12, cert, key = cert_server.issue(alice.local)
        # The PKCS#12 bundle opens with its password and carries the user's certificate and the CA.
        bundle = p12_certificate(p12)
        assert alice.jid in bundle
        assert bundle.count("BEGIN CERTIFICATE") == 2
        text = subprocess.run(["openssl", "x509", "-in", str(cert), "-noout", "-text"],
                              capture_output=True, check=True).stdout.decode()
        assert f"XmppAddr::{alice.jid}" in text  # subjectAltName otherName id-on-xmppAddr
        assert "TLS Web Client Authentication" in text
        authzid = alice.jid if transport == "direct_tls" else ""
        c = await cert_login(cert_server, session, alice, cert, key, transport=transport, authzid=authzid)
        assert c.tls_active
        assert c.sasl_mechanism == "EXTERNAL"
        assert c.boundjid.bare == alice.jid
        offered = {m.text for m in c.features_seen[-2].iter("{urn:ietf:params:xml:ns:xmpp-sasl}mechanism")}
        assert "EXTERNAL" in offered
        await c.roundtrip()
    finally:
        await session.aclose()


@async_test()
async def test_without_certificate_external_is_not_offered(cert_server):
    session = Session(cert_server)
    try:
        bob = session.new_user("bob")
        c = await session.login(bob, "pw", mechanisms=["SCRAM-SHA-256"])
        offered = {m.text for f in c.features_seen
                   for m in f.iter("{urn:ietf:params:xml:ns:xmpp-sasl}mechanism")}
        assert offered, "no mechanisms seen"
        assert "EXTERNAL" not in offered
    finally:
        await session.aclose()


@async_test()
async def test_revoked_certificate_is_refused(cert_server):
    session = Session(cert_server)
    try:
        carol = session.new_user("carol")
        _, cert, key = cert_server.issue(carol.local)
        listed = cert_server.cli("ca", "list", carol.local).stdout.decode()
        serial = listed.split()[0]
        assert "valid" in listed
        cert_server.cli("ca", "revoke", serial, "--reason", "keyCompromise")
        assert "revoked" in cert_server.cli("ca", "list", carol.local).stdout.decode()
        with pytest.raises(LoginFailed) as exc:
            await cert_login(cert_server, session, carol, cert, key)
        assert exc.value.condition == "not-authorized", exc.value
        # The published CRL is signed by the CA and lists the serial.
        crl = cert_server.tmp / "im.crl"
        cert_server.cli("ca", "crl", "--out", str(crl))
        ca = cert_server.tmp / "data" / "ca" / "ca.pem"
        r = subprocess.run(["openssl", "crl", "-in", str(crl), "-CAfile", str(ca), "-noout", "-text"],
                           capture_output=True, timeout=30)
        assert r.returncode == 0, r.stderr.decode(errors="replace")
        assert "verify OK" in (r.stdout + r.stderr).decode()
        assert serial.upper() in r.stdout.decode().replace(":", "").upper()
    finally:
        await session.aclose()


@async_test()
async def test_certificate_of_another_user_is_refused(cert_server):
    session = Session(cert_server)
    try:
        dave = session.new_user("dave")
        erin = session.new_user("erin")
        _, cert, key = cert_server.issue(dave.local)
        with pytest.raises(LoginFailed) as exc:
            await cert_login(cert_server, session, erin, cert, key, authzid=erin.jid)
        assert exc.value.condition == "not-authorized", exc.value
    finally:
        await session.aclose()


@async_test()
async def test_admin_must_use_certificate(cert_server):
    session = Session(cert_server)
    try:
        admin = Account(f"boss-{uuid.uuid4().hex[:6]}", cert_server.domain, "boss-password")
        cert_server.cli("org", "user", "add", admin.local, "--name", "The Boss", "--password-stdin",
                        stdin=admin.password + "\n")
        cert_server.cli("org", "role", "grant", "admin", admin.local)
        _, cert, key = cert_server.issue(admin.local)
        # The server applies directory changes within refresh_interval_ms: wait until the
        # password is refused (it is accepted until then).
        refused = None
        for _ in range(50):
            try:
                c = await session.login(admin, "pw", mechanisms=["SCRAM-SHA-256"], roster=False, presence=False)
                await c.stop()
            except LoginFailed as e:
                refused = e
                break
            await asyncio.sleep(0.2)
        assert refused is not None, "the admin's password login was never refused"
        assert refused.condition == "not-authorized", refused
        # With the certificate the same admin gets in.
        c = await cert_login(cert_server, session, admin, cert, key, transport="direct_tls")
        assert c.sasl_mechanism == "EXTERNAL"
        assert c.boundjid.bare == admin.jid
    finally:
        await session.aclose()
