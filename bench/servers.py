"""The three servers under test: configuration, start (pinned to one core) and stop by PID.

Every server gets the same domain, the same self-signed certificate, loopback-only listeners,
hashed SCRAM credentials, in-band registration allowed from loopback, no shapers or rate limits,
STARTTLS offered but not required on c2s, direct TLS on a second port and XMPP over WebSocket on
an HTTP port. Python 3 standard library only.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

DOMAIN = "bench.test"
HOST = "127.0.0.1"
SERVER_CORE = "0"
START_TIMEOUT = 60
STOP_TIMEOUT = 20


def log(msg: str) -> None:
    print(f"[bench] {msg}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def port_open(port: int, host: str = HOST) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); treat it as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:  # reap if it is our child
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        if not pid_alive(pid):
            return True
        time.sleep(0.1)
    return not pid_alive(pid)


def terminate_pid(pid: int, what: str, timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM the recorded PID, wait, then SIGKILL it. Never by name."""
    if not pid_alive(pid):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    if not wait_gone(pid, timeout):
        log(f"{what} (pid {pid}) ignored SIGTERM for {timeout:.0f} s: SIGKILL")
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        wait_gone(pid, 5)


def listening_pids(port: int) -> list[int]:
    """PIDs holding a TCP socket listening on `port` (via /proc, no name matching)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                        inodes.add(parts[9])
        except OSError:
            continue
    pids = []
    if not inodes:
        return pids
    wanted = {f"socket:[{i}]" for i in inodes}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            for fd in os.listdir(f"/proc/{entry}/fd"):
                try:
                    if os.readlink(f"/proc/{entry}/fd/{fd}") in wanted:
                        pids.append(int(entry))
                        break
                except OSError:
                    continue
        except OSError:
            continue
    return pids


def make_certificate(certs: Path, kind: str = "ecdsa") -> None:
    """One self-signed certificate for bench.test, shared by all three servers: ECDSA P-256
    (``ecdsa``) or RSA-2048 (``rsa``)."""
    certs.mkdir(parents=True, exist_ok=True)
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"] if kind == "ecdsa" else ["-newkey", "rsa:2048"]
    subprocess.run(
        ["openssl", "req", "-x509", *key, "-nodes", "-days", "30",
         "-keyout", str(certs / "key.pem"), "-out", str(certs / "cert.pem"),
         "-subj", f"/CN={DOMAIN}", "-addext", f"subjectAltName=DNS:{DOMAIN}"],
        check=True, capture_output=True)
    (certs / "combined.pem").write_bytes((certs / "cert.pem").read_bytes() + (certs / "key.pem").read_bytes())
    for p in certs.iterdir():
        os.chmod(p, 0o644)


def tail(path: Path, n: int = 40) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return f"----- {path} (last {n} lines) -----\n" + "\n".join(lines[-n:])


class Server:
    name = "?"
    display = "?"
    #: Path of XMPP over WebSocket on the http port.
    ws_path = "/xmpp-websocket"
    #: SCRAM mechanisms accounts created by in-band registration can use.
    scram = ("SCRAM-SHA-1",)
    archive_supported = True   # --archive switches it on
    archive_always = False     # archives whatever the configuration says

    def __init__(self, root: Path, certs: Path, archive: bool):
        self.dir = root / self.name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.certs = certs
        self.archive = archive
        self.pid: int | None = None
        self.c2s_port = self.tls_port = self.http_port = 0
        self.log_files: list[Path] = []

    # ports the generator needs, per transport
    def port_for(self, transport: str) -> int:
        return {"tcp": self.c2s_port, "starttls": self.c2s_port, "tls": self.tls_port,
                "ws": self.http_port}[transport]

    def ws_url(self) -> str:
        return f"ws://{HOST}:{self.http_port}{self.ws_path}"

    def logs(self) -> str:
        return "\n".join(t for t in (tail(p) for p in self.log_files) if t)

    def wait_listening(self, ports: list[int], alive) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while not all(port_open(p) for p in ports):
            if not alive():
                raise RuntimeError(f"{self.display} exited during start-up\n{self.logs()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.display} did not listen on {ports} within {START_TIMEOUT} s\n{self.logs()}")
            time.sleep(0.1)

    def stop(self) -> None:
        """Stops a server started as a child process (its PID is the server's own)."""
        proc = getattr(self, "proc", None)
        if proc is not None:
            terminate_pid(proc.pid, self.name)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        self.proc = None
        self.pid = None

    def version(self) -> str:
        return ""

    def rss_kib(self) -> int | None:
        if self.pid is None:
            return None
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1])
        except OSError:
            return None
        return None


# ---------------------------------------------------------------------------------------------
class Switchboard(Server):
    name = "switchboard"
    display = "Switchboard"
    scram = ("SCRAM-SHA-1", "SCRAM-SHA-256")
    # The message archive (XEP-0313) is always on: the enterprise default, no switch to turn it
    # off. The pre-flight check reports what each server actually advertises.
    archive_supported = False
    archive_always = True

    def __init__(self, root: Path, certs: Path, archive: bool, binary: Path, extra: str = ""):
        super().__init__(root, certs, archive)
        self.bin = binary
        self.config = self.dir / "switchboard.yaml"
        self.status_file = self.dir / "status.json"
        self.stdout = self.dir / "stdout.log"
        self.log_files = [self.stdout]
        self.proc: subprocess.Popen | None = None
        self.c2s_port, self.tls_port, self.http_port = free_port(), free_port(), free_port()
        self.config.write_text(
            "# generated by bench/compare.py\n"
            f"domain: {DOMAIN}\n"
            f"data_dir: {self.dir / 'data'}\n"
            "log_level: warning\n"
            "bootstrap_admin: false\n"
            "registration: {enabled: true}\n"
            f"c2s: {{bind: {HOST}, port: {self.c2s_port}, require_tls: false}}\n"
            f"c2s_direct_tls: {{bind: {HOST}, port: {self.tls_port}}}\n"
            f"http: {{bind: {HOST}, port: {self.http_port}}}\n"
            f"tls: {{certificate: {certs / 'cert.pem'}, private_key: {certs / 'key.pem'}}}\n"
            # like the other servers here: no shapers, rate or connection limits
            "limits: {max_login_failures: 100000, stanza_rate_per_second: 0, max_connections_per_address: 0,"
            " connection_rate_per_address: 0, max_sessions_per_user: 0}\n"
            + (extra.replace("\\n", "\n") + "\n" if extra else ""))

    def start(self) -> None:
        self.status_file.unlink(missing_ok=True)
        with open(self.stdout, "wb") as out:
            self.proc = subprocess.Popen(
                ["taskset", "-c", SERVER_CORE, str(self.bin), "serve", "--config", str(self.config),
                 "--status-file", str(self.status_file)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=self.dir)
        self.pid = self.proc.pid  # taskset execs the server: same PID
        deadline = time.monotonic() + START_TIMEOUT
        while not self.status_file.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"switchboard exited with {self.proc.returncode}\n{self.logs()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"switchboard wrote no status file in {START_TIMEOUT} s\n{self.logs()}")
            time.sleep(0.05)
        time.sleep(0.05)
        status = json.loads(self.status_file.read_text())
        if int(status["pid"]) != self.proc.pid:
            raise RuntimeError(f"status pid {status['pid']} != spawned pid {self.proc.pid}")
        self.wait_listening([self.c2s_port, self.tls_port, self.http_port], lambda: self.proc.poll() is None)

    def version(self) -> str:
        try:
            r = subprocess.run([str(self.bin), "--version"], capture_output=True, text=True, timeout=10)
            return (r.stdout or r.stderr).strip().splitlines()[0] if (r.stdout or r.stderr).strip() else ""
        except (OSError, subprocess.TimeoutExpired):
            return ""


# ---------------------------------------------------------------------------------------------
PROSODY_CONFIG = """\
-- generated by bench/compare.py: Prosody 0.12 set up like the other servers under test
pidfile = "{dir}/prosody.pid"
data_path = "{dir}/data"
certificates = "{certs}"
interfaces = {{ "127.0.0.1" }}
local_interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {c2s} }}
c2s_direct_tls_ports = {{ {tls} }}
legacy_ssl_ports = {{ }}
s2s_ports = {{ }}
component_ports = {{ }}
http_ports = {{ {http} }}
http_interfaces = {{ "127.0.0.1" }}
https_ports = {{ }}
http_default_host = "{domain}"
admin_socket = "{dir}/admin.sock"
-- listen backlog 4096 like the other servers (Prosody's default is 128)
network_settings = {{ tcp_backlog = 4096 }}
log = {{ warn = "{dir}/prosody.log" }}

-- hashed credentials: SCRAM-SHA-1 keys (Prosody stores keys for one hash only)
authentication = "internal_hashed"
-- STARTTLS offered, not required (also lets XEP-0077 registration run without TLS)
c2s_require_encryption = false
allow_unencrypted_plain_auth = false
consider_websocket_secure = true
ssl = {{ certificate = "{certs}/cert.pem"; key = "{certs}/key.pem" }}

-- in-band registration; loopback is on mod_register_limits' allowlist (no throttle)
allow_registration = true
registration_allowlist = {{ "127.0.0.1", "::1" }}

-- no rate limits: mod_limits is not loaded, so there is no c2s/s2s rate limiting
{archive}
-- with --peer-extras also the features Switchboard has (carbons, blocking, stream management,
-- CSI), which stay idle unless a client enables them; the generator does not
modules_enabled = {{
  "roster"; "saslauth"; "tls"; "disco"; "private"; "vcard"; "version"; "time"; "ping";
  "register"; "offline"; "websocket"; "posix";{extras}{mam}
}}
modules_disabled = {{ "s2s" }}
VirtualHost "{domain}"
"""


class Prosody(Server):
    name = "prosody"
    display = "Prosody"

    def __init__(self, root: Path, certs: Path, archive: bool, extras: bool = False):
        super().__init__(root, certs, archive)
        self.config = self.dir / "prosody.cfg.lua"
        self.stdout = self.dir / "stdout.log"
        self.log_files = [self.stdout, self.dir / "prosody.log"]
        self.proc: subprocess.Popen | None = None
        self.c2s_port, self.tls_port, self.http_port = free_port(), free_port(), free_port()
        (self.dir / "data").mkdir(exist_ok=True)
        archive_cfg = ("-- message archive (XEP-0313) ON: every 1:1 message stored\n"
                       'archive_expires_after = "1w"\ndefault_archive_policy = true\n') if archive else \
            "-- message archive OFF (mod_mam not loaded)\n"
        self.config.write_text(PROSODY_CONFIG.format(
            dir=self.dir, certs=certs, c2s=self.c2s_port, tls=self.tls_port, http=self.http_port,
            domain=DOMAIN, archive=archive_cfg, mam=' "mam";' if archive else "",
            extras=' "carbons"; "blocklist"; "smacks"; "csi_simple";' if extras else ""))
        subprocess.run(["chown", "-R", "prosody:prosody", str(self.dir)], check=True)

    def start(self) -> None:
        with open(self.stdout, "wb") as out:
            self.proc = subprocess.Popen(
                ["taskset", "-c", SERVER_CORE, "setpriv", "--reuid=prosody", "--regid=prosody",
                 "--init-groups", "prosody", "--config", str(self.config), "-F"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=self.dir)
        self.pid = self.proc.pid  # taskset and setpriv exec: the PID is prosody's
        self.wait_listening([self.c2s_port, self.tls_port, self.http_port], lambda: self.proc.poll() is None)

    def version(self) -> str:
        try:
            r = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "prosody"], capture_output=True, text=True)
            return "prosody " + r.stdout.strip()
        except OSError:
            return ""


# ---------------------------------------------------------------------------------------------
EJABBERD_CONFIG = """\
# generated by bench/compare.py: ejabberd 23.01 set up like the other servers under test
hosts:
  - "{domain}"
loglevel: warning
log_rotate_count: 0
certfiles:
  - "{certs}/combined.pem"
acme:
  auto: false
# hashed credentials (SCRAM-SHA-1 keys, 4096 iterations by default)
auth_method: internal
auth_password_format: scram
disable_sasl_mechanisms:
  - "digest-md5"
  - "X-OAUTH2"
# XEP-0077 throttles one registration per address per 600 s by default
registration_timeout: infinity
# Listen backlog: ejabberd's default is 5, so 50 logins in flight overflow the accept queue
# and the kernel drops SYNs (1 s retransmit: p99 login latency ~1.5 s, logins/s capped).
# 4096 everywhere, as Switchboard (SwiftNIO) and Prosody (network_settings) are set here.
listen:
  -
    port: {c2s}
    ip: "127.0.0.1"
    module: ejabberd_c2s
    max_stanza_size: 262144
    shaper: c2s_shaper
    access: c2s
    backlog: 4096
    starttls: true
    starttls_required: false
  -
    port: {tls}
    ip: "127.0.0.1"
    module: ejabberd_c2s
    max_stanza_size: 262144
    shaper: c2s_shaper
    access: c2s
    backlog: 4096
    tls: true
  -
    port: {http}
    ip: "127.0.0.1"
    module: ejabberd_http
    backlog: 4096
    tls: false
    request_handlers:
      /ws: ejabberd_http_ws
      /xmpp-websocket: ejabberd_http_ws
acl:
  loopback:
    ip:
      - 127.0.0.0/8
      - ::1/128
access_rules:
  c2s:
    allow: all
  register:
    allow: all
  register_from_loopback:
    allow: loopback
# no traffic shaping: the packaged default shapes clients to 3000 B/s
shaper_rules:
  c2s_shaper: none
  max_user_sessions: infinity
  max_user_offline_messages: 5000
modules:
  mod_roster: {{}}
  mod_disco: {{}}
  mod_private: {{}}
  mod_vcard:
    search: false
  mod_version: {{}}
  mod_time: {{}}
  mod_ping: {{}}
  mod_offline:
    access_max_user_messages: max_user_offline_messages
  mod_register:
    access: register
    ip_access: register_from_loopback
{extras}{mam}"""


# With --peer-extras: the features Switchboard has too (idle until a client enables them; the
# generator does not). They still cost ejabberd: mod_privacy/mod_blocking, mod_stream_mgmt,
# mod_client_state and mod_carboncopy hook every stanza and session (measured here: closed-loop
# messages 29,000 -> 16,800/s, idle memory 45 -> 71 KiB per connection).
EJABBERD_EXTRAS = """\
  mod_carboncopy: {}
  mod_blocking: {}
  mod_privacy: {}
  mod_stream_mgmt: {}
  mod_client_state: {}
"""


class Ejabberd(Server):
    name = "ejabberd"
    display = "ejabberd"
    ws_path = "/ws"  # /xmpp-websocket is routed to ejabberd_http_ws too

    def __init__(self, root: Path, certs: Path, archive: bool, extras: bool = False):
        super().__init__(root, certs, archive)
        self.node = f"benchejd{os.getpid()}@localhost"
        self.config = self.dir / "ejabberd.yml"
        self.ctl_config = self.dir / "ejabberdctl.cfg"
        self.spool = self.dir / "spool"
        self.logdir = self.dir / "logs"
        self.pidfile = self.dir / "ejabberd.pid"
        self.stdout = self.dir / "ctl.log"
        self.log_files = [self.stdout, self.logdir / "ejabberd.log", self.logdir / "error.log"]
        self.epmd_pid: int | None = None
        self.epmd_was_running = False
        self.c2s_port, self.tls_port, self.http_port = free_port(), free_port(), free_port()
        self.spool.mkdir(exist_ok=True)
        self.logdir.mkdir(exist_ok=True)
        mam = ("  # message archive (XEP-0313) ON: every 1:1 message stored (mnesia)\n"
               "  mod_mam:\n    default: always\n") if archive else "  # message archive OFF (mod_mam not loaded)\n"
        self.config.write_text(EJABBERD_CONFIG.format(
            domain=DOMAIN, certs=certs, c2s=self.c2s_port, tls=self.tls_port, http=self.http_port, mam=mam,
            extras=EJABBERD_EXTRAS if extras else ""))
        # Sourced by ejabberdctl after the command line: must not set EJABBERD_CONFIG_PATH.
        self.ctl_config.write_text(
            "# generated by bench/compare.py\n"
            f"ERLANG_NODE={self.node}\n"
            "ERL_EPMD_ADDRESS=127.0.0.1\n"
            "INET_DIST_INTERFACE=127.0.0.1\n"
            f"EJABBERD_PID_PATH={self.pidfile}\n"
            "ERL_OPTIONS=\"-env ERL_CRASH_DUMP_BYTES 0\"\n"
            "ERL_MAX_PORTS=65536\n")
        if Path("/etc/ejabberd/inetrc").exists():
            shutil.copy("/etc/ejabberd/inetrc", self.dir / "inetrc")
        subprocess.run(["chown", "-R", "ejabberd:ejabberd", str(self.dir)], check=True)

    def ctl(self, *args: str, timeout: float = 60, pin: bool = False) -> subprocess.CompletedProcess:
        # Run ejabberdctl as the ejabberd user ourselves: when root runs it, it switches with
        # `su`, whose pam_limits drops the open-file limit to 1024 (too few for the idle test).
        cmd = (["taskset", "-c", SERVER_CORE] if pin else []) + [
            "setpriv", "--reuid=ejabberd", "--regid=ejabberd", "--init-groups",
            "ejabberdctl", "--config-dir", str(self.dir), "--config", str(self.config),
            "--ctl-config", str(self.ctl_config), "--spool", str(self.spool), "--logs", str(self.logdir),
            "--node", self.node, *args]
        env = dict(os.environ, HOME="/var/lib/ejabberd")
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=self.dir)

    def start(self) -> None:
        self.epmd_was_running = port_open(4369)
        self.pidfile.unlink(missing_ok=True)
        r = self.ctl("start", pin=True)
        with open(self.stdout, "a") as f:
            f.write(r.stdout + r.stderr)
        if r.returncode != 0:
            raise RuntimeError(f"ejabberdctl start failed ({r.returncode}): {r.stdout}{r.stderr}\n{self.logs()}")
        deadline = time.monotonic() + START_TIMEOUT
        while not (self.pidfile.exists() and self.pidfile.read_text().strip()):
            if time.monotonic() > deadline:
                self._stop_epmd()
                raise RuntimeError(f"ejabberd wrote no pid file in {START_TIMEOUT} s\n{self.logs()}")
            time.sleep(0.2)
        self.pid = int(self.pidfile.read_text().strip())
        if not self.epmd_was_running:
            pids = listening_pids(4369)
            self.epmd_pid = pids[0] if pids else None
        self.wait_listening([self.c2s_port, self.tls_port, self.http_port], lambda: pid_alive(self.pid))

    def stop(self) -> None:
        if self.pid is not None and pid_alive(self.pid):
            try:
                r = self.ctl("stop", timeout=30)
                with open(self.stdout, "a") as f:
                    f.write(r.stdout + r.stderr)
            except subprocess.TimeoutExpired:
                pass
            if not wait_gone(self.pid, STOP_TIMEOUT):
                terminate_pid(self.pid, "ejabberd")
        self.pid = None
        self._stop_epmd()

    def _stop_epmd(self) -> None:
        if self.epmd_was_running:
            return  # someone else's epmd: leave it alone
        pid = self.epmd_pid
        if pid is None:
            pids = listening_pids(4369)
            pid = pids[0] if pids else None
        if pid is not None:
            terminate_pid(pid, "epmd", timeout=5)
        self.epmd_pid = None

    def version(self) -> str:
        try:
            r = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "ejabberd"], capture_output=True, text=True)
            return "ejabberd " + r.stdout.strip()
        except OSError:
            return ""
