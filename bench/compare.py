#!/usr/bin/env python3
"""Side-by-side benchmark driver: Switchboard vs Prosody 0.12 vs ejabberd 23.01.

One server at a time, pinned to core 0 (`taskset -c 0`), with the same configuration intent
(bench/servers.py), the same accounts (created by the generator's `register` scenario, XEP-0077)
and the same load generator (`switchboard-bench`, pinned to core 1). Every generator result is a
JSON line; they are collected into bench/results/<date>.jsonl and summarised as a markdown table
with ratios. Python 3 standard library only. See bench/README.md.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import shlex
import signal
import subprocess
import sys
import tempfile
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import servers as S  # noqa: E402
import xmppcheck as X  # noqa: E402

log = S.log
GENERATOR_CORE = "1"
NOISY_CORES = 0.15  # other processes' CPU during a case above which its figures are flagged
ALL_SERVERS = ["switchboard", "prosody", "ejabberd"]
ALL_SCENARIOS = ["login", "idle", "messages", "roster"]
ALL_TRANSPORTS = ["tcp", "starttls", "tls", "ws"]
PASSWORD = "secret"
USER_PREFIX = "bench"


# ------------------------------------------------------------------------------------------------
# Scenario matrix
# ------------------------------------------------------------------------------------------------
@dataclass
class Case:
    """One generator invocation, identical for every server."""
    key: str            # e.g. "login/tcp"
    scenario: str       # generator subcommand
    transport: str
    args: list[str] = field(default_factory=list)
    timeout: float = 900
    users: int | None = None  # accounts the case uses (default: --users)


def build_cases(opts) -> list[Case]:
    q = opts.quick
    t = opts.transports
    steps = opts.idle_steps or ("0,10,20" if q else "0,2000,5000,10000")
    largest_step = max(int(x) for x in steps.split(",") if x.strip()) if "idle" in opts.scenarios else 0
    # Every idle connection is a different account: register enough for the largest step.
    accounts = max(opts.users, largest_step)
    # Registration over STARTTLS: Switchboard refuses XEP-0077 on an unencrypted stream.
    cases = [Case("register", "register", "starttls", ["--concurrency", "10" if q else "50"], 30 if q else 3600,
                  users=accounts)]
    if "login" in opts.scenarios:
        for tr in [x for x in ("tcp", "starttls", "tls", "ws") if x in t]:
            cases.append(Case(f"login/{tr}", "login", tr,
                              ["--concurrency", "5" if q else str(opts.login_concurrency),
                               "--rounds", "2" if q else str(opts.login_rounds)],
                              30 if q else 1200))
    if "idle" in opts.scenarios:
        for tr in [x for x in ("tcp", "starttls") if x in t]:
            cases.append(Case(f"idle/{tr}", "idle", tr,
                              ["--steps", steps, "--settle", "0.5" if q else str(opts.idle_settle)],
                              30 if q else 1800, users=largest_step))
    if "messages" in opts.scenarios:
        dur, warm = ("1", "0.5") if q else (str(opts.duration), str(opts.warmup))
        mts = [x for x in ("tcp", "starttls") if x in t] or ["tcp"]
        for tr in mts:
            cases.append(Case(f"messages/{tr} closed-loop", "messages", tr,
                              ["--window", "2", "--duration", dur, "--warmup", warm], 30 if q else 600))
        rates = [200] if q else opts.rates
        for rate in rates:
            cases.append(Case(f"messages/{mts[0]} @{rate}/s", "messages", mts[0],
                              ["--window", "2", "--duration", dur, "--warmup", warm, "--rate", str(rate)],
                              30 if q else 600))
    if "roster" in opts.scenarios:
        cases.append(Case("roster/tcp", "roster", "tcp", [], 30 if q else 600))
    return cases


# ------------------------------------------------------------------------------------------------
# Measures shown in the table, per scenario: (label, unit, higher_is_better (None: no ratio),
# JSON key (dotted) or function of the result). The whole JSON line is always kept in the .jsonl
# file; only these go in the table.
# ------------------------------------------------------------------------------------------------
def _per_op_ms(cpu_key: str, count_key: str):
    def f(r: dict):
        cpu, n = lookup(r, cpu_key), lookup(r, count_key)
        return cpu * 1000 / n if cpu is not None and n else None
    return f


def _last_rss(r: dict):
    pts = [p.get("server_rss_kib") for p in r.get("points", []) if isinstance(p, dict)]
    pts = [p for p in pts if isinstance(p, (int, float))]
    return pts[-1] if pts else None


def _last_connections(r: dict):
    pts = [p.get("connections") for p in r.get("points", []) if isinstance(p, dict)]
    return pts[-1] if pts else None


MEASURES: dict[str, list[tuple[str, str, bool, object]]] = {
    "register": [
        ("registrations/s", "", True, "registrations_per_s"),
        ("server CPU per registration", "ms", False, _per_op_ms("server_cpu_s", "created")),
    ],
    "login": [
        ("logins/s", "", True, "logins_per_s"),
        ("server CPU per login", "ms", False, "server_cpu_ms_per_login"),
        ("login latency p50", "ms", False, "login_p50_ms"),
        ("login latency p99", "ms", False, "login_p99_ms"),
    ],
    "idle": [
        ("RSS per idle connection (slope)", "KiB", False, "kib_per_connection"),
        ("connections held at the last step", "", None, _last_connections),
        ("server RSS at the last step", "KiB", False, _last_rss),
    ],
    "messages": [
        ("msgs/s delivered", "", True, "msgs_per_s"),
        ("server CPU per 10k msgs", "s", False, "server_cpu_s_per_10k_msgs"),
        ("latency p50", "ms", False, "latency.p50_ms"),
        ("latency p99", "ms", False, "latency.p99_ms"),
    ],
    "roster": [
        ("logins/s (login + roster get)", "", True, "logins_per_s"),
        ("roster result p50", "ms", False, "roster_p50_ms"),
        ("roster result p99", "ms", False, "roster_p99_ms"),
    ],
}


def measure(result: dict, how):
    v = how(result) if callable(how) else lookup(result, how)
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def failures(result: dict) -> int:
    return sum(int(lookup(result, k) or 0) for k in ("failures", "login_failures", "message_errors",
                                                    "dropped_sessions", "dropped"))


def lookup(d: dict, dotted: str):
    cur = d
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur if isinstance(cur, (int, float)) and not isinstance(cur, bool) else None


# ------------------------------------------------------------------------------------------------
# Environment: packages, build, machine state
# ------------------------------------------------------------------------------------------------
def ensure_packages(names: list[str]) -> None:
    missing = []
    for p in names:
        r = subprocess.run(["dpkg-query", "-W", "-f=${Status}", p], capture_output=True, text=True)
        if "install ok installed" not in r.stdout:
            missing.append(p)
    if not missing:
        return
    if os.geteuid() != 0:
        sys.exit(f"missing Debian packages {missing}; run as root or install them")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    log(f"apt-get install {' '.join(missing)}")
    r = subprocess.run(["apt-get", "install", "-y", "-q", *missing], env=env)
    if r.returncode != 0:  # stale or absent package lists: update once, then retry
        log("apt-get update (install failed with the current package lists)")
        subprocess.run(["apt-get", "update", "-q"], env=env, check=True)
        subprocess.run(["apt-get", "install", "-y", "-q", *missing], env=env, check=True)


def build(opts, products: list[str]) -> None:
    for product in products:
        cmd = ["swift", "build", "-c", opts.build_config, "--scratch-path", opts.scratch_path, "--product", product]
        log(f"building: {' '.join(cmd)}")
        t0 = time.monotonic()
        subprocess.run(cmd, cwd=REPO, check=True)
        log(f"built {product} in {time.monotonic() - t0:.0f} s")


def machine_state() -> dict:
    load1, load5, _ = os.getloadavg()
    return {"loadavg_1m": round(load1, 2), "loadavg_5m": round(load5, 2), "cpus": os.cpu_count()}


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_busy_s() -> float:
    """CPU-seconds all cores spent in processes since boot (/proc/stat user + nice + system).

    Interrupt and softirq time (loopback packet processing) and steal are left out: they are not
    charged to any process, so they would otherwise show up as 'other processes'."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return (fields[0] + fields[1] + fields[2]) / CLK_TCK


def pid_cpu_s(pid) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            parts = f.read().rsplit(")", 1)[1].split()
        return (int(parts[11]) + int(parts[12])) / CLK_TCK
    except (OSError, IndexError, ValueError, TypeError):
        return 0.0


PF_KTHREAD = 0x00200000


def kernel_threads_cpu_s() -> float:
    """CPU of kernel threads (ksoftirqd doing loopback packet work, kworkers, kdamond...)."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                parts = f.read().rsplit(")", 1)[1].split()
            if int(parts[6]) & PF_KTHREAD:
                total += int(parts[11]) + int(parts[12])
        except (OSError, IndexError, ValueError):
            continue
    return total / CLK_TCK


def own_cpu_s() -> float:
    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


class CPUAccount:
    """Splits the machine's CPU use over an interval into server, generator+driver, and others.

    'Others' is every process that is neither the server under test nor ours nor a kernel thread:
    another build, another benchmark. More than ~0.15 core of it means the figures are skewed."""

    def __init__(self, server_pid):
        self.server_pid = server_pid
        self.t0, self.busy0 = time.monotonic(), cpu_busy_s()
        self.srv0, self.own0 = pid_cpu_s(server_pid), own_cpu_s()
        self.k0 = kernel_threads_cpu_s()

    def others_cores(self) -> float:
        wall = max(time.monotonic() - self.t0, 1e-3)
        busy = cpu_busy_s() - self.busy0
        mine = (pid_cpu_s(self.server_pid) - self.srv0) + (own_cpu_s() - self.own0) \
            + (kernel_threads_cpu_s() - self.k0)
        return max(busy - mine, 0.0) / wall


def wait_quiet(server_pid, max_wait: float, threshold: float = 0.15) -> float:
    """Waits (up to max_wait s) until other processes use < threshold cores; returns the last reading."""
    deadline = time.monotonic() + max_wait
    warned = False
    while True:
        acct = CPUAccount(server_pid)
        time.sleep(1.0)
        others = acct.others_cores()
        if others < threshold or time.monotonic() >= deadline:
            if warned:
                log(f"other processes use {others:.2f} cores; " +
                    ("going on" if others < threshold else f"going on anyway after {max_wait:.0f} s"))
            return others
        if not warned:
            log(f"waiting for the machine to be quiet: other processes use {others:.2f} cores")
            warned = True


def wait_server_idle(server_pid, max_wait: float, threshold: float = 0.05) -> float:
    """Waits (up to max_wait s) until the server itself uses < threshold cores, so that a case
    is not charged with work the previous one left behind (a closed loop's archive backlog, a
    database checkpoint, a garbage collection); returns the seconds waited."""
    start = time.monotonic()
    while time.monotonic() - start < max_wait:
        before, t = pid_cpu_s(server_pid), time.monotonic()
        time.sleep(1.0)
        if (pid_cpu_s(server_pid) - before) / (time.monotonic() - t) < threshold:
            break
    waited = time.monotonic() - start
    if waited > 1.5:
        log(f"waited {waited:.0f} s for the server to finish the previous case's work")
    return waited


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# ------------------------------------------------------------------------------------------------
# Pre-flight: each server must look the way the benchmark assumes before it gets load
# ------------------------------------------------------------------------------------------------
MAM = "urn:xmpp:mam:2"


def preflight(srv: S.Server, mechanism: str, want_archive: bool | None) -> bool:
    """Checks the server looks the way the benchmark assumes; returns whether it archives.

    want_archive None: no expectation (the server has no archive switch)."""
    f = X.probe(S.HOST, srv.c2s_port, S.DOMAIN)
    problems = []
    if mechanism not in f["mechanisms"]:
        problems.append(f"{mechanism} not offered on c2s (offered: {f['mechanisms']})")
    if not f["starttls"]:
        problems.append("STARTTLS not offered on c2s")
    if not f["register"]:
        problems.append("in-band registration not advertised on c2s")
    w = X.websocket_probe(S.HOST, srv.http_port, srv.ws_path, S.DOMAIN)
    if mechanism not in w["mechanisms"]:
        problems.append(f"{mechanism} not offered over WebSocket {srv.ws_path} (offered: {w['mechanisms']})")
    # One check account (the same on every server): XEP-0077, SCRAM login over STARTTLS, disco.
    X.register(S.HOST, srv.c2s_port, S.DOMAIN, "benchcheck", PASSWORD, starttls=True)
    acct = X.login(S.HOST, srv.c2s_port, S.DOMAIN, "benchcheck", PASSWORD, mechanism=mechanism,
                   starttls=True, disco=True)
    archives = MAM in acct["account_features"] or MAM in acct["domain_features"]
    if want_archive is not None and archives != want_archive:
        problems.append(f"message archive is {'on' if archives else 'off'}, expected {'on' if want_archive else 'off'}")
    if problems:
        raise RuntimeError(f"{srv.display} pre-flight failed: " + "; ".join(problems))
    log(f"{srv.display}: c2s offers {f['mechanisms']} + STARTTLS + register; "
        f"WebSocket {srv.ws_path} offers {w['mechanisms']}; SCRAM login OK "
        f"({acct['iterations']} iterations); message archive {'ON' if archives else 'off'}")
    return archives


# ------------------------------------------------------------------------------------------------
# Running the generator
# ------------------------------------------------------------------------------------------------
def run_case(opts, srv: S.Server, case: Case, run_dir: Path) -> dict:
    cmd = ["taskset", "-c", GENERATOR_CORE, str(opts.bench_bin), case.scenario,
           "--host", S.HOST, "--port", str(srv.port_for(case.transport)), "--domain", S.DOMAIN,
           "--transport", case.transport, "--mechanism", opts.mechanism,
           "--user-prefix", USER_PREFIX, "--password", PASSWORD, "--users", str(case.users or opts.users),
           "--server-pid", str(srv.pid), "--label", f"{srv.name}:{case.key}"]
    if case.transport == "ws":
        cmd += ["--ws-path", srv.ws_path]
    cmd += case.args
    if opts.quick:  # a hang must not eat the CI budget: per-connection bound 10 s
        cmd += ["--timeout", "10"]
    cmd += opts.extra_generator_args.get(case.scenario, [])
    safe = case.key.replace("/", "_").replace(" ", "_").replace("@", "at")
    err_path = run_dir / f"{srv.name}-{safe}.stderr"
    log(f"{srv.display}: {case.key}: {' '.join(shlex.quote(c) for c in cmd[3:])}")
    settled = wait_server_idle(srv.pid, opts.wait_quiet) if opts.wait_quiet > 0 else None
    before = wait_quiet(srv.pid, opts.wait_quiet) if opts.wait_quiet > 0 else None
    acct = CPUAccount(srv.pid)
    t0 = time.monotonic()
    record = {"server": srv.name, "case": case.key, "scenario": case.scenario, "transport": case.transport}
    if settled is not None:
        record["server_settle_s"] = round(settled, 1)
    try:
        with open(err_path, "wb") as err:
            p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, timeout=case.timeout)
        out = p.stdout.decode(errors="replace")
        lines = [ln for ln in out.splitlines() if ln.strip().startswith("{")]
        if lines:
            record["result"] = json.loads(lines[-1])
        if p.returncode != 0 or not lines:
            record["error"] = f"generator exited {p.returncode}; " + tail_text(err_path, out)
    except subprocess.TimeoutExpired:
        record["error"] = f"generator timed out after {case.timeout:.0f} s; " + tail_text(err_path, "")
    except json.JSONDecodeError as e:
        record["error"] = f"bad JSON from the generator: {e}"
    record["wall_s"] = round(time.monotonic() - t0, 2)
    # CPU of processes other than the server, the generator and this driver during the case
    record["others_cpu_cores"] = round(acct.others_cores(), 3)
    if before is not None:
        record["others_cpu_cores_before"] = round(before, 3)
    if srv.pid is not None and not S.pid_alive(srv.pid):
        record["error"] = (record.get("error", "") + " | server died during the run").strip(" |")
    if "error" in record:
        log(f"{srv.display}: {case.key}: FAILED: {record['error']} (log: {err_path})")
    if "result" in record:
        noisy = record["others_cpu_cores"] >= NOISY_CORES
        log(f"{srv.display}: {case.key}: {summarise(case.scenario, record['result'])} ({record['wall_s']} s"
            f"{', OTHER PROCESSES USED %.2f CORES: SKEWED' % record['others_cpu_cores'] if noisy else ''})")
    return record


def tail_text(path: Path, stdout: str, n: int = 6) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        lines = []
    lines += stdout.splitlines()
    return " / ".join(lines[-n:])[:1500]


def summarise(scenario: str, result: dict) -> str:
    parts = []
    for label, unit, _, how in MEASURES.get(scenario, []):
        v = measure(result, how)
        if v is not None:
            parts.append(f"{label} {fmt(v)}{(' ' + unit) if unit else ''}")
    n = failures(result)
    if n:
        parts.append(f"{n} FAILURES {json.dumps(result.get('failure_reasons', {}))[:300]}")
    gen = generator_share(result)
    if gen is not None:
        parts.append(f"generator {gen:.0%} of its core")
    return ", ".join(parts) if parts else json.dumps(result)[:300]


def generator_share(result: dict):
    v = lookup(result, "generator_cpu_share_median")
    return v if v is not None else lookup(result, "generator_cpu_share")


def fmt(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, int) or (isinstance(v, float) and v.is_integer() and abs(v) >= 100):
        return f"{int(v):,}"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


# ------------------------------------------------------------------------------------------------
# Table
# ------------------------------------------------------------------------------------------------
def table(records: list[dict], servers: list[str], cases: list[Case]) -> str:
    by = {(r["server"], r["case"]): r for r in records}
    names = {"switchboard": "Switchboard", "prosody": "Prosody", "ejabberd": "ejabberd"}
    cols = [s for s in ALL_SERVERS if s in servers]
    peers = [p for p in ("prosody", "ejabberd") if p in servers] if "switchboard" in servers else []
    head = ["measure"] + [names[s] for s in cols] + [f"ratio vs {names[p]}" for p in peers]
    rows = []
    for case in cases:
        for label, unit, higher, how in MEASURES.get(case.scenario, []):
            vals = {}
            for s in cols:
                r = by.get((s, case.key))
                if r is None:
                    vals[s] = None
                elif "error" in r and "result" not in r:
                    vals[s] = "error"
                else:
                    vals[s] = measure(r["result"], how)
            if all(v is None for v in vals.values()):
                continue
            arrow = {True: " ↑", False: " ↓", None: ""}[higher]
            name = f"{case.key}: {label}" + (f" ({unit})" if unit else "") + arrow
            row = [name] + [v if isinstance(v, str) else fmt(v) for v in (vals[s] for s in cols)]
            for p in peers:
                a, b = vals.get("switchboard"), vals.get(p)
                if higher is not None and isinstance(a, (int, float)) and isinstance(b, (int, float)) \
                        and a > 0 and b > 0:
                    ratio = a / b if higher else b / a
                    row.append(f"{ratio:.2f}×" if ratio < 100 else f"{ratio:,.0f}×")
                else:
                    row.append("—")
            rows.append(row)
        noisy = {s: by[(s, case.key)].get("others_cpu_cores") if (s, case.key) in by else None for s in cols}
        if any(v is not None and v >= NOISY_CORES for v in noisy.values()):
            rows.append([f"{case.key}: ⚠ other processes' CPU during the case (cores)"] +
                        [f"{v:.2f}" + (" ⚠" if v >= NOISY_CORES else "") if v is not None else "—"
                         for v in (noisy[s] for s in cols)] + ["" for _ in peers])
        fails = {s: failures(by[(s, case.key)]["result"]) if (s, case.key) in by
                 and "result" in by[(s, case.key)] else None for s in cols}
        if any(fails.values()):
            rows.append([f"{case.key}: failed logins/messages/sessions ↓"] +
                        [fmt(v) if v is not None else "—" for v in (fails[s] for s in cols)] +
                        ["" for _ in peers])
        # generator CPU share, per case, so a saturated generator is visible
        gens = {s: generator_share(by[(s, case.key)]["result"]) if (s, case.key) in by
                and "result" in by[(s, case.key)] else None for s in cols}
        if any(v is not None for v in gens.values()):
            rows.append([f"{case.key}: generator CPU (share of its core)"] +
                        [f"{v:.0%}" if v is not None else "—" for v in (gens[s] for s in cols)] +
                        ["" for _ in peers])
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def thread_split(records: list[dict], cases: list[Case]) -> list[str]:
    """Where each server's CPU went in the message cases: µs per delivered message by thread name
    (the generator reads every server thread's schedstat), so an event loop's cost is told from
    storage threads' and a pool's."""
    names = {"switchboard": "Switchboard", "prosody": "Prosody", "ejabberd": "ejabberd"}
    keys = {c.key for c in cases if c.scenario == "messages"}
    out = []
    for r in records:
        res = r.get("result") or {}
        threads, delivered = res.get("server_threads_cpu_s"), res.get("received")
        if r.get("case") not in keys or not isinstance(threads, dict) or not delivered:
            continue
        parts = [f"{name} {1e6 * sec / delivered:.1f}" for name, sec in list(threads.items())[:6]]
        out.append(f"- {names.get(r['server'], r['server'])} {r['case']}: {', '.join(parts)}")
    if out:
        out = ["Server CPU per delivered message by thread (µs; busiest first):", ""] + out + [""]
    return out


# ------------------------------------------------------------------------------------------------
def parse_args(argv):
    ap = argparse.ArgumentParser(
        prog="bench/compare.sh",
        description="Run the same XMPP load against Switchboard, Prosody and ejabberd, one at a time.")
    ap.add_argument("--servers", default=",".join(ALL_SERVERS),
                    help="comma list of switchboard,prosody,ejabberd (default: all)")
    ap.add_argument("--scenarios", default="login,idle,messages,roster",
                    help="comma list of login,idle,messages,roster (register always runs first)")
    ap.add_argument("--users", type=int, default=None, help="accounts per server (default 1000; --quick: 20)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run in seconds (CI)")
    ap.add_argument("--archive", action="store_true",
                    help="message archive ON for the peers (Prosody mod_mam, ejabberd mod_mam default: always)")
    ap.add_argument("--peer-extras", action="store_true",
                    help="peers also load carbons, blocking, stream management and CSI, as Switchboard has "
                         "them (costs ejabberd ~40%% of its message throughput; default: peers as lean as possible)")
    ap.add_argument("--cert", choices=("ecdsa", "rsa"), default="ecdsa",
                    help="the one certificate every server presents: ecdsa (P-256, what Switchboard generates "
                         "and what public CAs issue by default) or rsa (RSA-2048; its private-key operation "
                         "costs 0.2 ms of server CPU per TLS handshake here)")
    ap.add_argument("--transports", default="tcp,starttls,ws",
                    help="transports to measure where the scenario supports them: tcp,starttls,tls,ws")
    ap.add_argument("--mechanism", default="SCRAM-SHA-1",
                    help="SASL mechanism (Prosody stores keys for SCRAM-SHA-1 only)")
    ap.add_argument("--login-concurrency", type=int, default=50)
    ap.add_argument("--login-rounds", type=int, default=3)
    ap.add_argument("--idle-steps", default=None, help="connection counts, default 0,2000,5000,10000")
    ap.add_argument("--idle-settle", type=float, default=15, help="seconds held at each idle step")
    ap.add_argument("--duration", type=float, default=20, help="messages: measured seconds")
    ap.add_argument("--warmup", type=float, default=5, help="messages: warm-up seconds")
    ap.add_argument("--rates", default="1000,2500",
                    help="messages: open-loop offered rates after the closed-loop run ('' for none)")
    ap.add_argument("--generator-args", action="append", default=[], metavar="SCENARIO:ARGS",
                    help="extra generator arguments for one scenario, e.g. 'idle:--source-addresses 4' (repeatable)")
    ap.add_argument("--wait-quiet", type=float, default=None, metavar="SECONDS",
                    help="before each case wait up to this long for other processes to use < 0.15 cores "
                         "(default 120; --quick: 0)")
    ap.add_argument("--switchboard-config", default="", metavar="YAML",
                    help="lines appended to Switchboard's generated configuration, e.g. "
                         "'security: {encryption: false, audit: false}' to measure what encryption and audit cost")
    ap.add_argument("--no-build", action="store_true", help="use the binaries as they are")
    ap.add_argument("--build-config", default="release", choices=["release", "debug"])
    ap.add_argument("--scratch-path", default=str(REPO / ".build-bench"))
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (configs, data, logs)")
    ap.add_argument("--results-dir", default=str(HERE / "results"))
    opts = ap.parse_args(argv)
    opts.servers = [s for s in opts.servers.split(",") if s]
    for s in opts.servers:
        if s not in ALL_SERVERS:
            ap.error(f"unknown server {s!r}; known: {ALL_SERVERS}")
    opts.scenarios = [s for s in opts.scenarios.split(",") if s]
    for s in opts.scenarios:
        if s not in ALL_SCENARIOS and s != "register":
            ap.error(f"unknown scenario {s!r}; known: {ALL_SCENARIOS}")
    opts.transports = [t for t in opts.transports.split(",") if t]
    for t in opts.transports:
        if t not in ALL_TRANSPORTS:
            ap.error(f"unknown transport {t!r}; known: {ALL_TRANSPORTS}")
    opts.rates = [int(r) for r in opts.rates.split(",") if r.strip()]
    if opts.users is None:
        opts.users = 20 if opts.quick else 1000
    if opts.wait_quiet is None:
        opts.wait_quiet = 0 if opts.quick else 120
    opts.extra_generator_args = {}
    for item in opts.generator_args:
        scen, _, rest = item.partition(":")
        opts.extra_generator_args.setdefault(scen, []).extend(shlex.split(rest))
    out_dir = Path(opts.scratch_path) / opts.build_config
    opts.switchboard_bin = Path(os.environ.get("SWITCHBOARD_BIN", out_dir / "switchboard"))
    opts.bench_bin = Path(os.environ.get("SWITCHBOARD_BENCH_BIN", out_dir / "switchboard-bench"))
    return opts


def main(argv=None) -> int:
    opts = parse_args(sys.argv[1:] if argv is None else argv)
    started = time.monotonic()
    raise_nofile()

    # SIGTERM/SIGHUP -> KeyboardInterrupt, so the servers are always stopped by their PIDs.
    def interrupted(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGHUP, interrupted)

    pkgs = ["openssl", "util-linux"] + [p for p in ("prosody", "ejabberd") if p in opts.servers]
    ensure_packages(pkgs)
    if not opts.no_build and "SWITCHBOARD_BENCH_BIN" not in os.environ:
        products = ["switchboard-bench"]
        if "switchboard" in opts.servers and "SWITCHBOARD_BIN" not in os.environ:
            products.insert(0, "switchboard")
        build(opts, products)
    if not opts.bench_bin.exists():
        sys.exit(f"load generator not found at {opts.bench_bin} (build it or set SWITCHBOARD_BENCH_BIN)")
    if "switchboard" in opts.servers and not opts.switchboard_bin.exists():
        sys.exit(f"switchboard not found at {opts.switchboard_bin} (build it or set SWITCHBOARD_BIN)")

    state = machine_state()
    if state["loadavg_1m"] > 0.5:
        log(f"warning: the machine is not quiet (load average {state['loadavg_1m']}); figures will be skewed")
    if (os.cpu_count() or 1) < 2:
        log("warning: fewer than 2 CPUs: the server and the generator share a core")

    cases = build_cases(opts)
    stamp = dt.datetime.now().strftime("%Y-%m-%d-%H%M%S") + ("-quick" if opts.quick else "")
    results_dir = Path(opts.results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    results_path = results_dir / f"{stamp}.jsonl"
    root = Path(tempfile.mkdtemp(prefix="switchboard-compare-"))
    os.chmod(root, 0o755)  # the prosody and ejabberd users must reach their directories
    run_dir = root / "generator"
    run_dir.mkdir()
    log(f"work directory {root}; results -> {results_path}")
    S.make_certificate(root / "certs", opts.cert)

    meta = {"type": "run", "date": dt.datetime.now().isoformat(timespec="seconds"), "quick": opts.quick,
            "users": opts.users, "servers": opts.servers, "scenarios": opts.scenarios,
            "transports": opts.transports, "mechanism": opts.mechanism, "archive_peers": opts.archive,
            "peer_extras": opts.peer_extras, "certificate": opts.cert,
            "machine": state, "server_core": S.SERVER_CORE, "generator_core": GENERATOR_CORE}
    records: list[dict] = []
    versions: dict[str, str] = {}
    archive_state: dict[str, bool] = {}
    with open(results_path, "w") as out:
        out.write(json.dumps(meta) + "\n")
        try:
            for name in [s for s in ALL_SERVERS if s in opts.servers]:
                srv = make_server(name, root, opts)
                versions[name] = srv.version()
                if srv.archive_always:
                    log(f"{srv.display}: message archive always on (no switch): --archive not applicable")
                elif opts.archive and not srv.archive_supported:
                    log(f"{srv.display}: --archive not applicable (no message archive): measured without")
                archive = opts.archive and srv.archive_supported
                try:
                    state = "always on" if srv.archive_always else ("on" if archive else "off")
                    log(f"{srv.display}: starting (core {S.SERVER_CORE}, message archive {state})")
                    srv.start()
                    log(f"{srv.display}: pid {srv.pid}, c2s {srv.c2s_port}, tls {srv.tls_port}, "
                        f"http {srv.http_port}, RSS {srv.rss_kib()} KiB")
                    observed = preflight(srv, opts.mechanism,
                                         None if srv.archive_always or not srv.archive_supported else archive)
                    archive_state[name] = observed
                    for case in cases:
                        rec = run_case(opts, srv, case, run_dir)
                        rec.update({"type": "result", "archive": observed, "version": versions[name],
                                    "users": opts.users})
                        records.append(rec)
                        out.write(json.dumps(rec) + "\n")
                        out.flush()
                        if "result" not in rec and case.scenario == "register":
                            log(f"{srv.display}: registration failed; skipping its other scenarios")
                            break
                        if srv.pid is not None and not S.pid_alive(srv.pid):
                            log(f"{srv.display}: server died; skipping its other scenarios")
                            break
                except Exception as e:  # one broken server must not hide the others' figures
                    log(f"{srv.display}: ERROR: {e}")
                    rec = {"type": "result", "server": name, "case": "start", "error": str(e)[:3000]}
                    records.append(rec)
                    out.write(json.dumps(rec) + "\n")
                finally:
                    log(f"{srv.display}: stopping pid {srv.pid}")
                    srv.stop()
        except KeyboardInterrupt:
            log("interrupted: servers stopped")
            raise
        finally:
            if opts.keep:
                log(f"kept {root}")
            else:
                shutil.rmtree(root, ignore_errors=True)

    md = render(opts, cases, records, versions, archive_state, meta, results_path, time.monotonic() - started)
    results_path.with_suffix(".md").write_text(md + "\n")
    print()
    print(md)
    failed = [r for r in records if "error" in r]
    return 1 if failed else 0


def make_server(name: str, root: Path, opts) -> S.Server:
    certs = root / "certs"
    if name == "switchboard":
        return S.Switchboard(root, certs, opts.archive, opts.switchboard_bin, extra=opts.switchboard_config)
    if name == "prosody":
        return S.Prosody(root, certs, opts.archive, extras=opts.peer_extras)
    return S.Ejabberd(root, certs, opts.archive, extras=opts.peer_extras)


def render(opts, cases, records, versions, archive_state, meta, results_path, elapsed) -> str:
    names = {"switchboard": "Switchboard", "prosody": "Prosody", "ejabberd": "ejabberd"}
    archives = ", ".join(f"{names[k]} {'ON' if v else 'off'}" for k, v in archive_state.items())
    lines = [f"## Switchboard vs peers — {meta['date']}{' (quick smoke run: sizes too small to mean anything)' if opts.quick else ''}",
             "",
             f"{opts.users} accounts, {opts.mechanism}, server on core {S.SERVER_CORE}, generator on core "
             f"{GENERATOR_CORE}, loopback; load average at start {meta['machine']['loadavg_1m']}.",
             f"Message archive (XEP-0313, as each server advertises it): {archives or 'unknown'}"
             f"{'' if opts.archive or not set(opts.servers) & {'prosody', 'ejabberd'} else ' — `--archive` switches the peers’ archive on'}.",
             ("Peers also load carbons, blocking, stream management and CSI, as Switchboard has them "
              "(`--peer-extras`; unused by the generator)." if opts.peer_extras else
              "Peers as lean as possible: without carbons, blocking, stream management and CSI, which "
              "Switchboard has (`--peer-extras` loads them)."),
             "Versions: " + ", ".join(f"{k} {v}".strip() if not v.startswith(k) else v for k, v in versions.items()),
             "Ratios: how many times better Switchboard is (>1 = better; ↑ higher is better, ↓ lower is better).",
             "",
             table(records, opts.servers, cases),
             ""]
    lines += thread_split(records, cases)
    errors = [r for r in records if "error" in r]
    for r in errors:
        lines.append(f"- **{r['server']} {r['case']} failed**: {r['error'][:600]}")
    lines.append(f"\nRaw results: {results_path.relative_to(REPO) if results_path.is_relative_to(REPO) else results_path}"
                 f" ({elapsed:.0f} s)")
    return "\n".join(lines)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
