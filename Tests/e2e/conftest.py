"""Fixtures for the end-to-end tests: the server under test and per-test XMPP sessions.

The backend is chosen by the environment variable E2E_SERVER:

* ``switchboard`` (default): our binary, from SWITCHBOARD_BIN
  (default: <repo>/.build/debug/switchboard).
* ``prosody``: Debian's Prosody 0.12, used to prove that the tests themselves are right.
  E2E_PROSODY_HASH=SHA-256 makes it store SCRAM-SHA-256 keys instead of SCRAM-SHA-1
  (Prosody keeps keys for one hash only).

Set E2E_KEEP=1 to keep the server's temporary directory (config, data, logs) after the run.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from xmpp_client import Session  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from netutil import free_port, port_open  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
DOMAIN = "example.test"
MAX_STANZA_BYTES = 65536
START_TIMEOUT = 30
STOP_TIMEOUT = 10


class ServerUnderTest:
    """What the tests know about the running server."""

    kind: str
    domain: str = DOMAIN
    host: str = "127.0.0.1"
    c2s_port: int
    tls_port: int
    http_port: int
    max_stanza_bytes: int = MAX_STANZA_BYTES
    #: SCRAM mechanisms the server can offer for accounts created by add_user.
    scram_mechanisms: set[str]
    proc: subprocess.Popen
    tmp: Path
    log_files: list[Path]

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.http_port}/xmpp-websocket"

    def add_user(self, local: str, password: str) -> None:
        raise NotImplementedError

    def alive(self) -> bool:
        return self.proc.poll() is None

    def logs(self, tail: int = 60) -> str:
        out = []
        for f in self.log_files:
            if f.exists():
                lines = f.read_text(errors="replace").splitlines()
                out.append(f"----- {f} (last {tail} lines) -----")
                out.extend(lines[-tail:])
        return "\n".join(out)

    def stop(self) -> int:
        """SIGTERM, wait STOP_TIMEOUT s, then SIGKILL. Returns the exit code (or -9)."""
        if self.proc.poll() is not None:
            return self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return -9




# ---------------------------------------------------------------------------------------
# Switchboard
# ---------------------------------------------------------------------------------------
class Switchboard(ServerUnderTest):
    kind = "switchboard"
    scram_mechanisms = {"SCRAM-SHA-1", "SCRAM-SHA-256"}

    def __init__(self, tmp: Path, limits: dict[str, int] | None = None, settings: dict[str, str] | None = None):
        self.tmp = tmp
        settings = {"log_level": "info", **(settings or {})}
        self.bin = Path(os.environ.get("SWITCHBOARD_BIN", REPO_ROOT / ".build/debug/switchboard"))
        if not self.bin.exists():
            raise RuntimeError(f"switchboard binary not found at {self.bin} (set SWITCHBOARD_BIN or build it)")
        self.config = tmp / "switchboard.yaml"
        self.status_file = tmp / "status.json"
        self.stdout, self.stderr = tmp / "stdout.log", tmp / "stderr.log"
        self.log_files = [self.stdout, self.stderr]
        limits = {"max_stanza_bytes": MAX_STANZA_BYTES, **(limits or {})}
        yaml_limits = ", ".join(f"{key}: {value}" for key, value in limits.items())
        self.config.write_text(
            f"domain: {DOMAIN}\n"
            f"data_dir: {tmp / 'data'}\n"
            + "".join(f"{key}: {value}\n" for key, value in settings.items()) +
            "c2s: {bind: 127.0.0.1, port: 0, require_tls: true}\n"
            "c2s_direct_tls: {bind: 127.0.0.1, port: 0}\n"
            "http: {bind: 127.0.0.1, port: 0}\n"
            "bootstrap_admin: false\n"
            "registration: {enabled: false}\n"
            f"limits: {{{yaml_limits}}}\n"
        )

    def start(self) -> None:
        with open(self.stdout, "wb") as out, open(self.stderr, "wb") as err:
            self.proc = subprocess.Popen(
                [str(self.bin), "serve", "--config", str(self.config),
                 "--status-file", str(self.status_file)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=self.tmp)
        deadline = time.monotonic() + START_TIMEOUT
        while not self.status_file.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"switchboard exited with {self.proc.returncode} before "
                                   f"writing {self.status_file}\n{self.logs()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"switchboard wrote no status file within {START_TIMEOUT} s\n"
                                   f"{self.logs()}")
            time.sleep(0.05)
        status = json.loads(self.status_file.read_text())
        self.c2s_port = int(status["c2s"])
        self.tls_port = int(status["c2s_direct_tls"])
        self.http_port = int(status["http"])
        assert int(status["pid"]) == self.proc.pid, f"status pid {status['pid']} != {self.proc.pid}"

    def add_user(self, local: str, password: str) -> None:
        r = subprocess.run(
            [str(self.bin), "user", "add", local, "--config", str(self.config), "--password-stdin"],
            input=password.encode(), capture_output=True, timeout=30)
        assert r.returncode == 0, (f"switchboard user add {local} failed ({r.returncode}):\n"
                                   f"{r.stdout.decode(errors='replace')}\n{r.stderr.decode(errors='replace')}")


# ---------------------------------------------------------------------------------------
# Prosody (reference implementation, proves the tests)
# ---------------------------------------------------------------------------------------
PROSODY_CONFIG = """\
-- generated by Tests/e2e/conftest.py
pidfile = "{tmp}/prosody.pid"
data_path = "{tmp}/data"
certificates = "{tmp}/certs"
interfaces = {{ "127.0.0.1" }}
local_interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {c2s} }}
c2s_direct_tls_ports = {{ {tls} }}
legacy_ssl_ports = {{ }}
s2s_ports = {{ }}
http_ports = {{ {http} }}
http_interfaces = {{ "127.0.0.1" }}
https_ports = {{ }}
admin_socket = "{tmp}/admin.sock"
log = {{ info = "{tmp}/prosody.log"; error = "{tmp}/prosody.err" }}
authentication = "internal_hashed"
password_hash = "{hash}"
c2s_require_encryption = true
c2s_stanza_size_limit = {limit}
consider_websocket_secure = true
ssl = {{ certificate = "{tmp}/certs/cert.pem"; key = "{tmp}/certs/key.pem" }}
modules_enabled = {{ {modules} }}
modules_disabled = {{ "s2s" }}
{extra}
VirtualHost "{domain}"
"""

#: Prosody modules the suite runs with.
PROSODY_MODULES = (
    "roster", "saslauth", "tls", "disco", "private", "vcard", "version", "uptime",
    "time", "ping", "websocket", "offline", "posix",
)

#: Extensions whose tests need a Prosody module that PROSODY_MODULES does not enable; tests
#: marked ``@pytest.mark.xep("XEP-…")`` skip against Prosody unless the module is listed.
PROSODY_MODULE_FOR_XEP = {
    "XEP-0191": "blocklist", "XEP-0198": "smacks", "XEP-0280": "carbons",
    "XEP-0313": "mam", "XEP-0352": "csi_simple", "XEP-0045": "muc",
}

#: Switchboard ``limits`` keys and the Prosody option for each (for servers started with
#: non-default limits).
PROSODY_LIMIT_OPTIONS = {"resumption_timeout_seconds": "smacks_hibernation_time"}


class Prosody(ServerUnderTest):
    kind = "prosody"

    def __init__(self, tmp: Path, limits: dict[str, int] | None = None, settings: dict[str, str] | None = None):
        self.tmp = tmp
        self.hash = os.environ.get("E2E_PROSODY_HASH", "SHA-1")
        self.scram_mechanisms = {f"SCRAM-{self.hash}"}
        self.config = tmp / "prosody.cfg.lua"
        self.stdout = tmp / "stdout.log"
        self.log_files = [self.stdout, tmp / "prosody.log"]
        self.c2s_port, self.tls_port, self.http_port = free_port(), free_port(), free_port()
        certs = tmp / "certs"
        certs.mkdir()
        (tmp / "data").mkdir()
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
             "-keyout", str(certs / "key.pem"), "-out", str(certs / "cert.pem"),
             "-subj", f"/CN={DOMAIN}", "-addext", f"subjectAltName=DNS:{DOMAIN}"],
            check=True, capture_output=True)
        self.config.write_text(PROSODY_CONFIG.format(
            tmp=tmp, c2s=self.c2s_port, tls=self.tls_port, http=self.http_port,
            hash=self.hash, limit=MAX_STANZA_BYTES, domain=DOMAIN,
            modules="; ".join(f'"{m}"' for m in PROSODY_MODULES),
            extra="\n".join(f"{PROSODY_LIMIT_OPTIONS[k]} = {v}" for k, v in (limits or {}).items())))
        subprocess.run(["chown", "-R", "prosody:prosody", str(tmp)], check=True)
        os.chmod(tmp, 0o755)

    def start(self) -> None:
        with open(self.stdout, "wb") as out:
            self.proc = subprocess.Popen(
                ["setpriv", "--reuid=prosody", "--regid=prosody", "--init-groups",
                 "prosody", "--config", str(self.config), "-F"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=self.tmp)
        deadline = time.monotonic() + START_TIMEOUT
        while not all(port_open(p) for p in (self.c2s_port, self.tls_port, self.http_port)):
            if self.proc.poll() is not None:
                raise RuntimeError(f"prosody exited with {self.proc.returncode}\n{self.logs()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"prosody did not listen within {START_TIMEOUT} s\n{self.logs()}")
            time.sleep(0.1)

    def add_user(self, local: str, password: str) -> None:
        r = subprocess.run(["prosodyctl", "--config", str(self.config), "register", local, DOMAIN, password],
                           capture_output=True, timeout=30)
        assert r.returncode == 0, f"prosodyctl register {local} failed: {r.stdout!r} {r.stderr!r}"


BACKENDS = {"switchboard": Switchboard, "prosody": Prosody}


def metrics(srv) -> str:
    """Switchboard's Prometheus exposition (the HTTP listener's /metrics)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{srv.http_port}/metrics", timeout=5) as r:
        return r.read().decode()


def metric(text: str, name: str, **labels) -> float:
    """One sample of `metrics` text; -1 when absent."""
    label = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.escape(name + (f"{{{label}}}" if label else "")) + r" ([0-9.e+]+)$"
    m = re.search(pattern, text, re.M)
    return float(m.group(1)) if m else -1


def server_kind() -> str:
    kind = os.environ.get("E2E_SERVER", "switchboard")
    if kind not in BACKENDS:
        raise pytest.UsageError(f"E2E_SERVER must be one of {sorted(BACKENDS)}, not {kind!r}")
    return kind


# ---------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------
@contextlib.contextmanager
def running_server(config, limits: dict[str, int] | None = None, settings: dict[str, str] | None = None):
    """Start a server of the selected kind in a fresh temp dir; stop it (SIGTERM, exit code 0
    expected) and clean up afterwards. ``limits`` are extra Switchboard ``limits`` keys,
    ``settings`` top-level Switchboard keys (e.g. ``log_level``); Prosody ignores ``settings``."""
    tmp = Path(tempfile.mkdtemp(prefix=f"e2e-{server_kind()}-"))

    def cleanup():
        if os.environ.get("E2E_KEEP"):
            print(f"\n[e2e] kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    try:
        srv = BACKENDS[server_kind()](tmp, limits, settings)
        srv.start()
    except BaseException:
        cleanup()
        raise
    servers = config._e2e_servers
    servers.append(srv)
    try:
        yield srv
    finally:
        code = srv.stop()
        servers.remove(srv)
        cleanup()
    assert code == 0, f"{srv.kind} exited with {code} after SIGTERM (expected a graceful 0)\n{srv.logs()}"


def pytest_configure(config):
    config._e2e_servers = []  # every server currently running (for logs in failure reports)


def pytest_runtest_setup(item):
    """Tests marked ``@pytest.mark.xep("XEP-…")`` skip against a Prosody without the module."""
    if server_kind() != "prosody":
        return
    for mark in item.iter_markers("xep"):
        for xep in mark.args:
            module = PROSODY_MODULE_FOR_XEP.get(xep)
            if module and module not in PROSODY_MODULES:
                pytest.skip(f"{xep}: the Prosody of this suite runs without mod_{module} "
                            f"(see PROSODY_MODULES in conftest.py)")


@pytest.fixture(scope="session")
def server(request):
    """The running server under test (one per test session)."""
    running = running_server(request.config)
    try:
        srv = running.__enter__()
    except BaseException as e:
        # One clear message instead of the same error for every test.
        pytest.exit(f"could not start the server under test ({server_kind()}): {e}", returncode=1)
    yield srv
    running.__exit__(None, None, None)


#: limits.resumption_timeout_seconds of the ``short_resumption_server``.
SHORT_RESUMPTION_SECONDS = 2


@pytest.fixture(scope="module")
def short_resumption_server(request):
    """A second server whose XEP-0198 sessions expire SHORT_RESUMPTION_SECONDS after their
    connection drops (started only for the modules that use it)."""
    with running_server(request.config, {"resumption_timeout_seconds": SHORT_RESUMPTION_SECONDS}) as srv:
        yield srv


@pytest.fixture
def xmpp_short_resumption(short_resumption_server):
    """Like ``xmpp``, for the ``short_resumption_server``."""
    return Session(short_resumption_server)


def _servers_used(item) -> list[ServerUnderTest]:
    return [v for v in getattr(item, "funcargs", {}).values() if isinstance(v, ServerUnderTest)]


@pytest.fixture(autouse=True)
def _server_still_running(request):
    """After every test that used a server: it must still be running."""
    yield
    for srv in _servers_used(request.node):
        assert srv.alive(), f"the server died during this test (exit {srv.proc.returncode})\n{srv.logs()}"


@pytest.fixture
def xmpp(server):
    """Per-test factory of accounts and logged-in clients; see xmpp_client.Session."""
    return Session(server)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for srv in list(item.config._e2e_servers):
            report.sections.append((f"{srv.kind} logs ({srv.tmp})", srv.logs()))
