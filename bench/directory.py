#!/usr/bin/env python3
"""Directory benchmark: LDAP sync at company scale, directory search and department rosters.

    bench/directory.sh                      # 50,000 users, a 500-person department
    bench/directory.sh --users 5000 --department 100 --quick --no-build    # CI smoke run
    bench/directory.sh --help

Steps, all on this machine, against a real slapd (Debian's OpenLDAP):
  1. generate a company of --users employees (Tests/Fixtures/ldap/make_company.py) and load it
     into slapd (syncprov on, like a production OpenLDAP);
  2. `switchboard ldap sync --full` into an empty database           -> full sync seconds;
  3. change the titles of 100 users in LDAP, `ldap sync --incremental` -> incremental seconds;
  4. import a department of --department local users (bench1..benchN) with `switchboard org import`;
  5. run the server (release build, pinned to core 0) and with switchboard-bench (core 1):
     login + roster get for every member of that department        -> roster p50/p99 ms,
     login + one XEP-0055 search by pinyin initials over everyone  -> search p50/p99 ms.
Prints a markdown table with the targets of the directory issue, and one JSON line.
Python 3 standard library only.
"""
import argparse
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "Tests" / "e2e"))
from slapd_fixture import Slapd  # noqa: E402  (the same slapd set-up as the end-to-end tests)
from netutil import free_port  # noqa: E402
SERVER_CORE, GENERATOR_CORE = "0", "1"
TARGETS = {"full_sync_s": 60.0, "incremental_sync_s": 1.0, "search_p99_ms": 10.0, "roster_p99_ms": 50.0}


def log(message):
    print(f"[directory-bench] {message}", file=sys.stderr, flush=True)



def run(cmd, **kwargs):
    return subprocess.run(cmd, check=True, text=True, capture_output=True, **kwargs)


def ensure_packages():
    missing = [p for p, path in [("slapd", "/usr/sbin/slapd"), ("ldap-utils", "/usr/bin/ldapmodify")] if not os.path.exists(path)]
    if missing:
        log(f"installing {' '.join(missing)}")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "install", "-y", "-q", *missing], check=True, env=env, stdout=subprocess.DEVNULL)


def user_dns(ldif, count):
    """The first `count` user DNs of the LDIF (for the incremental change set)."""
    dns, current = [], None
    with open(ldif, encoding="utf-8") as f:
        for line in f:
            if line.startswith("dn:: "):
                current = base64.b64decode(line[5:].strip()).decode()
            elif line.startswith("dn: "):
                current = line[4:].strip()
            elif line.startswith("objectClass: inetOrgPerson") and current and "ou=Departments" in current:
                dns.append(current)
                if len(dns) == count:
                    break
    return dns


def bench_json(cmd):
    result = run(cmd)
    lines = [l for l in result.stdout.splitlines() if l.startswith("{")]
    if not lines:
        raise SystemExit(f"no JSON from {' '.join(cmd)}:\n{result.stderr}")
    return json.loads(lines[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=50000, help="employees in LDAP (default 50000)")
    parser.add_argument("--department", type=int, default=500, help="size of the department whose roster is measured (default 500)")
    parser.add_argument("--searchers", type=int, default=200, help="users that each run one search (default 200)")
    parser.add_argument("--no-build", action="store_true", help="use the existing binaries")
    parser.add_argument("--debug", action="store_true", help="debug binaries from .build/debug (CI smoke; figures meaningless)")
    parser.add_argument("--quick", action="store_true", help="one round per scenario")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()

    ensure_packages()
    if args.debug:
        bin_dir = ROOT / ".build" / "debug"
    else:
        bin_dir = ROOT / ".build-bench" / "release"
        if not args.no_build:
            for product in ["switchboard", "switchboard-bench"]:
                log(f"building {product} (release)")
                subprocess.run(["swift", "build", "-c", "release", "--scratch-path", str(ROOT / ".build-bench"), "--product", product],
                               check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    sb, bench = bin_dir / "switchboard", bin_dir / "switchboard-bench"
    work = Path(tempfile.mkdtemp(prefix="switchboard-directory-bench-"))
    slapd = server = None
    rounds = "1" if args.quick else "3"
    try:
        ldif = work / "company.ldif"
        run([sys.executable, str(ROOT / "Tests/Fixtures/ldap/make_company.py"), "--users", str(args.users), "-o", str(ldif)])
        started = time.monotonic()
        slapd = Slapd.start(ldif)
        ldap_port = slapd.port
        log(f"slapd loaded the company in {time.monotonic() - started:.1f} s")
        data = work / "data"
        common = f"""domain: example.com
data_dir: {data}
bootstrap_admin: false
"""
        sync_conf = work / "sync.yaml"
        sync_conf.write_text(common + f"""ldap:
  enabled: true
  url: ldap://127.0.0.1:{ldap_port}
  start_tls: false
  allow_plaintext: true
  bind_dn: cn=admin,dc=example,dc=com
  bind_password: admin-secret
  unit_base: ou=Departments,dc=example,dc=com
  group_base: ou=Groups,dc=example,dc=com
  group_roles: {{im-admins: admin, auditors: auditor}}
  disabled_attribute: employeeType
  disabled_values: [disabled]
""")

        def sync(mode):
            out = run([str(sb), "ldap", "sync", f"--{mode}", "--verbose", "--config", str(sync_conf)]).stdout
            summary = [l for l in out.splitlines() if " sync ok in " in l]
            if not summary:
                raise SystemExit(f"sync failed:\n{out}")
            seconds = float(summary[-1].split(" sync ok in ")[1].split(" s")[0])
            log(summary[-1])
            return seconds

        full = sync("full")
        changes = work / "changes.ldif"
        changes.write_text("\n".join(
            f"dn:: {base64.b64encode(dn.encode()).decode()}\nchangetype: modify\nreplace: title\ntitle: changed {i}\n-\n"
            for i, dn in enumerate(user_dns(ldif, 100))))
        slapd.modify(changes.read_text())
        incremental = sync("incremental")

        csv = work / "department.csv"
        csv.write_text("username,name,unit,title,password\n" + "".join(
            f"bench{i},测试员{i},基准测试/五百人部门,工程师,secret\n" for i in range(1, args.department + 1)))
        log(run([str(sb), "org", "import", str(csv), "--config", str(sync_conf)]).stdout.strip())

        serve_conf = work / "serve.yaml"
        status = work / "status.json"
        serve_conf.write_text(common + f"""c2s: {{bind: 127.0.0.1, port: {free_port()}, require_tls: false}}
c2s_direct_tls: {{enabled: false, bind: 127.0.0.1, port: 0}}
http: {{enabled: false, bind: 127.0.0.1, port: 0}}
log_level: warning
directory: {{search_max_results: 50}}
limits: {{max_login_failures: 100000, stanza_rate_per_second: 0, max_connections_per_address: 0, connection_rate_per_address: 0}}
""")
        server = subprocess.Popen(["taskset", "-c", SERVER_CORE, str(sb), "serve", "--config", str(serve_conf), "--status-file", str(status)],
                                  stdout=subprocess.DEVNULL, stderr=open(work / "server.log", "w"))
        for _ in range(600):
            if status.exists():
                break
            time.sleep(0.05)
        ports = json.loads(status.read_text())
        c2s = str(ports.get("c2s") or ports.get("ports", {}).get("c2s"))
        base = ["taskset", "-c", GENERATOR_CORE, str(bench)]
        opts = ["--port", c2s, "--domain", "example.com", "--user-prefix", "bench", "--password", "secret",
                "--server-pid", str(server.pid), "--concurrency", "1", "--rounds", rounds]  # latency, not queueing
        roster = bench_json(base + ["roster", "--users", str(args.department)] + opts)
        log(f"roster of a {args.department}-person department: p50 {roster.get('roster_p50_ms')} ms, p99 {roster.get('roster_p99_ms')} ms")
        form = ("<query xmlns='jabber:iq:search'><x xmlns='jabber:x:data' type='submit'>"
                "<field var='FORM_TYPE' type='hidden'><value>jabber:iq:search</value></field>"
                "<field var='name'><value>zw</value></field></x></query>")
        search = bench_json(base + ["iq", "--users", str(min(args.searchers, args.department)), "--type", "set", "--to", "example.com",
                                    "--name", "search", "--payload", form] + opts)
        log(f"search 'zw' over {args.users + args.department} users: p50 {search.get('search_p50_ms')} ms, p99 {search.get('search_p99_ms')} ms")

        figures = {
            "users": args.users, "department": args.department,
            "full_sync_s": full, "incremental_sync_s": incremental,
            "roster_p50_ms": roster.get("roster_p50_ms"), "roster_p99_ms": roster.get("roster_p99_ms"),
            "search_p50_ms": search.get("search_p50_ms"), "search_p99_ms": search.get("search_p99_ms"),
            "failures": (roster.get("failures") or 0) + (search.get("failures") or 0),
        }
        print(f"\n| measure ({args.users:,} users, {args.department}-person department) | figure | target |")
        print("|---|---|---|")
        rows = [("full LDAP sync", "full_sync_s", "s"), ("incremental sync of 100 changes", "incremental_sync_s", "s"),
                ("search by pinyin initials, p99", "search_p99_ms", "ms"), ("department roster, p99", "roster_p99_ms", "ms")]
        for label, key, unit in rows:
            value = figures[key]
            ok = value is not None and value < TARGETS[key]
            print(f"| {label} | {value} {unit} | < {TARGETS[key]:g} {unit} {'✓' if ok else '✗'} |")
        print()
        print(json.dumps(figures))
        if figures["failures"]:
            raise SystemExit(f"{figures['failures']} failures (see the JSON above)")
    finally:
        if server and server.poll() is None:
            server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
        if slapd:
            slapd.stop()
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
