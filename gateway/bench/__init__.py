"""`pmis bench`: load on the gateway, with an echo fan-out reference and the servers' own CPU accounting.

One run measures, in this order:

1. Closed loop. At each concurrency level, `c` workers each send one Recommend, wait for the
   answer and send the next, for `duration` seconds; first against the real gateway, then against
   the echo fan-out. The echo fan-out is the ceiling of the call shape with none of the work: an
   asyncio gateway that receives a RecommendRequest, fans out two parallel health Checks to a
   trivial backend, then three, then one (6 RPCs in 3 rounds), and returns an empty answer. The
   echo gateway and its backend run in ONE subprocess (two grpc.aio servers on one event loop).
2. CPU per request. Around every level the CPU time each server process has used is read from the
   OS's accounting: for the real system, `process_cpu_seconds_total` on each server's Prometheus
   endpoint (prometheus_client reads utime+stime from /proc/self/stat); for the echo subprocess,
   utime+stime from /proc/<pid>/stat. The delta is divided by the number of OK answers of the level.
   This process's own CPU (the load generator) is reported too, so a saturated client shows.
3. Open loop. At each `--rate`, requests are fired on a timer for `--open-duration` seconds without
   waiting for earlier answers, each with a client deadline; latency is counted from the scheduled
   send time, so a generator that falls behind inflates it (and is warned about).
4. Shortlist latency (`--shortlist N`): N sequential Shortlist calls for the internships with the
   most applicants.

Every number can also be written as JSON (`--json`).

The modules:

- `cli.py`: the `pmis bench` entry (`main_bench`): arguments to a `BenchConfig`, report, exit code;
- `run.py`: `BenchConfig` and `run_bench`, one whole run, phase by phase;
- `load.py`: the closed- and open-loop load generators and the Recommend sender;
- `outcomes.py`: what one call came to, and the summaries of a phase's calls (pure);
- `cpu.py`: CPU seconds of the server processes (metrics endpoints, /proc) per request;
- `workload.py`: the requests to send, drawn from the catalog;
- `echo.py`: the echo fan-out reference server and its subprocess;
- `report.py`: the tables printed, and the JSON written.
"""
