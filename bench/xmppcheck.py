"""Tiny standard-library XMPP client used as a pre-flight check of each server under test.

It proves, before any load is applied, that a server is configured the way the benchmark
assumes: the c2s port answers a stream header with SCRAM mechanisms, STARTTLS and in-band
registration; XEP-0077 registration from loopback works; SCRAM-SHA-1 (or -256) login and
resource binding work over plain TCP and over STARTTLS; the WebSocket endpoint (RFC 7395)
upgrades and offers the same mechanisms.

Python 3 standard library only. Not a load generator (see Sources/SwitchboardBench).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import os
import socket
import ssl
import struct
import xml.etree.ElementTree as ET

NS_STREAM = "http://etherx.jabber.org/streams"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_TLS = "urn:ietf:params:xml:ns:xmpp-tls"
NS_BIND = "urn:ietf:params:xml:ns:xmpp-bind"
NS_REGISTER_FEATURE = "http://jabber.org/features/iq-register"
NS_REGISTER = "jabber:iq:register"
NS_FRAMING = "urn:ietf:params:xml:ns:xmpp-framing"


class CheckError(Exception):
    pass


def _q(ns: str, name: str) -> str:
    return f"{{{ns}}}{name}"


class _Stream:
    """One XMPP stream over a TCP socket (optionally upgraded to TLS with STARTTLS)."""

    def __init__(self, host: str, port: int, domain: str, timeout: float = 10.0):
        self.host, self.port, self.domain = host, port, domain
        self.sock: socket.socket = socket.create_connection((host, port), timeout=timeout)
        self._restart()

    def _restart(self) -> None:
        self.parser = ET.XMLPullParser(events=("start", "end"))
        self.depth = 0
        self.pending: list[ET.Element] = []
        self.sock.sendall(
            (f"<?xml version='1.0'?><stream:stream to='{self.domain}' version='1.0' "
             "xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>").encode())

    def next_element(self) -> ET.Element:
        while not self.pending:
            data = self.sock.recv(65536)
            if not data:
                raise CheckError("server closed the connection")
            self.parser.feed(data)
            for event, elem in self.parser.read_events():
                if event == "start":
                    self.depth += 1
                else:
                    self.depth -= 1
                    if self.depth == 1:
                        self.pending.append(elem)
                    elif self.depth == 0:
                        raise CheckError("server closed the stream")
        return self.pending.pop(0)

    def features(self) -> ET.Element:
        el = self.next_element()
        if el.tag != _q(NS_STREAM, "features"):
            raise CheckError(f"expected stream:features, got {el.tag}: {ET.tostring(el)[:300]!r}")
        return el

    def send(self, xml: str) -> None:
        self.sock.sendall(xml.encode())

    def starttls(self) -> None:
        self.send(f"<starttls xmlns='{NS_TLS}'/>")
        el = self.next_element()
        if el.tag != _q(NS_TLS, "proceed"):
            raise CheckError(f"STARTTLS refused: {ET.tostring(el)[:300]!r}")
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        self.sock = ctx.wrap_socket(self.sock, server_hostname=self.domain)
        self._restart()

    def close(self) -> None:
        try:
            self.send("</stream:stream>")
        except OSError:
            pass
        self.sock.close()


def mechanisms(features: ET.Element) -> list[str]:
    mechs = features.find(_q(NS_SASL, "mechanisms"))
    return [] if mechs is None else [m.text or "" for m in mechs]


def describe(features: ET.Element) -> dict:
    return {
        "mechanisms": mechanisms(features),
        "starttls": features.find(_q(NS_TLS, "starttls")) is not None,
        "register": features.find(_q(NS_REGISTER_FEATURE, "register")) is not None,
    }


def probe(host: str, port: int, domain: str) -> dict:
    """Stream header -> stream:features, as a dict."""
    s = _Stream(host, port, domain)
    try:
        return describe(s.features())
    finally:
        s.close()


def register(host: str, port: int, domain: str, user: str, password: str, starttls: bool = False) -> str:
    """XEP-0077 in-band registration. Returns 'created' or 'exists'."""
    s = _Stream(host, port, domain)
    try:
        f = s.features()
        if starttls:
            s.starttls()
            f = s.features()
        s.send(f"<iq type='set' id='reg1'><query xmlns='{NS_REGISTER}'>"
               f"<username>{user}</username><password>{password}</password></query></iq>")
        el = s.next_element()
        kind = el.get("type")
        if kind == "result":
            return "created"
        err = el.find("{jabber:client}error")
        if err is not None and err.find("{urn:ietf:params:xml:ns:xmpp-stanzas}conflict") is not None:
            return "exists"
        raise CheckError(f"registration of {user} failed: {ET.tostring(el)[:400]!r}")
    finally:
        s.close()


def _hi(password: bytes, salt: bytes, iterations: int, hname: str) -> bytes:
    return hashlib.pbkdf2_hmac(hname, password, salt, iterations)


def login(host: str, port: int, domain: str, user: str, password: str,
          mechanism: str = "SCRAM-SHA-1", starttls: bool = False, disco: bool = False) -> dict:
    """SCRAM-SHA-1/-256 login and resource binding. Returns {'jid':..., 'iterations':...}.

    With disco=True also the XEP-0030 features of the account's bare JID and of the domain
    ('account_features', 'domain_features')."""
    hname = {"SCRAM-SHA-1": "sha1", "SCRAM-SHA-256": "sha256"}[mechanism]
    s = _Stream(host, port, domain)
    try:
        f = s.features()
        if starttls:
            s.starttls()
            f = s.features()
        if mechanism not in mechanisms(f):
            raise CheckError(f"{mechanism} not offered: {mechanisms(f)}")
        cnonce = base64.b64encode(os.urandom(18)).decode()
        first_bare = f"n={user},r={cnonce}"
        s.send(f"<auth xmlns='{NS_SASL}' mechanism='{mechanism}'>"
               f"{base64.b64encode(('n,,' + first_bare).encode()).decode()}</auth>")
        el = s.next_element()
        if el.tag != _q(NS_SASL, "challenge"):
            raise CheckError(f"expected SASL challenge, got {ET.tostring(el)[:300]!r}")
        server_first = base64.b64decode(el.text or "").decode()
        attrs = dict(kv.split("=", 1) for kv in server_first.split(","))
        if not attrs["r"].startswith(cnonce):
            raise CheckError("server nonce does not extend ours")
        salt, iterations = base64.b64decode(attrs["s"]), int(attrs["i"])
        salted = _hi(password.encode(), salt, iterations, hname)
        client_key = hmac.new(salted, b"Client Key", hname).digest()
        stored_key = hashlib.new(hname, client_key).digest()
        final_wo_proof = f"c=biws,r={attrs['r']}"
        auth_message = f"{first_bare},{server_first},{final_wo_proof}".encode()
        client_sig = hmac.new(stored_key, auth_message, hname).digest()
        proof = bytes(a ^ b for a, b in zip(client_key, client_sig))
        final = f"{final_wo_proof},p={base64.b64encode(proof).decode()}"
        s.send(f"<response xmlns='{NS_SASL}'>{base64.b64encode(final.encode()).decode()}</response>")
        el = s.next_element()
        if el.tag != _q(NS_SASL, "success"):
            raise CheckError(f"SASL failed: {ET.tostring(el)[:300]!r}")
        server_key = hmac.new(salted, b"Server Key", hname).digest()
        want = base64.b64encode(hmac.new(server_key, auth_message, hname).digest()).decode()
        got = base64.b64decode(el.text or "").decode()
        if got != f"v={want}":
            raise CheckError("server signature mismatch")
        s._restart()
        f = s.features()
        if f.find(_q(NS_BIND, "bind")) is None:
            raise CheckError("no bind feature after SASL")
        s.send(f"<iq type='set' id='b1'><bind xmlns='{NS_BIND}'><resource>check</resource></bind></iq>")
        el = s.next_element()
        jid = el.find(f"{_q(NS_BIND, 'bind')}/{_q(NS_BIND, 'jid')}")
        if el.get("type") != "result" or jid is None:
            raise CheckError(f"bind failed: {ET.tostring(el)[:300]!r}")
        out = {"jid": jid.text, "iterations": iterations}
        if disco:
            s.send("<presence/>")
            bare = (jid.text or "").split("/")[0]
            for key, target in (("account_features", bare), ("domain_features", domain)):
                s.send(f"<iq type='get' id='d-{key}' to='{target}'>"
                       "<query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
                while True:
                    el = s.next_element()
                    if el.tag == "{jabber:client}iq" and el.get("id") == f"d-{key}":
                        break
                out[key] = sorted(f.get("var", "") for f in
                                  el.iter("{http://jabber.org/protocol/disco#info}feature"))
        return out
    finally:
        s.close()


def websocket_probe(host: str, port: int, path: str, domain: str) -> dict:
    """RFC 6455 upgrade with subprotocol 'xmpp', RFC 7395 <open/>, returns the features."""
    sock = socket.create_connection((host, port), timeout=10)
    try:
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {domain}\r\nUpgrade: websocket\r\n"
                      f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                      "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: xmpp\r\n\r\n").encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(4096)
            if not chunk:
                raise CheckError(f"connection closed during upgrade: {buf[:300]!r}")
            buf += chunk
        head, rest = buf.split(b"\r\n\r\n", 1)
        lines = head.decode(errors="replace").split("\r\n")
        if " 101 " not in lines[0] + " ":
            raise CheckError(f"WebSocket upgrade refused: {lines[0]}")
        hdrs = {ln.split(":", 1)[0].strip().lower(): ln.split(":", 1)[1].strip() for ln in lines[1:] if ":" in ln}
        want = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
        if hdrs.get("sec-websocket-accept") != want:
            raise CheckError("bad Sec-WebSocket-Accept")
        if hdrs.get("sec-websocket-protocol", "").lower() != "xmpp":
            raise CheckError(f"subprotocol not xmpp: {hdrs.get('sec-websocket-protocol')!r}")

        def send_text(text: str) -> None:
            payload, mask = text.encode(), os.urandom(4)
            n = len(payload)
            hdr = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack(">H", n))
            sock.sendall(hdr + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

        def recv_exact(n: int) -> bytes:
            nonlocal rest
            while len(rest) < n:
                chunk = sock.recv(65536)
                if not chunk:
                    raise CheckError("closed")
                rest += chunk
            out, rest = rest[:n], rest[n:]
            return out

        def recv_text() -> str:
            b0, b1 = recv_exact(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", recv_exact(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", recv_exact(8))[0]
            data = recv_exact(n)
            if b0 & 0x0F == 0x8:
                raise CheckError(f"server closed the WebSocket: {data!r}")
            return data.decode()

        send_text(f"<open xmlns='{NS_FRAMING}' to='{domain}' version='1.0'/>")
        frames = []
        for _ in range(4):
            text = recv_text()
            frames.append(text)
            if "features" in text:
                el = ET.fromstring(text)
                return describe(el)
        raise CheckError(f"no stream:features over WebSocket: {frames!r}")
    finally:
        sock.close()
