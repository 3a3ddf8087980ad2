"""What `pmis bench` prints (its tables, one per phase) and writes (`--json`, every number)."""

from __future__ import annotations

import math

from gateway.bench.cpu import SERVERS


def fmt(v, spec: str = ".1f") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(v, spec) if isinstance(v, float) else str(v)


def table(headers: list[str], rows: list[list], first_left: int = 1) -> str:
    cells = [headers, *[[fmt(v) if not isinstance(v, str) else v for v in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    just = lambda i, s: s.ljust(widths[i]) if i < first_left else s.rjust(widths[i])  # noqa: E731
    return "\n".join("  ".join(just(i, s) for i, s in enumerate(r)).rstrip() for r in cells)


def closed_table(rows: list[dict]) -> str:
    out = []
    for r in rows:
        for system in ("gateway", "echo"):
            if system not in r:
                continue
            s = r[system]
            extra = [fmt(r.get("p50_ratio"), ".2f"), fmt(r.get("rps_ratio"), ".3f")] if system == "gateway" else ["", ""]
            out.append([str(r["concurrency"]), system, s["requests"], s["errors"], s["degraded"], s["rps"], s["p50_ms"],
                        s["p95_ms"], s["p99_ms"], *extra])
    return table(["conc", "system", "OK", "errors", "degraded", "RPS", "p50 ms", "p95 ms", "p99 ms",
                  "p50/echo", "RPS/echo"], out, first_left=2)


def cpu_table(result: dict) -> str:
    def cells(cpu: dict | None) -> list:
        if cpu is None:
            return ["-"] * (len(SERVERS) + 1)
        total = fmt(cpu["sum"], ".2f") + ("*" if cpu["missing"] and cpu["sum"] is not None else "")
        return [fmt(cpu["per_server"].get(n), ".2f") for n in SERVERS] + [total]

    rows = []
    for r in result["closed"]:
        g, e = r["gateway"]["cpu_ms_per_request"], r.get("echo", {}).get("cpu_ms_per_request")
        rows.append([f"closed c={r['concurrency']}", *cells(g), fmt(e and e["sum"], ".2f"), fmt(g["client"], ".2f"),
                     fmt(e and e["client"], ".2f")])
    for r in result["open"]:
        g = r["cpu_ms_per_request"]
        rows.append([f"open {r['rate']:g}/s", *cells(g), "-", fmt(g["client"], ".2f"), "-"])
    return table(["phase", *SERVERS, "sum", "echo", "client", "client(echo)"], rows)


def open_table(rows: list[dict]) -> str:
    out = [[f"{r['rate']:g}", r["sent"], r["ok"], r["ok_degraded"], r["resource_exhausted"],
            r["resource_exhausted_p99_ms"], r["deadline_exceeded"], r["other_errors"], r["p50_ms"], r["p99_ms"],
            r["achieved_rate"] if not r["behind_schedule"] else f"{r['achieved_rate']:.1f}!", r["send_lag_p99_ms"]]
           for r in rows]
    return table(["rate/s", "sent", "OK", "OK degraded", "EXHAUSTED", "EXH p99 ms", "DEADLINE", "other",
                  "OK p50 ms", "OK p99 ms", "sent/s", "lag p99 ms"], out, first_left=0)


def probes_table(r: dict) -> str:
    return table(["server", "probes", "failed", "longest failure run", "p50 ms", "p99 ms", "max ms"],
                 [[p["server"], p["probes"], p["failed"], p["longest_failure_run"], p["p50_ms"], p["p99_ms"],
                   p["max_ms"]] for p in r["probes"]])


def shortlist_table(s: dict) -> str:
    errors = ", ".join(f"{k} {v}" for k, v in s["errors"].items()) or "0"
    return table(["calls", "OK", "errors", "p50 ms", "p99 ms", "mean pool", "candidates", "no match",
                  "no success p", "either", "degraded"],
                 [[s["calls"], s["ok"], errors, s["p50_ms"], s["p99_ms"], s["mean_pool_size"], s["candidates"],
                   s["missing_match"], s["missing_success"], s["missing_either"], s["degraded"]]], first_left=0)


def report(result: dict) -> str:
    cfg = result["config"]
    shape = (f"k={cfg['k']}, explain {'on' if cfg['explain'] else 'off'}, "
             f"{'inline profiles' if cfg['profile_only'] else 'known student ids'}, deadline {cfg['deadline'] * 1000:.0f} ms")
    out = [f"Recommend ({shape}) at {cfg['target']}"]
    if result["closed"]:
        out += ["", f"Closed loop, {cfg['duration']:g}s per level and system, in {cfg.get('slices', 1)} alternating "
                    "turns. OK = answers (degraded ones "
                    "included); echo = fan-out reference (2, 3, 1 health Checks, one subprocess).",
                closed_table(result["closed"])]
    if result["open"]:
        out += ["", f"Open loop, {cfg['open_duration']:g}s per rate, latency from the scheduled send time. "
                    "OK = not degraded; sent/s marked ! when the generator fell >10% behind; lag = how late sends left "
                    "(the client deadline runs from the actual send, so a late send can exceed it).",
                open_table(result["open"])]
        for r in result["open"]:
            if r["behind_schedule"]:
                out.append(f"WARNING: at {r['rate']:g}/s the generator sent only {r['achieved_rate']:.1f}/s "
                           f"(send lag p99 {r['send_lag_p99_ms']:.0f} ms): the client, not the server, set the pace.")
            if r["other_codes"]:
                out.append(f"other errors at {r['rate']:g}/s: " + ", ".join(f"{k} {v}" for k, v in r["other_codes"].items()))
        for r in result["open"]:
            if r.get("probes"):
                out += ["", f"Health probes during the open loop at {r['rate']:g}/s (kubelet-style: a new connection "
                            f"per probe, every {cfg['probe_period']:g}s, timeout {cfg['probe_timeout']:g}s, dial included).",
                        probes_table(r)]
    if result["closed"] or result["open"]:
        ports = ", ".join(f"{n}={p}" for n, p in cfg["metrics_ports"].items())
        out += ["", f"CPU ms per OK answer (process_cpu_seconds_total from {cfg['metrics_host']}: {ports}; "
                    "echo: /proc/<pid>/stat of its one process; client: this process). "
                    "- = not scraped; * = sum over the servers scraped.",
                cpu_table(result)]
    if result["shortlist"]:
        out += ["", f"Shortlist, {result['shortlist']['calls']} sequential calls over "
                    f"{result['shortlist']['internships']} most-applied-to internships "
                    "(no match / no success p: candidates with the field unset or NaN).",
                shortlist_table(result["shortlist"])]
    return "\n".join(out)


def json_safe(v):
    """NaN -> null (JSON has no NaN), paths -> strings."""
    if isinstance(v, dict):
        return {str(k): json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_safe(x) for x in v]
    if isinstance(v, float) and math.isnan(v):
        return None
    return v if v is None or isinstance(v, (str, int, float, bool)) else str(v)
