"""A real OpenLDAP ``slapd`` for the end-to-end tests of the LDAP directory.

The Python twin of Sources/SwitchboardTestSupport/Slapd.swift: a temporary directory with a
``slapd.conf`` (mdb, schemas core/cosine/inetorgperson/nis, the ``syncprov`` overlay for RFC
4533 content sync), the entries of an LDIF loaded with ``slapadd``, and ``slapd -d 0`` (stays in
the foreground, so the PID we hold is slapd's) on a free loopback port.

    with Slapd.start(COMPANY_LDIF) as slapd:
        slapd.modify("dn: uid=zhangwei,...\\nchangetype: modify\\nreplace: title\\ntitle: 总监\\n")
        slapd.suspend()   # SIGSTOP: the socket stays open, nothing answers
        slapd.resume()

Needs the Debian packages ``slapd`` and ``ldap-utils``. slapd is killed when the context ends,
whatever the outcome of the test, and the temporary directory removed (kept with E2E_KEEP=1).
"""
from __future__ import annotations

import base64
import hashlib
import os
import sys
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from netutil import free_port, port_open  # noqa: E402

SLAPD = "/usr/sbin/slapd"
SLAPADD = "/usr/sbin/slapadd"
LDAPMODIFY = "/usr/bin/ldapmodify"
MODULE_PATH = "/usr/lib/ldap"
SCHEMA_PATH = "/etc/ldap/schema"

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPANY_LDIF = REPO_ROOT / "Tests/Fixtures/ldap/company.ldif"

BASE_DN = "dc=example,dc=com"
ADMIN_DN = "cn=admin,dc=example,dc=com"
ADMIN_PASSWORD = "admin-secret"
START_TIMEOUT = 15


def ssha(password: str) -> str:
    """``{SSHA}`` as slappasswd writes it: base64(SHA-1(password + salt) + salt)."""
    salt = os.urandom(8)
    return "{SSHA}" + base64.b64encode(hashlib.sha1(password.encode() + salt).digest() + salt).decode()


def slapd_conf(directory: Path) -> str:
    return f"""\
include {SCHEMA_PATH}/core.schema
include {SCHEMA_PATH}/cosine.schema
include {SCHEMA_PATH}/inetorgperson.schema
include {SCHEMA_PATH}/nis.schema
modulepath {MODULE_PATH}
moduleload back_mdb
moduleload syncprov
pidfile {directory}/slapd.pid
argsfile {directory}/slapd.args
sizelimit unlimited
timelimit unlimited

database mdb
maxsize 4294967296
suffix "{BASE_DN}"
rootdn "{ADMIN_DN}"
rootpw {ssha(ADMIN_PASSWORD)}
directory {directory}/db
index objectClass eq
index uid,mail,cn,employeeNumber eq,sub
index entryUUID,entryCSN eq
limits * size=unlimited time=unlimited
access to attrs=userPassword by self write by anonymous auth by * none
access to * by * read

overlay syncprov
syncprov-checkpoint 100 10
# The session log lets refreshOnly report deletions as UUIDs (delete phase).
syncprov-sessionlog 10000
"""




class Slapd:
    """A running slapd; use as a context manager (or call :meth:`stop`)."""

    kind = "slapd"  # for the failure report of conftest.pytest_runtest_makereport

    def __init__(self, tmp: Path, port: int, proc: subprocess.Popen):
        self.tmp = tmp
        self.port = port
        self.proc = proc
        self.log = tmp / "slapd.log"
        self.suspended = False
        # If the test process dies without teardown (pytest-timeout's os._exit, SIGKILL), a
        # watchdog shell kills slapd within a second.
        self.watchdog = subprocess.Popen(
            ["/bin/sh", "-c", 'while kill -0 "$0" 2>/dev/null; do sleep 0.5; done; kill -KILL "$1" 2>/dev/null',
             str(os.getpid()), str(proc.pid)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)

    @property
    def url(self) -> str:
        return f"ldap://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    @classmethod
    def start(cls, ldif: Path = COMPANY_LDIF) -> "Slapd":
        for path in (SLAPD, SLAPADD, LDAPMODIFY):
            if not os.access(path, os.X_OK):
                raise RuntimeError(f"{path} not found: apt-get install slapd ldap-utils")
        tmp = Path(tempfile.mkdtemp(prefix="e2e-slapd-"))
        try:
            (tmp / "db").mkdir()
            conf = tmp / "slapd.conf"
            conf.write_text(slapd_conf(tmp))
            _run([SLAPADD, "-q", "-f", str(conf), "-l", str(ldif)])
            last_error: Exception | None = None
            # A free port can be taken between our probe and slapd's bind: retry a few times.
            for _ in range(3):
                port = free_port()
                with open(tmp / "slapd.log", "ab") as log:
                    proc = subprocess.Popen(
                        [SLAPD, "-d", "0", "-f", str(conf), "-h", f"ldap://127.0.0.1:{port}/"],
                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                        start_new_session=True)
                slapd = cls(tmp, port, proc)
                try:
                    slapd._wait_listening()
                    return slapd
                except Exception as e:  # noqa: BLE001 - retried, then re-raised
                    last_error = e
                    slapd._kill()
            raise last_error or RuntimeError("slapd did not start")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while not port_open(self.port):
            if self.proc.poll() is not None:
                raise RuntimeError(f"slapd exited with {self.proc.returncode}:\n{self.logs()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"slapd did not listen on {self.port} within {START_TIMEOUT} s")
            time.sleep(0.025)

    def logs(self, tail: int = 40) -> str:
        if not self.log.exists():
            return ""
        lines = self.log.read_text(errors="replace").splitlines()
        return "\n".join([f"----- {self.log} (last {tail} lines) -----", *lines[-tail:]])

    def modify(self, ldif: str) -> str:
        """Apply changes with ``ldapmodify`` as the admin (changetype add/modify/delete/modrdn)."""
        if self.suspended:
            raise RuntimeError("slapd is suspended")
        change = self.tmp / f"change-{uuid.uuid4().hex}.ldif"
        change.write_text(ldif, encoding="utf-8")
        try:
            return _run([LDAPMODIFY, "-x", "-H", self.url, "-D", ADMIN_DN, "-w", ADMIN_PASSWORD,
                         "-f", str(change)])
        finally:
            change.unlink(missing_ok=True)

    def suspend(self) -> None:
        """SIGSTOP: slapd keeps its socket (connections are accepted by the kernel) but answers
        nothing, like a hung directory server."""
        os.kill(self.proc.pid, signal.SIGSTOP)
        self.suspended = True

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)
        self.suspended = False

    def _kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGCONT)  # a stopped process ignores SIGTERM
                self.proc.terminate()
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            except ProcessLookupError:
                pass
        if self.watchdog.poll() is None:
            self.watchdog.kill()
            self.watchdog.wait()

    def stop(self) -> None:
        self._kill()
        if os.environ.get("E2E_KEEP"):
            print(f"\n[e2e] kept {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> "Slapd":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _run(argv: list[str]) -> str:
    r = subprocess.run(argv, capture_output=True, timeout=60)
    out = (r.stdout + r.stderr).decode(errors="replace")
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited with {r.returncode}:\n{out}")
    return out


# ---------------------------------------------------------------------------------------
# Reading the fixture LDIF (what the tests expect the server to show)
# ---------------------------------------------------------------------------------------
def parse_ldif(path: Path = COMPANY_LDIF) -> list[dict[str, list[str]]]:
    """Entries of an LDIF file as {attribute: [values]} with 'dn'; base64 values decoded.
    Enough for the generated fixture (no URLs, no change records)."""
    entries = []
    for block in path.read_text(encoding="utf-8").split("\n\n"):
        lines: list[str] = []
        for line in block.split("\n"):
            if line.startswith("#"):
                continue
            if line.startswith(" ") and lines:
                lines[-1] += line[1:]
            elif line:
                lines.append(line)
        entry: dict[str, list[str]] = {}
        for line in lines:
            key, value = line.split(":", 1)
            if value.startswith(":"):
                value = base64.b64decode(value[1:].strip()).decode("utf-8")
            else:
                value = value.strip()
            entry.setdefault(key, []).append(value)
        if entry:
            entries.append(entry)
    return entries


def parent_dn(dn: str) -> str:
    return dn.split(",", 1)[1]
