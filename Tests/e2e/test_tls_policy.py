"""TLS policy on the direct-TLS port (docs/security.md): TLS 1.2 and 1.3 only, and on TLS 1.2
only forward-secret AEAD suites (ECDHE with AES-GCM or ChaCha20-Poly1305). The client here is
made as permissive as OpenSSL allows (security level 0), so a refusal is the server's."""
import socket
import ssl
import warnings

import pytest

from conftest import server_kind

pytestmark = pytest.mark.skipif(server_kind() != "switchboard", reason="Switchboard's TLS policy")


def handshake(server, *, version: ssl.TLSVersion, ciphers: str | None = None) -> tuple[str, str]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():  # TLS 1.0/1.1 are deprecated in Python too; that is the point
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ctx.maximum_version = version
    ctx.set_ciphers((ciphers or "ALL") + ":@SECLEVEL=0")
    with socket.create_connection((server.host, server.tls_port), timeout=5) as raw:
        with ctx.wrap_socket(raw) as tls:
            return tls.version(), tls.cipher()[0]


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
def test_old_protocol_versions_are_refused(server, version):
    with pytest.raises(ssl.SSLError) as refused:
        handshake(server, version=version)
    # The client offered it (security level 0); the server answered with an alert.
    assert "ALERT_PROTOCOL_VERSION" in str(refused.value), refused.value


@pytest.mark.parametrize("cipher", ["ECDHE-ECDSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA384", "AES128-GCM-SHA256",
                                    "AES256-SHA", "ECDHE-ECDSA-NULL-SHA", "DES-CBC3-SHA"])
def test_weak_tls12_suites_are_refused(server, cipher):
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).set_ciphers(cipher + ":@SECLEVEL=0")
    except ssl.SSLError:
        pytest.skip(f"this OpenSSL cannot offer {cipher}")
    with pytest.raises(ssl.SSLError) as refused:
        handshake(server, version=ssl.TLSVersion.TLSv1_2, ciphers=cipher)
    assert "ALERT_HANDSHAKE_FAILURE" in str(refused.value), refused.value  # the server's answer


@pytest.mark.parametrize("cipher", ["ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384",
                                    "ECDHE-ECDSA-CHACHA20-POLY1305"])
def test_modern_tls12_suites_work(server, cipher):
    assert handshake(server, version=ssl.TLSVersion.TLSv1_2, ciphers=cipher) == ("TLSv1.2", cipher)


def test_tls13_works(server):
    version, cipher = handshake(server, version=ssl.TLSVersion.TLSv1_3)
    assert version == "TLSv1.3" and cipher in {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384",
                                                "TLS_CHACHA20_POLY1305_SHA256"}
