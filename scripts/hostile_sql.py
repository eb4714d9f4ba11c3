#!/usr/bin/env python3
"""Fires classes of hostile POST /v1/sql requests at a running ticklake daemon.

Each class is one way a careless or hostile client can hurt the daemon:
statements that used to end the process (an oversized string result, long
flat chains of operators that overflowed the stack, an answer whose JSON
buffer was sized from its first rows, functions that size their result
from an argument's value), statements that ask for more memory or time
than the query API allows, more queries at once than
`api.max_concurrent`, and attempts to get a write, a file access or a
session change past the read-only guard.

A class passes when every request of it is answered with the status it
should get (a refusal, 4xx, for anything that tries to write, read files or
change the session; 4xx/5xx for a query that is too big; 504 for one that
runs too long; 429 beyond the query slots) and, after it, `/healthz`
answers, `/status` shows an `uptime_secs` that did not go backwards (the
process was not restarted), and, with --pid, the process still exists. At
the end, ingest must have gone on: the accounting's `received` (summed over
`/status` `accounting[]`) grew since the start.

Prints one line per class and a summary line; exits 1 if any check failed.
Only the Python standard library is used, so it runs anywhere the daemon
does: scripts/hostile_sql.py --url http://127.0.0.1:9464 [--pid PID]
"""

import argparse
import json
import os
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

# How long to wait at the end for `received` to grow: a feed may be quiet
# for a while, and any replay or live market sends within a minute.
INGEST_WAIT_SECS = 60.0

# What a class's answers must be.
REFUSED = "refused (4xx)"  # a bypass attempt: never run, never 200
FAILED = "fails (4xx/5xx)"  # too big: it may start, it must fail alone
TIMEOUT = "timeout (504)"
BUSY = "some 429"


class Daemon:
    """The daemon's HTTP API on one base URL."""

    def __init__(self, url, http_timeout):
        self.url = url.rstrip("/")
        self.http_timeout = http_timeout

    def request(self, method, path, body=None, headers=None):
        """(status, parsed JSON or None); status 0 when the connection failed."""
        h = {"Content-Type": "application/json"}
        h.update(headers or {})
        req = urllib.request.Request(self.url + path, data=body, headers=h, method=method)
        try:
            with urllib.request.urlopen(req, timeout=self.http_timeout) as r:
                status, raw = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        except (OSError, urllib.error.URLError) as e:
            return 0, {"error": "connection", "detail": str(e)}
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, None

    def sql(self, statement):
        return self.request("POST", "/v1/sql", json.dumps({"sql": statement}).encode())

    def healthy(self):
        status, body = self.request("GET", "/healthz")
        return status == 200 and isinstance(body, dict) and body.get("status") == "ok"

    def status(self):
        status, body = self.request("GET", "/status")
        if status != 200 or not isinstance(body, dict):
            raise RuntimeError(f"/status answered {status}")
        return body


def alive(pid):
    """Whether the process exists and has not exited. An exited child of
    whoever started it stays a zombie until reaped, and signal 0 still
    reaches a zombie, so on Linux its state is read too."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, owned by someone else
    try:
        with open(f"/proc/{pid}/stat") as f:
            # pid (comm) state ...: comm may hold spaces, the state follows its ')'.
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def received(status):
    return sum(int(a["received"]) for a in status["accounting"])


def actor_restarts(status):
    return sum(int(c.get("restarts", 0)) for c in status["tree"]["children"])


def values(n):
    """An inline table of n rows (column1 = 0..n-1), without table functions."""
    return "(values " + ",".join(f"({i})" for i in range(n)) + ")"


def chain(n, op):
    terms = [f"price = {i}" for i in range(n)]
    return "select * from market.trades where " + op.join(terms)


def classes(scratch):
    """(name, expectation, [statement, ...]) for every single-request class;
    the flood and the HTTP-level classes are built in main."""
    v1k = values(1000)
    cross4 = f"{v1k} a, {v1k} b, {v1k} c, {v1k} d"
    insert = "insert into market.trades (symbol) values ('HOSTILE')"
    # One 1 MB value, with 64-bit offsets so that copies of it do not stop
    # at arrow's 2 GB limit of a string column (which panics instead).
    big = "select arrow_cast(repeat('a', 1000000), 'LargeUtf8') as x"
    return [
        # Item 1: statements that ended the daemon, or could.
        ("oversized string result", FAILED, ["select length(repeat('ab', 1073741824))"]),
        (
            # 65 rows of 20 MB, then 9,935 short ones: an answer buffer
            # sized from its first 64 rows asked for ~200 GB and aborted.
            # (20 MB is now past repeat's value limit too.)
            "answer sized from its first rows",
            FAILED,
            [
                "select case when i <= 65 then repeat('x', 20000000) else 'y' end as s "
                "from (select unnest(range(1, 10001)) as i)"
            ],
        ),
        ("long arithmetic chain", FAILED, ["select " + " + ".join(["1"] * 20000)]),
        ("long OR chain", FAILED, [chain(20000, " or ")]),
        ("long AND chain", FAILED, [chain(20000, " and ")]),
        ("long concatenation chain", FAILED, ["select " + " || ".join(["'x'"] * 20000)]),
        ("deep parentheses", FAILED, ["select " + "(" * 5000 + "1" + ")" * 5000]),
        (
            "deep CASE nesting",
            FAILED,
            ["select " + "case when true then " * 3000 + "1" + " end" * 3000],
        ),
        (
            "deep subqueries",
            FAILED,
            ["select * from " + "(select * from " * 300 + "market.trades" + ") s" * 300],
        ),
        ("UNION chain", FAILED, [" union all ".join(["select 1"] * 5000)]),
        ("statement over 256 KiB", FAILED, ["select '" + "x" * (300 << 10) + "'"]),
        (
            "aggregate past the memory limit",
            FAILED,
            # A terabyte of text: past any pool, or the time limit first.
            [f"select string_agg(repeat('x', 1000), ',') from {v1k} a, {v1k} b, {v1k} c"],
        ),
        (
            "sort past the memory limit",
            FAILED,
            [f"select a.column1, b.column1, c.column1 from {v1k} a, {v1k} b, {v1k} c order by random()"],
        ),
        (
            "slow cross join",
            TIMEOUT,
            [f"select sum(a.column1 * b.column1 + c.column1 - d.column1) from {cross4}"],
        ),
        # Functions that size their result from an argument's value: each
        # used to abort the daemon on a failed allocation, or to run for
        # minutes where no timeout reaches. Refused before they allocate,
        # 400 with the function and the limit (api.max_memory_bytes).
        (
            "series of billions",
            REFUSED,
            [
                "select cardinality(range(1, 2000000000))",
                "select cardinality(generate_series(1, 2000000000))",
                "select generate_series(timestamp '1970-01-01 00:00:00', timestamp '2100-01-01 00:00:00', interval '1 second')",
            ],
        ),
        (
            "array_repeat of a billion",
            REFUSED,
            [
                "select array_repeat(null, 1000000000)",
                "select array_repeat(false, 400000000)",
                "select list_repeat(1, 1000000000)",
                "select array_resize([1], 1000000000)",
            ],
        ),
        ("padding to gigabytes", REFUSED, ["select lpad('x', 2000000000)", "select rpad('x', 2000000000, 'é')"]),
        (
            "generated values in a cross join",
            REFUSED,
            # 300 KB per row, 2.4 GB per batch.
            [f"select max(length(s)) from (select repeat(a.column1::varchar, 100000) s from {v1k} a, {v1k} b)"],
        ),
        (
            "constant series in every row",
            REFUSED,
            # An 800 KB list copied into each of 10,000 rows.
            ["select range(0, 100000) from (select unnest(range(0, 10000)))"],
        ),
        (
            "series that stands still",
            REFUSED,
            # February 1st plus a month less 28 days is February 1st.
            ["select range(date '2023-02-01', date '2022-01-01', interval '1 month -28 days')"],
        ),
        (
            "products of small arguments",
            REFUSED,
            [
                "select length(replace(repeat('a', 100000), 'a', repeat('b', 100000)))",
                "select length(regexp_replace(repeat('a', 100000), 'a', repeat('b', 100000), 'g'))",
                "select length(array_to_string(range(0, 100000), repeat(',', 100000)))",
                "select cardinality(array_replace_all(array_repeat([1], 50000), [1], range(0, 50000)))",
                "select to_char(now(), repeat('%+', 100000))",
            ],
        ),
        (
            "many generated columns at once",
            FAILED,
            # 100 columns of 100 MB: each fits, together they are 10 GB.
            [
                "select "
                + ", ".join(f"repeat('x', 1000000 + i + {k}) c{k}" for k in range(100))
                + " from (select unnest(range(0, 100)) i)"
            ],
        ),
        # Operators that copy a value without asking the memory pool: a
        # cross join repeats a 1 MB value into every row of its batch
        # (100,000 rows want 100 GB), and ||, concat and [...] copy their
        # inputs as often as they are named. In the daemon's own process
        # the first of these grew it to 16 GB and the kernel killed it;
        # in a SQL worker (api.sql_isolation) the worker alone ends.
        (
            "cross join copying a value into every row",
            FAILED,
            [
                f"select max(length(a.x)) from ({big}) a cross join unnest(range(0, 100000)) u",
            ],
        ),
        (
            "operators copying their inputs",
            FAILED,
            [
                f"select max(length(a.x || a.x || a.x || a.x)) from ({big}) a cross join unnest(range(0, 100000)) u",
                f"select max(length(concat(a.x, a.x, a.x, a.x))) from ({big}) a cross join unnest(range(0, 100000)) u",
                f"select max(cardinality([a.x, a.x, a.x, a.x])) from ({big}) a cross join unnest(range(0, 100000)) u",
            ],
        ),
        # Guard bypass attempts: each must be refused, never run.
        ("insert", REFUSED, [insert]),
        (
            "DML behind comments",
            REFUSED,
            [f"/* a harmless select */ {insert}", f"-- select 1\n{insert}"],
        ),
        (
            "DML inside WITH",
            REFUSED,
            [
                f"with t as (select 1) {insert}",
                "with t as (select 1) update market.trades set price = 0",
                "with t as (select 1) delete from market.trades",
                f"with a as (select 1), b as (select 2) {insert}",
            ],
        ),
        (
            "update, delete, drop, create",
            REFUSED,
            [
                "update market.trades set price = 0",
                "delete from market.trades",
                "drop table market.trades",
                "create table market.hostile as select 1",
                "create view market.hostile as select 1",
            ],
        ),
        (
            "COPY to a file",
            REFUSED,
            [f"copy (select 1) to '{scratch}/copy.csv'", f"copy market.trades to '{scratch}/trades.parquet'"],
        ),
        (
            "CREATE EXTERNAL TABLE",
            REFUSED,
            [f"create external table hostile stored as csv location '{scratch}/'"],
        ),
        ("SET and RESET", REFUSED, ["set datafusion.execution.target_partitions = 1", "reset datafusion.execution.batch_size"]),
        (
            "second statement",
            REFUSED,
            ["select 1; drop table market.trades", f"select 1; {insert}"],
        ),
        (
            "statement hidden after a comment",
            REFUSED,
            [f"select 1 -- x\n; {insert}", f"select 1 /* ; */ ; {insert}"],
        ),
        ("quoted injection", REFUSED, ["select ''; drop table market.trades; --'"]),
        (
            "EXPLAIN ANALYZE of DML",
            REFUSED,
            [f"explain analyze {insert}", f"explain {insert}"],
        ),
        (
            "PREPARE and EXECUTE",
            REFUSED,
            ["prepare p(varchar) as insert into market.trades (symbol) values ($1)", "execute p('HOSTILE')"],
        ),
        ("SELECT INTO", REFUSED, ["select * into hostile from market.trades"]),
        (
            "file table functions",
            REFUSED,
            ["select * from read_csv('/etc/passwd')", "select * from READ_PARQUET('/etc/hostname')"],
        ),
        ("path as a table name", REFUSED, ["select * from '/etc/passwd'"]),
        (
            "unicode look-alikes",
            REFUSED,
            [
                "\uff29\uff2e\uff33\uff25\uff32\uff34 into market.trades values (1)",  # fullwidth INSERT
                "IN\u200bSERT into market.trades values (1)",  # zero-width space
                "select 1;\ufeffinsert into market.trades (symbol) values ('HOSTILE')",
            ],
        ),
        ("binary garbage", REFUSED, ["\x00\x01\x7fselect", "\x00"]),
        ("empty statement", REFUSED, ["", "  ;  "]),
    ]


def flood_once(daemon, v1k, n):
    """n slow queries at once: the first api.max_concurrent take the slots
    (and time out), the rest must be turned away at once with 429."""
    slow = f"select sum(a.column1 * b.column1 + c.column1 - d.column1) from {v1k} a, {v1k} b, {v1k} c, {v1k} d"
    statuses = [None] * n
    start = threading.Barrier(n)

    def one(i):
        start.wait()
        statuses[i] = daemon.sql(slow)[0]

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return statuses


def judge(expect, statuses):
    if any(s == 0 for s in statuses):
        return False
    if expect == REFUSED:
        return all(400 <= s < 500 for s in statuses)
    if expect == FAILED:
        return all(400 <= s < 600 for s in statuses)
    if expect == TIMEOUT:
        return all(s == 504 for s in statuses)
    if expect == BUSY:
        return all(400 <= s < 600 for s in statuses) and 429 in statuses
    raise ValueError(expect)


def summarize(statuses, codes):
    """e.g. `400 rejected_query` or `429x22 504x2`."""
    if len(statuses) > 4:
        counts = {}
        for s in statuses:
            counts[s] = counts.get(s, 0) + 1
        return " ".join(f"{s}x{c}" for s, c in sorted(counts.items()))
    return ", ".join(f"{s} {c}" for s, c in zip(statuses, codes))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", required=True, help="the daemon's HTTP base, e.g. http://127.0.0.1:9464")
    ap.add_argument("--pid", type=int, help="the daemon's process id: checked to exist after every class")
    ap.add_argument("--flood", type=int, default=24, help="concurrent slow queries of the flood class (more than api.max_concurrent)")
    ap.add_argument("--http-timeout", type=float, default=300.0, help="seconds to wait for one answer")
    args = ap.parse_args()

    daemon = Daemon(args.url, args.http_timeout)
    if not daemon.healthy():
        print(f"hostile_sql: no healthy daemon at {args.url}", file=sys.stderr)
        return 2
    first = daemon.status()
    received_before, restarts_before = received(first), actor_restarts(first)
    uptime = [int(first["uptime_secs"])]
    failures = []
    counted = {"classes": 0, "passed": 0}
    scratch = tempfile.mkdtemp(prefix="ticklake-hostile-")

    def after():
        """Healthz, no restart, the process still there."""
        problems = []
        healthy = daemon.healthy()
        if not healthy:
            problems.append("/healthz did not answer ok")
        try:
            now = int(daemon.status()["uptime_secs"])
            if now < uptime[0]:
                problems.append(f"uptime went back from {uptime[0]} to {now} s: the daemon restarted")
            uptime[0] = now
        except (RuntimeError, KeyError, ValueError) as e:
            problems.append(f"/status: {e}")
        if args.pid is not None and not alive(args.pid):
            problems.append(f"process {args.pid} is gone")
        return healthy, problems

    def report(name, expect, statuses, codes):
        counted["classes"] += 1
        ok = judge(expect, statuses)
        healthy, problems = after()
        if not ok:
            problems.insert(0, f"expected {expect}")
        verdict = "PASS" if not problems else "FAIL"
        if problems:
            failures.append(f"{name}: {'; '.join(problems)}")
        else:
            counted["passed"] += 1
        print(
            f"{verdict}  {name:<34} {summarize(statuses, codes):<52} healthz {'ok' if healthy else 'DOWN'}"
            + (f"  <- {'; '.join(problems)}" if problems else ""),
            flush=True,
        )
        return healthy

    print(f"hostile_sql: {args.url}, uptime {uptime[0]} s, received {received_before}", flush=True)
    for name, expect, statuses, codes in runs(daemon, scratch, args.flood):
        if not report(name, expect, statuses, codes):
            # Everything after would fail for the same reason.
            failures.append("the daemon went down: the remaining classes were not fired")
            print(
                f"summary: classes={counted['classes']} passed={counted['passed']} "
                f"failed checks={len(failures)}; the daemon went down",
                flush=True,
            )
            if not os.listdir(scratch):
                os.rmdir(scratch)
            break
    else:
        final_checks(daemon, scratch, received_before, restarts_before, failures, counted, first)
    for f in failures:
        print(f"FAILED: {f}", flush=True)
    return 1 if failures else 0


def error_code(body):
    return body.get("error", "-") if isinstance(body, dict) else "-"


def runs(daemon, scratch, flood):
    """(name, expectation, statuses, error codes) per class, each fired
    only when the caller asks for it."""
    for name, expect, statements in classes(scratch):
        answers = [daemon.sql(s) for s in statements]
        yield name, expect, [a[0] for a in answers], [error_code(a[1]) for a in answers]
    yield f"flood of {flood} at once", BUSY, flood_once(daemon, values(1000), flood), []
    # HTTP-level abuse of the same endpoint.
    big_body = json.dumps({"sql": "select '" + "x" * (2 << 20) + "'"}).encode()
    http_cases = [
        ("malformed JSON body", "POST", "/v1/sql", b'{"sql": "select 1"', None),
        ("unknown field in the body", "POST", "/v1/sql", b'{"sql": "select 1", "as_user": "root"}', None),
        ("body over the 1 MiB limit", "POST", "/v1/sql", big_body, None),
        ("GET instead of POST", "GET", "/v1/sql?sql=select%201", None, None),
        ("rebound Host header", "POST", "/v1/sql", b'{"sql": "select 1"}', {"Host": "evil.example"}),
    ]
    for name, method, path, body, headers in http_cases:
        status, answer = daemon.request(method, path, body, headers)
        yield name, REFUSED, [status], [error_code(answer)]


def final_checks(daemon, scratch, received_before, restarts_before, failures, counted, first):
    """Nothing was written, ingest went on, no actor restarted; prints the
    summary line."""
    written = sorted(os.listdir(scratch))
    if written:
        failures.append(f"files written by the daemon: {written}")
    else:
        os.rmdir(scratch)
    status, body = daemon.sql("select count(*) as n from market.trades_live where symbol = 'HOSTILE'")
    hostile_rows = body["rows"][0]["n"] if status == 200 else None
    if hostile_rows != 0:
        failures.append(f"rows a refused INSERT would have written: {hostile_rows} (status {status})")

    # Ingest went on: more was received after all of it.
    deadline = time.monotonic() + INGEST_WAIT_SECS
    while True:
        last = daemon.status()
        received_after = received(last)
        if received_after > received_before or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    if received_after <= received_before:
        failures.append(f"ingest stopped: received {received_before} -> {received_after}")
    restarts_after = actor_restarts(last)
    if restarts_after != restarts_before:
        failures.append(f"actors restarted: {restarts_before} -> {restarts_after}")
    print(
        f"summary: classes={counted['classes']} passed={counted['passed']} failed checks={len(failures)}; "
        f"uptime {int(first['uptime_secs'])} -> {int(last['uptime_secs'])} s, "
        f"received {received_before} -> {received_after}, actor restarts {restarts_before} -> {restarts_after}, "
        f"files written {len(written)}, rows written {hostile_rows}",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
