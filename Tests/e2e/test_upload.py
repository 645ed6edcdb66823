"""HTTP file upload (XEP-0363, urn:xmpp:http:upload:0): a slot over XMPP, the file PUT and GET
over the server's own HTTP listener, once-only slots and the per-file limit.

Runs on a server of its own with a small ``upload.max_file_bytes`` (Switchboard only: the
suite's Prosody has no upload module)."""
import asyncio
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET

import pytest

from conftest import running_server, server_kind
from xmpp_client import NS_CLIENT, NS_DISCO_INFO, Session, async_test, error_condition

pytestmark = [pytest.mark.xep("XEP-0363"),
              pytest.mark.skipif(server_kind() != "switchboard",
                                 reason="needs Switchboard's upload settings and HTTP listener")]

NS_UPLOAD = "urn:xmpp:http:upload:0"
NS_DATA = "jabber:x:data"
MAX_FILE_BYTES = 1000


@pytest.fixture(scope="module")
def upload_server(request):
    settings = {"upload": f"{{max_file_bytes: {MAX_FILE_BYTES}, quota_bytes_per_user: 100000}}"}
    with running_server(request.config, settings=settings) as srv:
        yield srv


@pytest.fixture
def up(upload_server):
    return Session(upload_server)


def slot_request(client, filename: str, size: int, content_type: str | None = None):
    iq = client.Iq(stype="get")
    iq["to"] = client.boundjid.domain
    attrs = {"filename": filename, "size": str(size)}
    if content_type:
        attrs["content-type"] = content_type
    iq.append(ET.Element(f"{{{NS_UPLOAD}}}request", attrs))
    return iq


def loopback(url: str, srv) -> str:
    """The slot URL names the XMPP domain; reach the listener on loopback instead."""
    parts = urllib.parse.urlsplit(url)
    assert parts.scheme == "http" and parts.hostname == srv.domain and parts.port == srv.http_port, url
    return urllib.parse.urlunsplit(parts._replace(netloc=f"127.0.0.1:{srv.http_port}"))


def http(method: str, url: str, body: bytes | None = None, headers: dict | None = None):
    """(status, body, headers) of one request; HTTP errors are returned, not raised."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as res:
            return res.status, res.read(), res.headers
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers


@async_test()
async def test_disco_advertises_upload_with_max_file_size(up, upload_server):
    alice = await up.login(up.new_user("alice"), "desk")
    iq = alice.Iq(stype="get")
    iq["to"] = upload_server.domain
    iq.append(ET.Element(f"{{{NS_DISCO_INFO}}}query"))
    res = await alice.iq(iq)
    query = res.xml.find(f"{{{NS_DISCO_INFO}}}query")
    assert NS_UPLOAD in {f.get("var") for f in query.findall(f"{{{NS_DISCO_INFO}}}feature")}
    forms = {}
    for form in query.findall(f"{{{NS_DATA}}}x"):
        fields = {f.get("var"): f.findtext(f"{{{NS_DATA}}}value") for f in form.findall(f"{{{NS_DATA}}}field")}
        forms[fields.get("FORM_TYPE")] = fields
    assert NS_UPLOAD in forms, ET.tostring(query, encoding="unicode")
    assert forms[NS_UPLOAD].get("max-file-size") == str(MAX_FILE_BYTES), forms[NS_UPLOAD]


@async_test()
async def test_slot_put_get_once_only(up, upload_server):
    alice = await up.login(up.new_user("alice"), "desk")
    content = "季度报告：收入增长 12%。\n".encode() + bytes(range(256))
    filename = "季度报告 2025.txt"
    res = await alice.iq(slot_request(alice, filename, len(content), "text/plain"))
    slot = res.xml.find(f"{{{NS_UPLOAD}}}slot")
    assert slot is not None, res
    put = slot.find(f"{{{NS_UPLOAD}}}put").get("url")
    get = slot.find(f"{{{NS_UPLOAD}}}get").get("url")
    assert urllib.parse.unquote(urllib.parse.urlsplit(get).path).endswith("/" + filename), get
    put_url, get_url = loopback(put, upload_server), loopback(get, upload_server)

    status, _, _ = await asyncio.to_thread(
        http, "PUT", put_url, content, {"Content-Type": "text/plain"})
    assert status == 201, status
    status, body, headers = await asyncio.to_thread(http, "GET", get_url)
    assert status == 200, status
    assert body == content
    assert headers.get("Content-Type") == "text/plain", headers
    assert headers.get("X-Content-Type-Options") == "nosniff", headers

    # A slot is good for one upload: the second PUT is refused and the file is unchanged.
    status, _, _ = await asyncio.to_thread(
        http, "PUT", put_url, b"x" * len(content), {"Content-Type": "text/plain"})
    assert status == 403, status
    status, body, _ = await asyncio.to_thread(http, "GET", get_url)
    assert status == 200 and body == content

    # A guessed URL next to it is not found.
    status, _, _ = await asyncio.to_thread(http, "GET", get_url + "x")
    assert status == 404, status


@async_test()
async def test_file_larger_than_the_limit_is_refused(up, upload_server):
    alice = await up.login(up.new_user("alice"), "desk")
    err = await alice.iq_error(slot_request(alice, "大文件.bin", MAX_FILE_BYTES + 1))
    assert error_condition(err) == "not-acceptable", err
    too_large = err.xml.find(f"{{{NS_CLIENT}}}error/{{{NS_UPLOAD}}}file-too-large")
    assert too_large is not None, err
    assert too_large.findtext(f"{{{NS_UPLOAD}}}max-file-size") == str(MAX_FILE_BYTES), err
    # exactly the limit is fine
    ok = await alice.iq(slot_request(alice, "刚好.bin", MAX_FILE_BYTES))
    assert ok.xml.find(f"{{{NS_UPLOAD}}}slot/{{{NS_UPLOAD}}}put") is not None, ok
