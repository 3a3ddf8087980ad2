"""CPU seconds of the server processes, sampled around a bench phase and turned into ms per request.

The real servers are read through their Prometheus endpoints (`process_cpu_seconds_total`), the
echo subprocess through /proc/<pid>/stat; this process's own CPU is sampled too.
"""

from __future__ import annotations

import os
import time
import urllib.request
from dataclasses import dataclass

SERVERS = ["gateway", "content", "collaborative", "success", "ranker"]  # in metrics-port order
CPU_METRIC = "process_cpu_seconds_total"
START_METRIC = "process_start_time_seconds"


def parse_metric(text: str, name: str) -> float | None:
    """The value of an unlabelled-or-labelled sample `name` in a Prometheus text page (summed over
    label sets); None when absent."""
    total, found = 0.0, False
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        rest = line[len(name):]
        if rest[:1] == "{":
            rest = rest[rest.index("}") + 1:]
        elif rest[:1] not in (" ", "\t"):
            continue  # a longer metric name with this prefix
        parts = rest.split()
        if parts:
            try:
                total += float(parts[0])
                found = True
            except ValueError:
                pass
    return total if found else None


def proc_cpu_seconds(pid: int) -> float | None:
    """utime+stime of a process (all its threads) from /proc/<pid>/stat; None when unreadable."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": fields[0] is field 3 (state)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class CpuSample:
    seconds: float | None
    start: float | None = None   # process start time, to notice a restart between two samples


class PrometheusCpu:
    """CPU seconds of each server process, scraped from its metrics endpoint."""

    def __init__(self, host: str, ports: dict[str, int], timeout: float = 2.0):
        self.host, self.ports, self.timeout = host, ports, timeout

    def scrape(self, port: int) -> CpuSample:
        try:
            with urllib.request.urlopen(f"http://{self.host}:{port}/metrics", timeout=self.timeout) as r:
                text = r.read().decode("utf-8", "replace")
        except OSError:
            return CpuSample(None)
        return CpuSample(parse_metric(text, CPU_METRIC), parse_metric(text, START_METRIC))

    def sample(self) -> dict[str, CpuSample]:
        return {name: self.scrape(port) for name, port in self.ports.items()}


class ProcCpu:
    def __init__(self, pids: dict[str, int]):
        self.pids = pids

    def sample(self) -> dict[str, CpuSample]:
        return {name: CpuSample(proc_cpu_seconds(pid)) for name, pid in self.pids.items()}


def spent_seconds(before: dict[str, CpuSample], after: dict[str, CpuSample]) -> dict[str, float | None]:
    """CPU seconds each process spent between two samples (None: unknown, or it restarted)."""
    spent: dict[str, float | None] = {}
    for name, b in before.items():
        a = after.get(name, CpuSample(None))
        ok = b.seconds is not None and a.seconds is not None and b.start == a.start and a.seconds >= b.seconds
        spent[name] = a.seconds - b.seconds if ok else None
    return spent


def per_request(spent: dict[str, float | None], requests: int) -> dict:
    """Per-process CPU ms per request (None: unknown), their sum over the known ones, and which are missing."""
    per = {name: s * 1000 / requests if s is not None and requests > 0 else None for name, s in spent.items()}
    known = [v for v in per.values() if v is not None]
    return {"per_server": per, "sum": sum(known) if known else None,
            "missing": [n for n, v in per.items() if v is None]}


class Meter:
    """Samples the server CPU probes and this process's own CPU around one phase. A phase may be
    metered in slices (start/pause, start/pause, ...; stop): the slices add up."""

    def __init__(self, probe):
        self.probe = probe
        self._reset()

    def _reset(self) -> None:
        self.spent: dict[str, float | None] = {}
        self.client = 0.0
        self.running = False

    def start(self) -> None:
        self.before, self.client_before = self.probe.sample(), time.process_time()
        self.running = True

    def pause(self) -> None:
        if not self.running:
            return
        for name, s in spent_seconds(self.before, self.probe.sample()).items():
            total = self.spent.get(name, 0.0)
            self.spent[name] = None if s is None or total is None else total + s
        self.client += time.process_time() - self.client_before
        self.running = False

    def stop(self, requests: int) -> dict:
        """CPU ms per request over every slice since the last stop."""
        self.pause()
        cpu = per_request(self.spent, requests)
        cpu["client"] = self.client * 1000 / requests if requests else None
        self._reset()
        return cpu
