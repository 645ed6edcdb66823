"""Client-side helpers for the end-to-end tests.

Everything that talks to the server under test lives here, so that the test modules only
say *what* they check:

* :func:`async_test` runs an ``async def`` test under a hard timeout and closes every client
  the test opened (through its :class:`Session`).
* :class:`Session` (the ``xmpp`` fixture) creates accounts and logged-in slixmpp clients.
* :class:`Client` is a slixmpp ``ClientXMPP`` that records every stanza it receives, so a test
  can ``await client.wait_message(...)`` without racing the network. It also speaks the
  extensions the newer tests need: stream management (XEP-0198, opt-in per client), carbons
  (XEP-0280), blocking (XEP-0191), archive queries (XEP-0313 + XEP-0059) and client state
  indication (XEP-0352).
* :class:`RawStream` is a plain-socket XMPP speaker for the bad-input tests.
* :class:`WebSocketClient` is a minimal RFC 7395 client (slixmpp has no WebSocket transport).
"""
from __future__ import annotations

import asyncio
import base64
import datetime as dt
import functools
import hashlib
import hmac
import os
import re
import secrets
import socket
import ssl
import time
import unicodedata
import uuid
import xml.etree.ElementTree as ET
from typing import Any, Callable, Iterable, NamedTuple

import slixmpp
from slixmpp.exceptions import IqError, IqTimeout

# Seconds a single wait (login, one stanza) may take before the test fails.
WAIT = float(os.environ.get("E2E_WAIT", "10"))

NS_CLIENT = "jabber:client"
NS_STREAM = "http://etherx.jabber.org/streams"
NS_STREAMS_ERR = "urn:ietf:params:xml:ns:xmpp-streams"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_BIND = "urn:ietf:params:xml:ns:xmpp-bind"
NS_ROSTER = "jabber:iq:roster"
NS_DELAY = "urn:xmpp:delay"
NS_FRAMING = "urn:ietf:params:xml:ns:xmpp-framing"
NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"
NS_SM = "urn:xmpp:sm:3"
NS_CARBONS = "urn:xmpp:carbons:2"
NS_FORWARD = "urn:xmpp:forward:0"
NS_BLOCKING = "urn:xmpp:blocking"
NS_BLOCKING_ERRORS = "urn:xmpp:blocking:errors"
NS_MAM = "urn:xmpp:mam:2"
NS_RSM = "http://jabber.org/protocol/rsm"
NS_SID = "urn:xmpp:sid:0"
NS_CSI = "urn:xmpp:csi:0"

# Localparts made by Session.new_user are unique per test run.
_user_counter = 0


def insecure_ssl_context() -> ssl.SSLContext:
    """TLS context that accepts the test server's self-signed certificate."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def async_test(timeout: float = 60):
    """Decorator: run an ``async def`` pytest test with asyncio.run under a hard timeout.

    Any :class:`Session` passed as an argument (the ``xmpp`` fixture) is closed afterwards,
    inside the same event loop, so no client outlives its test.
    """

    def deco(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            sessions = [a for a in list(args) + list(kwargs.values()) if isinstance(a, Session)]

            async def runner():
                try:
                    async with asyncio.timeout(timeout) as deadline:
                        return await fn(*args, **kwargs)
                except TimeoutError:
                    if deadline.expired():
                        raise AssertionError(f"test exceeded its hard timeout of {timeout} s") from None
                    raise
                finally:
                    for s in sessions:
                        await s.aclose()

            return asyncio.run(runner())

        return wrapper

    return deco


async def eventually(condition: Callable[[], bool], what: str, timeout: float = WAIT):
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        await asyncio.sleep(0.05)


class LoginFailed(Exception):
    """Raised by :meth:`Client.start` when the login did not produce a session."""

    def __init__(self, reason: str, condition: str | None = None):
        super().__init__(f"{reason} (condition={condition})")
        self.reason = reason
        self.condition = condition


def child_names(elem: ET.Element) -> list[str]:
    return [c.tag for c in elem]


def error_condition(stanza) -> str | None:
    """The defined condition of a stanza error (``<error>``) as a bare element name."""
    err = stanza.xml.find(f"{{{NS_CLIENT}}}error")
    if err is None:
        return None
    for c in err:
        if c.tag.startswith(f"{{{NS_STANZAS}}}") and not c.tag.endswith("}text"):
            return c.tag.split("}", 1)[1]
    return None


class ArchivedMessage(NamedTuple):
    """One XEP-0313 result: the archive id and the <forwarded/> element (which holds the
    original <message/> and a XEP-0203 <delay/> with the archiving time)."""

    archive_id: str
    forwarded: ET.Element

    @property
    def message(self) -> ET.Element:
        msg = self.forwarded.find(f"{{{NS_CLIENT}}}message")
        assert msg is not None, f"MAM result {self.archive_id} without a forwarded <message/>"
        return msg

    @property
    def message_id(self) -> str | None:
        return self.message.get("id")

    @property
    def body(self) -> str | None:
        return self.message.findtext(f"{{{NS_CLIENT}}}body")

    @property
    def stamp(self) -> "dt.datetime":
        return delay_stamp(self.forwarded)


def delay_stamp(message) -> "dt.datetime":
    """The XEP-0203 <delay/> stamp of a message (timezone-aware); fails if there is none."""
    xml = message if isinstance(message, ET.Element) else message.xml
    delay = xml.find(f"{{{NS_DELAY}}}delay")
    assert delay is not None, f"message without XEP-0203 <delay/>: {ET.tostring(xml, encoding='unicode')}"
    stamp = dt.datetime.fromisoformat(delay.get("stamp").replace("Z", "+00:00"))
    assert stamp.tzinfo is not None, f"delay stamp without a time zone: {delay.get('stamp')}"
    return stamp


def stanza_ids(message, by: str) -> list[str]:
    """The ids of the XEP-0359 <stanza-id/> elements of ``message`` set by ``by``."""
    xml = message if isinstance(message, ET.Element) else message.xml
    return [e.get("id") for e in xml.findall(f"{{{NS_SID}}}stanza-id") if e.get("by") == by]


def carbon(stanza, direction: str) -> ET.Element | None:
    """The forwarded <message/> of a XEP-0280 carbon (``direction``: "sent" or "received"),
    or None if ``stanza`` is no such carbon."""
    if stanza.name != "message":
        return None
    return stanza.xml.find(f"{{{NS_CARBONS}}}{direction}/{{{NS_FORWARD}}}forwarded/{{{NS_CLIENT}}}message")


class Client(slixmpp.ClientXMPP):
    """slixmpp client that records everything it receives.

    Received stanzas (and XEP-0198 elements such as ``<a/>`` or ``<resumed/>``) are appended to
    ``self.received`` (in order, across reconnections) and a test awaits them with
    :meth:`wait_for`; a stanza matched once is consumed, so two waits for "a message from bob"
    see two different messages.

    ``stream_management=True`` loads slixmpp's XEP-0198 plugin: it enables stream management
    with resumption after binding, answers the server's ``<r/>`` and resumes on reconnection.
    """

    def __init__(self, jid: str, password: str, *, mechanisms: Iterable[str] | None = None,
                 stream_management: bool = False):
        super().__init__(jid, password)
        self.ssl_context = insecure_ssl_context()
        if mechanisms:
            self.plugin["feature_mechanisms"].use_mechs = set(mechanisms)
        # Subscription handling is done explicitly by the tests.
        self.auto_authorize = None
        self.auto_subscribe = False
        # These only add stanza types and helpers; none sends anything by itself.
        for plugin in ("xep_0030", "xep_0049", "xep_0054", "xep_0092", "xep_0199",
                       "xep_0202", "xep_0203", "xep_0191", "xep_0280", "xep_0313", "xep_0352",
                       "xep_0359"):
            self.register_plugin(plugin)
        if stream_management:
            self.register_plugin("xep_0198")
        self.received: list[Any] = []
        self._consumed: set[int] = set()
        self._changed = asyncio.Event()
        self.stream_errors: list[Any] = []
        self.sasl_failures: list[Any] = []
        #: every <stream:features/> received, in order (before TLS, after TLS, after SASL)
        self.features_seen: list[ET.Element] = []
        self.add_filter("in", self._record)
        self.add_event_handler("stream_error", self._on_stream_error)
        self.add_event_handler("failed_auth", self._on_failed_auth)
        self.connection_closed = asyncio.Event()
        self._zombie_sockets: list[socket.socket] = []
        self.add_event_handler("disconnected", self._on_disconnected)

    # -- recording -------------------------------------------------------------------------
    def _record(self, stanza):
        tag = stanza.xml.tag
        if tag == f"{{{NS_STREAM}}}features":
            self.features_seen.append(stanza.xml)
        if tag.startswith(f"{{{NS_CLIENT}}}") or tag.startswith(f"{{{NS_SM}}}"):
            self.received.append(stanza)
            self._changed.set()
        return stanza

    def _on_stream_error(self, err):
        self.stream_errors.append(err)
        self._changed.set()

    def _on_disconnected(self, _reason):
        self.connection_closed.set()
        self._changed.set()

    def _on_failed_auth(self, failure):
        self.sasl_failures.append(failure)
        self._changed.set()

    async def wait_for(self, predicate: Callable[[Any], bool], what: str = "stanza",
                       timeout: float = WAIT):
        """Return (and consume) the first received stanza matching ``predicate``."""
        deadline = time.monotonic() + timeout
        while True:
            for i, st in enumerate(self.received):
                if i not in self._consumed and predicate(st):
                    self._consumed.add(i)
                    return st
            left = deadline - time.monotonic()
            if left <= 0:
                seen = "\n  ".join(str(s) for s in self.received[-10:])
                raise AssertionError(f"{self.boundjid}: no {what} within {timeout} s; "
                                     f"last received:\n  {seen}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except asyncio.TimeoutError:
                pass

    async def expect_nothing(self, predicate: Callable[[Any], bool], what: str, seconds: float = 1.0):
        """Assert that no (unconsumed) stanza matching ``predicate`` arrives for ``seconds``."""
        await asyncio.sleep(seconds)
        for i, st in enumerate(self.received):
            if i not in self._consumed and predicate(st):
                raise AssertionError(f"{self.boundjid}: unexpected {what}: {st}")

    def skip_received(self):
        """Consume everything received so far: later waits only see what arrives after this."""
        self._consumed.update(range(len(self.received)))

    async def wait_message(self, sender: str | None = None, body: str | None = None,
                           mtype: str | None = None, timeout: float = WAIT):
        def match(st):
            if st.name != "message":
                return False
            if sender is not None and not _jid_matches(st["from"], sender):
                return False
            if body is not None and st["body"] != body:
                return False
            if mtype is not None and st["type"] != mtype:
                return False
            return True
        return await self.wait_for(match, f"message from={sender} body={body!r} type={mtype}",
                                   timeout)

    async def wait_presence(self, sender: str | None = None, ptype: str | None = None,
                            timeout: float = WAIT):
        """``ptype`` is the XML type attribute: None/'' = available, or 'unavailable',
        'subscribe', 'subscribed', ...; slixmpp reports available presence as its show value,
        so match on the raw attribute."""
        def match(st):
            if st.name != "presence":
                return False
            if sender is not None and not _jid_matches(st["from"], sender):
                return False
            raw_type = st.xml.get("type", "")
            return raw_type == (ptype or "")
        return await self.wait_for(match, f"presence from={sender} type={ptype!r}", timeout)

    async def wait_roster_push(self, contact: str, subscription: str | None = None,
                               timeout: float = WAIT):
        """Wait for a roster push (iq set jabber:iq:roster) for ``contact`` (with the given
        subscription attribute, if not None)."""
        def match(st):
            if st.name != "iq" or st["type"] != "set":
                return False
            q = st.xml.find(f"{{{NS_ROSTER}}}query")
            if q is None:
                return False
            return any(item.get("jid") == contact
                       and (subscription is None or item.get("subscription", "none") == subscription)
                       for item in q.findall(f"{{{NS_ROSTER}}}item"))
        return await self.wait_for(match, f"roster push for {contact} subscription={subscription}",
                                   timeout)

    async def wait_disconnected(self, timeout: float = WAIT):
        """Wait until the connection is closed (by either side)."""
        try:
            await asyncio.wait_for(self.connection_closed.wait(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"{self.boundjid}: still connected after {timeout} s") from None

    # -- actions ---------------------------------------------------------------------------
    async def start(self, host: str, port: int, transport: str = "starttls") -> "Client":
        """Connect and log in; returns once the session is established (resource bound).

        ``transport``: "starttls" (plain TCP + STARTTLS) or "direct_tls" (TLS from the first
        byte, XEP-0368 style). slixmpp tries direct TLS *before* STARTTLS on the same port when
        both are enabled, so exactly one is enabled here.
        """
        if transport == "starttls":
            self.enable_starttls, self.enable_direct_tls = True, False
        elif transport == "direct_tls":
            self.enable_starttls, self.enable_direct_tls = False, True
        else:
            raise ValueError(transport)
        self.enable_plaintext = False
        loop = asyncio.get_running_loop()
        done: asyncio.Future = loop.create_future()

        def finish(result):
            if not done.done():
                done.set_result(result)

        self.add_event_handler("session_start", lambda _e: finish(None), disposable=True)
        def auth_failed(_event):
            if self.sasl_failures:
                finish(LoginFailed("authentication failed", _sasl_condition(self.sasl_failures[-1])))
            else:
                offered = [m.text for f in self.features_seen[-1:]
                           for m in f.iter(f"{{{NS_SASL}}}mechanism")]
                allowed = self.plugin["feature_mechanisms"].use_mechs
                finish(LoginFailed(f"no acceptable SASL mechanism: server offered {offered}, "
                                   f"client allowed {sorted(allowed) if allowed else 'any'}"))

        self.add_event_handler("failed_all_auth", auth_failed)
        self.add_event_handler("connection_failed", lambda e: finish(LoginFailed(f"connection failed: {e}")))
        self.add_event_handler("disconnected", lambda e: finish(LoginFailed(
            f"disconnected during login: {e}",
            _sasl_condition(self.sasl_failures[-1]) if self.sasl_failures else None)))
        self.connect(host, port)
        try:
            result = await asyncio.wait_for(done, WAIT)
        except asyncio.TimeoutError:
            self.cancel_connection_attempt()
            self.abort()
            raise LoginFailed(f"no session within {WAIT} s") from None
        if isinstance(result, LoginFailed):
            self.cancel_connection_attempt()
            raise result
        if not self.boundjid.resource:
            raise LoginFailed(f"resource binding failed, bound JID is {self.boundjid!r}")
        return self

    async def iq(self, iq, timeout: float = WAIT):
        """Send an <iq/> and return the result; raise AssertionError on error/timeout."""
        try:
            return await iq.send(timeout=timeout)
        except IqError as e:
            raise AssertionError(f"iq error: {e.iq}") from None
        except IqTimeout:
            raise AssertionError(f"iq timeout: {iq}") from None

    async def iq_error(self, iq, timeout: float = WAIT):
        """Send an <iq/> that must fail; return the error response."""
        try:
            res = await iq.send(timeout=timeout)
        except IqError as e:
            return e.iq
        except IqTimeout:
            raise AssertionError(f"iq timeout: {iq}") from None
        raise AssertionError(f"expected an error, got {res}")

    async def fetch_roster(self) -> tuple[dict[str, ET.Element], str | None]:
        """Fetch the roster; returns ({bare jid: <item/>}, ver attribute or None).

        This also makes the session an "interested resource" (RFC 6121 §2.1.6): servers send
        roster pushes and subscription requests only to resources that fetched the roster.
        """
        iq = self.Iq(stype="get")
        iq.append(ET.Element(f"{{{NS_ROSTER}}}query"))
        res = await self.iq(iq)
        q = res.xml.find(f"{{{NS_ROSTER}}}query")
        if q is None:  # roster versioning: an empty result means "unchanged"
            return {}, None
        return {i.get("jid"): i for i in q.findall(f"{{{NS_ROSTER}}}item")}, q.get("ver")

    async def roster_set(self, jid: str, name: str | None = None, groups: Iterable[str] = (),
                         subscription: str | None = None):
        """Add/update (or with subscription="remove", delete) one roster item."""
        iq = self.Iq(stype="set")
        q = ET.SubElement(ET.Element("x"), f"{{{NS_ROSTER}}}query")
        item = ET.SubElement(q, f"{{{NS_ROSTER}}}item", {"jid": jid})
        if name is not None:
            item.set("name", name)
        if subscription is not None:
            item.set("subscription", subscription)
        for g in groups:
            ET.SubElement(item, f"{{{NS_ROSTER}}}group").text = g
        iq.append(q)
        return await self.iq(iq)

    @property
    def sasl_mechanism(self) -> str | None:
        """The SASL mechanism this session authenticated with."""
        mech = self.plugin["feature_mechanisms"].mech
        return mech.name if mech else None

    @property
    def tls_active(self) -> bool:
        return self.transport is not None and self.transport.get_extra_info("ssl_object") is not None

    async def announce(self, **kwargs):
        """Send available presence and wait until the server has processed it, i.e. until its
        echo arrives: the server broadcasts a user's presence to all of the user's available
        resources, the sending one included (RFC 6121 §4.2.2). Without this wait a message sent
        right afterwards by another connection to our bare JID may race our presence and be
        stored offline."""
        self.send_presence(**kwargs)
        await self.wait_presence(self.boundjid.full)

    def send_subscription(self, to: str, ptype: str):
        self.make_presence(pto=to, ptype=ptype).send()

    async def result(self, pending, what: str = "iq"):
        """Await an iq a slixmpp plugin sent (``plugin.block(...)`` etc.); errors and timeouts
        become AssertionError."""
        try:
            return await pending
        except IqError as e:
            raise AssertionError(f"{what}: iq error: {e.iq}") from None
        except IqTimeout:
            raise AssertionError(f"{what}: iq timeout") from None

    def ping_iq(self, to: str | None = None):
        """A XEP-0199 ping to ``to`` (default: the server), to send with :meth:`iq`/:meth:`iq_error`."""
        iq = self.Iq(stype="get")
        iq["to"] = to or self.boundjid.domain
        iq.append(ET.Element("{urn:xmpp:ping}ping"))
        return iq

    async def roundtrip(self):
        """Ping the server and wait for the answer: a server handles a stream in order, so by
        then it has processed everything this client sent before."""
        await self.iq(self.ping_iq())

    def send_chat(self, to: str, body: str | None, *, mtype: str = "chat",
                  payload: Iterable[ET.Element] = (), mid: str | None = None) -> str:
        """Send a message (with extra child elements ``payload``); returns its id."""
        msg = self.make_message(mto=to, mbody=body, mtype=mtype)
        msg["id"] = mid or f"m-{uuid.uuid4().hex[:12]}"
        for p in payload:
            msg.append(p)
        msg.send()
        return msg["id"]

    # -- service discovery and stream features ---------------------------------------------
    @property
    def stream_features(self) -> ET.Element:
        """The <stream:features/> of the authenticated stream (the last ones received)."""
        return self.features_seen[-1]

    async def disco_features(self, jid: str) -> set[str]:
        """The features (``var``s) of a disco#info query to ``jid``."""
        iq = self.Iq(stype="get")
        iq["to"] = jid
        iq.append(ET.Element(f"{{{NS_DISCO_INFO}}}query"))
        res = await self.iq(iq)
        return {f.get("var") for f in res.xml.iter(f"{{{NS_DISCO_INFO}}}feature")}

    # -- stream management (XEP-0198) ------------------------------------------------------
    @property
    def sm(self):
        """slixmpp's XEP-0198 plugin (``seq``: stanzas we sent since enabling, ``handled``:
        stanzas we received, ``sm_id``: the resumption id)."""
        return self.plugin["xep_0198"]

    async def wait_sm(self, name: str, predicate: Callable[[ET.Element], bool] = lambda _e: True,
                      what: str | None = None, timeout: float = WAIT) -> ET.Element:
        """Wait for (and consume) a XEP-0198 element ``<name xmlns='urn:xmpp:sm:3'/>``."""
        tag = f"{{{NS_SM}}}{name}"
        st = await self.wait_for(lambda s: s.xml.tag == tag and predicate(s.xml),
                                 what or f"<{name} xmlns='{NS_SM}'/>", timeout)
        return st.xml

    def stop_reading(self):
        """Leave whatever the server sends from now on unread in the socket buffer (as if it
        were still in flight when the connection dies): not handled, so not acknowledged."""
        self.transport.pause_reading()

    async def drop_connection(self, server_notices: bool = True):
        """Kill the connection the way a crash or a dead network does: the socket goes away
        with no </stream:stream> and no TLS close_notify. slixmpp keeps its XEP-0198 state
        (once enabled) so :meth:`resume` can continue the session.

        ``server_notices=False``: the server's end stays open (a duplicate of the socket is
        kept until :meth:`stop`), like a network switch the server has not noticed yet; it
        keeps writing into the dead connection."""
        assert self.transport is not None, "not connected"
        if not server_notices:
            self._zombie_sockets.append(socket.socket(fileno=os.dup(
                self.transport.get_extra_info("socket").fileno())))
        self.connection_closed.clear()
        self.transport.abort()
        await self.wait_disconnected()

    async def resume(self) -> ET.Element:
        """Reconnect after :meth:`drop_connection` and resume the XEP-0198 session; returns the
        server's <resumed/>. Fails if the server refuses (<failed/>) or a new session starts."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future = loop.create_future()

        def finish(result):
            if not done.done():
                done.set_result(result)

        handlers = {
            "session_resumed": lambda st: finish(st.xml),
            "sm_failed": lambda st: finish(AssertionError(f"resumption refused: {st}")),
            "session_start": lambda _e: finish(AssertionError("a new session was bound instead")),
            "connection_failed": lambda e: finish(AssertionError(f"reconnection failed: {e}")),
            "disconnected": lambda e: finish(AssertionError(f"disconnected while resuming: {e}")),
        }
        for event, handler in handlers.items():
            self.add_event_handler(event, handler)
        self.connection_closed.clear()
        try:
            self.connect(*self.custom_address)
            try:
                result = await asyncio.wait_for(done, WAIT)
            except asyncio.TimeoutError:
                raise AssertionError(f"{self.boundjid}: not resumed within {WAIT} s") from None
        finally:
            for event, handler in handlers.items():
                self.del_event_handler(event, handler)
        if isinstance(result, AssertionError):
            raise result
        return result

    # -- message carbons (XEP-0280) --------------------------------------------------------
    async def enable_carbons(self):
        await self.result(self.plugin["xep_0280"].enable(), "enable carbons")

    async def wait_carbon(self, direction: str, body: str, timeout: float = WAIT) -> tuple[Any, ET.Element]:
        """Wait for a ``direction`` ("sent"/"received") carbon of a message with ``body``;
        returns (carbon stanza, forwarded message)."""
        def match(st):
            inner = carbon(st, direction)
            return inner is not None and inner.findtext(f"{{{NS_CLIENT}}}body") == body
        st = await self.wait_for(match, f"{direction} carbon of {body!r}", timeout)
        return st, carbon(st, direction)

    # -- blocking (XEP-0191) ---------------------------------------------------------------
    async def block(self, *jids: str):
        await self.result(self.plugin["xep_0191"].block(list(jids)), f"block {jids}")

    async def unblock(self, *jids: str):
        """Unblock ``jids``; with none, an empty <unblock/>: unblock everybody."""
        if jids:
            await self.result(self.plugin["xep_0191"].unblock(list(jids)), f"unblock {jids}")
        else:  # slixmpp's plugin cannot send an empty <unblock/>
            iq = self.Iq(stype="set")
            iq.append(ET.Element(f"{{{NS_BLOCKING}}}unblock"))
            await self.iq(iq)

    async def blocklist(self) -> set[str]:
        """Fetch the blocklist (which also makes this resource receive block pushes)."""
        jids = await self.result(self.plugin["xep_0191"].get_blocked_jids(), "blocklist")
        return {str(j) for j in jids}

    async def wait_block_push(self, action: str, jid: str | None, timeout: float = WAIT):
        """Wait for a blocklist push: iq set with <block/> or <unblock/> (``action``) naming
        ``jid`` (None: an empty <unblock/>, i.e. everybody unblocked)."""
        def match(st):
            if st.name != "iq" or st["type"] != "set":
                return False
            el = st.xml.find(f"{{{NS_BLOCKING}}}{action}")
            if el is None:
                return False
            items = {i.get("jid") for i in el.findall(f"{{{NS_BLOCKING}}}item")}
            return jid in items if jid is not None else not items
        return await self.wait_for(match, f"<{action}/> push for {jid or 'everybody'}", timeout)

    # -- message archive (XEP-0313 with XEP-0059 paging) -----------------------------------
    def mam_query_iq(self, *, to: str | None = None, with_jid: str | None = None,
                     start: "dt.datetime | None" = None, end: "dt.datetime | None" = None,
                     max_items: int | None = None, after: str | None = None,
                     before: str | bool | None = None):
        """The <iq type='set'><query xmlns='urn:xmpp:mam:2' queryid=…/></iq> for
        :meth:`mam_query` (``to``: the archive, default the own account)."""
        iq = self.make_iq_set(ito=to)
        iq["mam"]["queryid"] = f"q-{uuid.uuid4().hex[:10]}"
        if with_jid is not None:
            iq["mam"]["with"] = with_jid
        if start is not None:
            iq["mam"]["start"] = start
        if end is not None:
            iq["mam"]["end"] = end
        paging = {"max": None if max_items is None else str(max_items), "after": after, "before": before}
        for key, value in paging.items():
            if value is not None:
                iq["mam"]["rsm"][key] = value  # ``before=True``: an empty <before/>
        return iq

    async def mam_query(self, **criteria) -> tuple[list[ArchivedMessage], ET.Element]:
        """Query the own archive (``criteria``: see :meth:`mam_query_iq`; ``before=True`` sends
        an empty <before/>, i.e. the last page). Returns (results in the order received, <fin/>):
        the <message><result queryid=…/></message> stanzas the server sent before its iq result.
        """
        iq = self.mam_query_iq(**criteria)
        qid = iq["mam"]["queryid"]
        res = await self.iq(iq)
        fin = res.xml.find(f"{{{NS_MAM}}}fin")
        assert fin is not None, f"MAM iq result without <fin/>: {res}"
        results = []
        for i, st in enumerate(self.received):
            r = st.xml.find(f"{{{NS_MAM}}}result") if st.name == "message" else None
            if i in self._consumed or r is None or r.get("queryid") != qid:
                continue
            self._consumed.add(i)
            fwd = r.find(f"{{{NS_FORWARD}}}forwarded")
            assert fwd is not None, f"MAM result without <forwarded/>: {st}"
            results.append(ArchivedMessage(r.get("id"), fwd))
        return results, fin

    # -- client state indication (XEP-0352) ------------------------------------------------
    def set_client_state(self, active: bool):
        csi = self.plugin["xep_0352"]
        assert csi.enabled, "the server did not offer <csi xmlns='urn:xmpp:csi:0'/>"
        csi.send_active() if active else csi.send_inactive()

    async def stop(self):
        for sock in self._zombie_sockets:
            sock.close()
        if self.transport is not None:
            try:
                await asyncio.wait_for(self.disconnect(wait=1), 5)
            except Exception:
                self.abort()
        self.cancel_connection_attempt()


def _sasl_condition(failure) -> str | None:
    for c in failure.xml:
        if c.tag.startswith(f"{{{NS_SASL}}}") and not c.tag.endswith("}text"):
            return c.tag.split("}", 1)[1]
    return None


def _jid_matches(actual, expected: str) -> bool:
    """``expected`` is a bare JID (matches any resource) or a full JID (exact match)."""
    if "/" in expected:
        return str(actual) == expected
    return actual.bare == expected


class Account:
    def __init__(self, local: str, domain: str, password: str):
        self.local, self.domain, self.password = local, domain, password
        self.jid = f"{local}@{domain}"

    def __str__(self):
        return self.jid


class Session:
    """Per-test factory for accounts and clients (the ``xmpp`` fixture)."""

    def __init__(self, server):
        self.server = server
        self.clients: list[Client] = []
        self.closers: list[Callable] = []

    def new_user(self, prefix: str = "user", password: str | None = None, local: str | None = None) -> Account:
        global _user_counter
        _user_counter += 1
        if local is None:
            local = f"{prefix}{_user_counter}-{uuid.uuid4().hex[:6]}"
        password = password or f"pw-{secrets.token_hex(6)}"
        self.server.add_user(local, password)
        return Account(local, self.server.domain, password)

    def client(self, account: Account, resource: str | None = None, *, password: str | None = None,
               mechanisms: Iterable[str] | None = None, stream_management: bool = False) -> Client:
        jid = account.jid + (f"/{resource}" if resource else "")
        c = Client(jid, password if password is not None else account.password, mechanisms=mechanisms,
                   stream_management=stream_management)
        self.clients.append(c)
        return c

    async def login(self, account: Account, resource: str | None = None, *, transport: str = "starttls",
                    mechanisms: Iterable[str] | None = None, roster: bool = True,
                    presence: bool = True, password: str | None = None,
                    stream_management: bool = False) -> Client:
        """Log in and, by default, do what a normal client does next: fetch the roster and send
        initial presence (so the session receives pushes, subscriptions and presence).
        ``stream_management``: enable XEP-0198 with resumption (waits for <enabled/>)."""
        c = self.client(account, resource, password=password, mechanisms=mechanisms,
                        stream_management=stream_management)
        port = self.server.c2s_port if transport == "starttls" else self.server.tls_port
        await c.start(self.server.host, port, transport)
        if stream_management:
            await c.wait_sm("enabled")
        if roster:
            await c.fetch_roster()
        if presence:
            await c.announce()
        return c

    async def aclose(self):
        for c in self.clients:
            try:
                await c.stop()
            except Exception:
                pass
        for closer in self.closers:
            try:
                res = closer()
                if asyncio.iscoroutine(res):
                    await res
            except Exception:
                pass


# ---------------------------------------------------------------------------------------
# SASL by hand (used by the WebSocket client)
# ---------------------------------------------------------------------------------------
class Scram:
    """Client side of SCRAM-SHA-1 / SCRAM-SHA-256 (RFC 5802 / 7677), no channel binding."""

    def __init__(self, mechanism: str, username: str, password: str):
        self.mechanism = mechanism
        self.hash = {"SCRAM-SHA-1": hashlib.sha1, "SCRAM-SHA-256": hashlib.sha256}[mechanism]
        self.username = username.replace("=", "=3D").replace(",", "=2C")
        self.password = unicodedata.normalize("NFKC", password).encode()
        self.cnonce = base64.b64encode(os.urandom(18)).decode()
        self.gs2 = "n,,"
        self.client_first_bare = f"n={self.username},r={self.cnonce}"

    def first(self) -> bytes:
        return (self.gs2 + self.client_first_bare).encode()

    def final(self, server_first: bytes) -> bytes:
        self.server_first = server_first.decode()
        attrs = dict(kv.split("=", 1) for kv in self.server_first.split(","))
        nonce, salt, iterations = attrs["r"], base64.b64decode(attrs["s"]), int(attrs["i"])
        assert nonce.startswith(self.cnonce), "server nonce does not extend the client nonce"
        salted = hashlib.pbkdf2_hmac(self.hash().name, self.password, salt, iterations)
        client_key = hmac.new(salted, b"Client Key", self.hash).digest()
        stored_key = self.hash(client_key).digest()
        without_proof = f"c={base64.b64encode(self.gs2.encode()).decode()},r={nonce}"
        auth_message = f"{self.client_first_bare},{self.server_first},{without_proof}".encode()
        signature = hmac.new(stored_key, auth_message, self.hash).digest()
        proof = bytes(a ^ b for a, b in zip(client_key, signature))
        server_key = hmac.new(salted, b"Server Key", self.hash).digest()
        self.expected_server_signature = hmac.new(server_key, auth_message, self.hash).digest()
        return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()

    def verify(self, server_final: bytes) -> None:
        attrs = dict(kv.split("=", 1) for kv in server_final.decode().split(","))
        assert base64.b64decode(attrs["v"]) == self.expected_server_signature, "bad server signature"


# ---------------------------------------------------------------------------------------
# WebSocket (RFC 7395)
# ---------------------------------------------------------------------------------------
class WebSocketClient:
    """Minimal XMPP-over-WebSocket client: one XML element per text frame."""

    def __init__(self, url: str, domain: str):
        self.url, self.domain = url, domain
        self.ws = None
        self.jid: str | None = None
        self.received: list[ET.Element] = []

    async def connect(self):
        import websockets
        self.ws = await asyncio.wait_for(
            websockets.connect(self.url, subprotocols=["xmpp"], open_timeout=WAIT), WAIT)
        assert self.ws.subprotocol == "xmpp", f"server chose subprotocol {self.ws.subprotocol!r}"

    async def send(self, xml: str):
        await self.ws.send(xml)

    async def recv(self, timeout: float = WAIT) -> ET.Element:
        frame = await asyncio.wait_for(self.ws.recv(), timeout)
        if isinstance(frame, bytes):
            raise AssertionError("RFC 7395 requires text frames, got a binary frame")
        elem = ET.fromstring(frame)
        self.received.append(elem)
        return elem

    async def recv_until(self, predicate: Callable[[ET.Element], bool], what: str,
                         timeout: float = WAIT) -> ET.Element:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"websocket: no {what} within {timeout} s")
            try:
                elem = await self.recv(left)
            except asyncio.TimeoutError:
                raise AssertionError(f"websocket: no {what} within {timeout} s") from None
            if predicate(elem):
                return elem

    async def open_stream(self) -> ET.Element:
        """Send <open/>, expect <open/> back then <stream:features/>; returns the features."""
        await self.send(f'<open xmlns="{NS_FRAMING}" to="{self.domain}" version="1.0"/>')
        opened = await self.recv()
        assert opened.tag == f"{{{NS_FRAMING}}}open", f"expected <open/>, got {opened.tag}"
        assert opened.get("from") == self.domain
        assert opened.get("version") == "1.0"
        features = await self.recv()
        assert features.tag == f"{{{NS_STREAM}}}features", f"expected features, got {features.tag}"
        return features

    async def login(self, username: str, password: str, resource: str | None = None,
                    mechanism: str | None = None) -> str:
        """SASL (SCRAM-SHA-256, SCRAM-SHA-1 or PLAIN, the first one offered), restart, bind.
        Returns the bound full JID."""
        await self.connect()
        features = await self.open_stream()
        mechs = [m.text for m in features.iter(f"{{{NS_SASL}}}mechanism")]
        if mechanism is None:
            mechanism = next((m for m in ("SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN") if m in mechs), None)
        assert mechanism in mechs, f"mechanism {mechanism} not offered over WebSocket: {mechs}"
        b64 = lambda b: base64.b64encode(b).decode()
        if mechanism == "PLAIN":
            plain = b64(("\0" + username + "\0" + password).encode())
            await self.send(f'<auth xmlns="{NS_SASL}" mechanism="PLAIN">{plain}</auth>')
            outcome = await self.recv()
        else:
            scram = Scram(mechanism, username, password)
            await self.send(f'<auth xmlns="{NS_SASL}" mechanism="{mechanism}">{b64(scram.first())}</auth>')
            challenge = await self.recv()
            assert challenge.tag == f"{{{NS_SASL}}}challenge", ET.tostring(challenge)
            await self.send(f'<response xmlns="{NS_SASL}">'
                            f'{b64(scram.final(base64.b64decode(challenge.text)))}</response>')
            outcome = await self.recv()
            if outcome.tag == f"{{{NS_SASL}}}success":
                scram.verify(base64.b64decode(outcome.text or ""))
        assert outcome.tag == f"{{{NS_SASL}}}success", f"SASL failed: {ET.tostring(outcome)}"
        features = await self.open_stream()
        assert features.find(f"{{{NS_BIND}}}bind") is not None, "no <bind/> after SASL"
        res = f"<resource>{resource}</resource>" if resource else ""
        await self.send(f'<iq xmlns="{NS_CLIENT}" type="set" id="bind1"><bind xmlns="{NS_BIND}">{res}</bind></iq>')
        result = await self.recv_until(lambda e: e.get("id") == "bind1", "bind result")
        assert result.get("type") == "result", ET.tostring(result)
        self.jid = result.find(f"{{{NS_BIND}}}bind/{{{NS_BIND}}}jid").text
        return self.jid

    async def close(self):
        if self.ws is None:
            return
        try:
            await self.send(f'<close xmlns="{NS_FRAMING}"/>')
            await asyncio.wait_for(self.ws.close(), 3)
        except Exception:
            pass
        self.ws = None


# ---------------------------------------------------------------------------------------
# Raw sockets (bad-input tests)
# ---------------------------------------------------------------------------------------
STREAM_HEADER = ("<?xml version='1.0'?><stream:stream to='{domain}' xmlns='jabber:client' "
                 "xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>")


class RawStream:
    """Blocking plain-TCP XMPP connection; no TLS, no XML parsing beyond regexes."""

    def __init__(self, host: str, port: int, timeout: float = WAIT, source: str | None = None):
        """``source``: local address to connect from (another loopback address, 127.x.y.z)."""
        self.sock = socket.create_connection((host, port), timeout=timeout,
                                             source_address=(source, 0) if source else None)
        self.buf = b""

    def send(self, data: str | bytes):
        self.sock.sendall(data.encode() if isinstance(data, str) else data)

    def send_tolerant(self, data: bytes):
        """Send, ignoring a reset: the server may close before reading everything."""
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def read_until(self, pattern: bytes, timeout: float = WAIT) -> bytes:
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.buf):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {pattern!r} within {timeout} s; got {self.buf[-2000:]!r}")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                continue
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                raise AssertionError(f"connection closed before {pattern!r}; got {self.buf[-2000:]!r}")
            self.buf += chunk
        return self.buf

    def read_to_close(self, timeout: float = WAIT) -> bytes:
        """Read until the server closes the TCP connection; fail if it does not."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"server did not close the connection within {timeout} s; "
                                     f"got {self.buf[-2000:]!r}")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                continue
            except ConnectionResetError:
                return self.buf
            if not chunk:
                return self.buf
            self.buf += chunk

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def stream_error_condition(data: bytes) -> str | None:
    """The defined condition inside the first <stream:error> of ``data``."""
    m = re.search(rb"<(?:stream:)?error[^>]*>(.*?)</(?:stream:)?error>", data, re.S)
    if not m:
        return None
    for name in re.findall(rb"<([a-z-]+)\s[^>]*xmlns=['\"]urn:ietf:params:xml:ns:xmpp-streams['\"]",
                           m.group(1)):
        if name != b"text":
            return name.decode()
    return None


# ---------------------------------------------------------------------------------------
# Multi-client scenarios shared by several tests
# ---------------------------------------------------------------------------------------
async def subscribe_both(a: Client, b: Client) -> None:
    """RFC 6121 subscription handshake in both directions (a→b, then b→a).

    Both clients must have fetched their roster (interested resources) beforehand.
    """
    for requester, approver in ((a, b), (b, a)):
        requester.send_subscription(approver.boundjid.bare, "subscribe")
        await approver.wait_presence(requester.boundjid.bare, "subscribe")
        approver.send_subscription(requester.boundjid.bare, "subscribed")
        await requester.wait_presence(approver.boundjid.bare, "subscribed")


# ---------------------------------------------------------------------------------------
# Profanity (terminal client) under tmux — see PROFANITY.md
# ---------------------------------------------------------------------------------------
class Tmux:
    """A private tmux server (own socket name), so nothing else running tmux is touched."""

    def __init__(self, name: str | None = None):
        self.socket = name or f"e2e-{os.getpid()}-{uuid.uuid4().hex[:6]}"

    def run(self, *args: str, check: bool = True) -> str:
        import subprocess
        r = subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True, timeout=10)
        if check and r.returncode != 0:
            raise AssertionError(f"tmux {' '.join(args)} failed: {r.stderr}")
        return r.stdout

    def kill_server(self):
        self.run("kill-server", check=False)


class Profanity:
    """One Profanity process in its own tmux session with its own HOME."""

    def __init__(self, tmux: Tmux, name: str, home: str):
        self.tmux, self.name, self.home = tmux, name, home
        os.makedirs(home, exist_ok=True)

    def start(self):
        # LANG must be a UTF-8 locale or ncurses mangles Chinese text.
        self.tmux.run("new-session", "-d", "-s", self.name, "-x", "200", "-y", "50",
                      f"env HOME={self.home} LANG=C.UTF-8 TERM=xterm-256color profanity")
        self.wait_screen("Type '/help' to show complete help.")

    def type(self, text: str):
        # -l: literal (no key-name lookup), then a separate Enter.
        self.tmux.run("send-keys", "-t", self.name, "-l", text)
        self.tmux.run("send-keys", "-t", self.name, "Enter")

    def screen(self) -> str:
        return self.tmux.run("capture-pane", "-p", "-t", self.name)

    def wait_screen(self, needle: str, timeout: float = WAIT) -> str:
        deadline = time.monotonic() + timeout
        while True:
            text = self.screen()
            if needle in text:
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"profanity[{self.name}]: {needle!r} not on screen within "
                                     f"{timeout} s; screen:\n{text}")
            time.sleep(0.2)

    def connect(self, jid: str, password: str, host: str, port: int):
        self.type(f"/connect {jid} server {host} port {port} tls trust")
        self.wait_screen("Enter password:")
        self.type(password)
        text = self.wait_screen_any(["logged in successfully", "Login failed"])
        assert "logged in successfully" in text, f"profanity login failed:\n{text}"

    def wait_screen_any(self, needles: list[str], timeout: float = WAIT) -> str:
        deadline = time.monotonic() + timeout
        while True:
            text = self.screen()
            if any(n in text for n in needles):
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"profanity[{self.name}]: none of {needles} on screen; "
                                     f"screen:\n{text}")
            time.sleep(0.2)

    def quit(self):
        try:
            self.type("/quit")
        except Exception:
            pass
