"""Benchmark: how long a study takes to cross the link, with each way of sending it.

    scripts/bench.sh [--ct 200] [--mr 0] [--runs 3] [--profiles loopback,wan] [--cxx-plugin [LABEL=]PATH ...]
    scripts/bench.sh --cap-kbs 2000 --ct 150 --modes push-none,pull-none   # the bandwidth cap's figure

Starts real Orthanc peers A (source) and B (target), generates synthetic studies (``--ct`` CT slices and
``--mr`` MR slices, two workloads measured one after the other), and times, for each workload on each
network profile (loopback, and a WAN emulated by tools/wan.py between A and B):

- peers:   Orthanc's built-in peers, ``POST /peers/b/store`` (synchronous);
- dicom:   DICOM C-STORE, ``POST /modalities/b/store`` (synchronous);
- push-*:  our ``/transfers/send`` in push mode, with each compression (none, gzip, zstd-shuffle);
- pull-*:  our ``/transfers/pull`` at B, with each compression (none, gzip, zstd-shuffle);
- cxx-*:   the same with the C++ plugin, if ``--cxx-plugin`` gives the path of its library (``cxx-LABEL-*``
           with ``LABEL=PATH``; repeat the option to compare several builds in one run). The version each
           build reports at ``/plugins/transfers`` is recorded in the JSON.

Each is run ``--runs`` times, in rounds of every mode (the median counts); B is restarted with an empty
storage before each run.
The report gives seconds, MB/s, the ratio to built-in peers and to the link limit (bytes on the wire /
capacity), CPU seconds and peak memory of each Orthanc; it is printed as a table and written as JSON and
as a PNG chart.
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from tools.orthanc_launcher import HOST, REPO_ROOT, OrthancServer, default_platform, free_port
from tools.synthetic import generate_study
from tools.wan import WanProxy

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
CXX_MODES = ("push-none", "push-gzip", "pull-none", "pull-gzip")  # what the C++ plugin can do too
OURS = CXX_MODES + ("push-zstd-shuffle", "pull-zstd-shuffle")
ALL_MODES = ("peers", "dicom") + OURS


def cxx_build(spec: str) -> Tuple[str, str]:
    """``[LABEL=]PATH`` of a C++ plugin's library: its label ("" if none) and its absolute path (Orthanc
    reads a relative one from its configuration file's folder). A path may hold "=": what comes before the
    first "=" is a label only if it has no "/"."""
    label, _, path = spec.partition("=")
    if not path or "/" in label:
        label, path = "", spec
    return label, os.path.abspath(path)


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def reset_peak(pid: int) -> None:
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


class Setup:
    """A and B, directly or through WAN proxies, with every peer and modality entry the modes need."""

    def __init__(self, workdir: Path, profile: str, args: argparse.Namespace, plugin_library: Optional[str],
                 transfers: Dict[str, Any], orthanc: Optional[Dict[str, Any]] = None):
        self.profile = profile
        self.args = args
        self.port_a, self.port_b = free_port(), free_port()
        self.dicom_b = free_port()
        self.proxies: Dict[str, WanProxy] = {}
        wan = profile == "wan"
        if wan:
            kwargs = dict(delay=args.delay_ms / 1000, capacity=args.capacity_mbit * 1e6 / 8,
                          window=args.window_kb * 1024)
            self.proxies = {"a-http": WanProxy(self.port_a, **kwargs).start(),  # B pulls from A
                            "b-http": WanProxy(self.port_b, **kwargs).start(),  # A sends to B
                            "b-dicom": WanProxy(self.dicom_b, **kwargs).start()}
        url_a = self.proxies["a-http"].url if wan else f"http://127.0.0.1:{self.port_a}/"
        url_b = self.proxies["b-http"].url if wan else f"http://127.0.0.1:{self.port_b}/"
        dicom_b = self.proxies["b-dicom"].port if wan else self.dicom_b
        extra = {"HttpTimeout": 600, "DicomScuTimeout": 600}
        platform = None
        if plugin_library:  # the C++ plugin instead of ours, built for the host's Orthanc
            extra_a = dict(extra, Plugins=[plugin_library])
            with_plugin = False
            platform = HOST
        else:  # ours, with the Orthanc options of --orthanc (e.g. the Python plugin's AllowThreads)
            extra_a = dict(extra, **(orthanc or {}))
            with_plugin = True
        self.a = OrthancServer("a", workdir / profile / "a", http_port=self.port_a, with_plugin=with_plugin,
                               transfers=transfers, extra_config=dict(extra_a, DicomModalities={
                                   "b": ["B", "127.0.0.1", dicom_b]}),
                               peers={"b": {"Url": url_b}}, platform=platform)
        self.b = OrthancServer("b", workdir / profile / "b", http_port=self.port_b, with_plugin=with_plugin,
                               transfers=transfers, extra_config=dict(extra_a, DicomAet="B"),
                               peers={"a": {"Url": url_a}}, platform=platform)
        self.b.dicom_port = self.dicom_b

    def start(self) -> None:
        self.a.start()
        self.b.start()

    def fresh_b(self) -> None:
        """B restarted with an empty storage: every run imports into the same, new, Orthanc."""
        self.b.stop()
        shutil.rmtree(self.b.workdir, ignore_errors=True)
        self.b.start()
        # Orthanc answers before a plugin's background work has started (ours waits for the database);
        # /jobs answers once the transfer jobs engine runs, so the run times the transfer, not the start.
        self.b.get_json("/jobs")

    def stop(self) -> None:
        for s in (self.a, self.b):
            s.stop()
        for p in self.proxies.values():
            p.stop()

    def wire_bytes(self) -> int:
        return sum(max(p.bytes) for p in self.proxies.values())


def wait_job(server: OrthancServer, job_id: str, receiver: Optional[OrthancServer] = None, expected: int = 0,
             timeout: float = 3600) -> Dict[str, Any]:
    """Waits for the end of a transfer job and returns it.

    With a ``receiver``, its ``/statistics`` (a core route, served without the plugin's Python) are polled
    every 10 ms until it holds ``expected`` instances, and the job only every half second meanwhile:
    polling ``/jobs/{id}`` of the job's server every few ms, as a monitor would not, takes that server's
    Python interpreter (its GIL) away from the transfer, which slowed pulls (whose job runs at the
    receiver, importing) and not pushes. Once the instances are in, the job is polled every 10 ms."""
    deadline = time.monotonic() + timeout
    next_job_poll = 0.0
    while time.monotonic() < deadline:
        now = time.monotonic()
        arrived = receiver is None or int(receiver.get_json("/statistics")["CountInstances"]) >= expected
        if arrived or now >= next_job_poll:
            job = server.get_json(f"/jobs/{job_id}")
            if job["State"] in ("Success", "Failure"):
                return job
            next_job_poll = now + 0.5
        time.sleep(0.01)
    raise RuntimeError(f"job {job_id} did not end")


def plugin_version(server: OrthancServer) -> str:
    """The version the transfers plugin of ``server`` reports (``/plugins/transfers``)."""
    return str(server.get_json("/plugins/transfers").get("Version", "?"))


def run_mode(setup: Setup, mode: str, studies: List[str], expected: int = 0) -> None:
    a, b = setup.a, setup.b
    resources = [{"Level": "Study", "ID": s} for s in studies]
    if mode == "peers":
        r = a.post("/peers/b/store", json={"Resources": studies, "Synchronous": True}, timeout=3600)
        r.raise_for_status()
        return
    if mode == "dicom":
        r = a.post("/modalities/b/store", json={"Resources": studies, "Synchronous": True}, timeout=3600)
        r.raise_for_status()
        return
    direction, compression = mode.split("-", 1)
    if direction == "push":
        r = a.post("/transfers/send", json={"Resources": resources, "Compression": compression, "Peer": "b"})
        r.raise_for_status()
        job = wait_job(a, r.json()["ID"], receiver=b, expected=expected)
    else:
        r = b.post("/transfers/pull", json={"Resources": resources, "Compression": compression, "Peer": "a"})
        r.raise_for_status()
        job = wait_job(b, r.json()["ID"], receiver=b, expected=expected)
    if job["State"] != "Success":
        raise RuntimeError(f"{mode}: job failed: {job['ErrorDescription']}")


def measure_once(setup: Setup, mode: str, studies: List[str], expected: int) -> Dict[str, Any]:
    """One timed transfer into a new, empty B: seconds, CPU seconds and peak memory of A and B, wire bytes."""
    setup.fresh_b()
    os.sync()  # the previous runs' files written out now, not during this run
    for s in (setup.a, setup.b):
        reset_peak(s.process.pid)
    cpu_before = [cpu_seconds(s.process.pid) for s in (setup.a, setup.b)]
    wire_before = setup.wire_bytes()
    started = time.monotonic()
    run_mode(setup, mode, studies, expected)
    elapsed = time.monotonic() - started
    cpu = [cpu_seconds(s.process.pid) - c for s, c in zip((setup.a, setup.b), cpu_before)]
    stored = int(setup.b.get_json("/statistics")["CountInstances"])
    if stored != expected:
        raise RuntimeError(f"{mode}: B holds {stored} of {expected} instances after the transfer")
    return {"seconds": elapsed, "cpu_a": cpu[0], "cpu_b": cpu[1],
            "peak_mb_a": setup.a.memory_mb("VmHWM"), "peak_mb_b": setup.b.memory_mb("VmHWM"),
            "wire_bytes": setup.wire_bytes() - wire_before}


def measure(plan: List[Tuple[Setup, str, str]], studies: List[str], expected: int, runs: int,
            log: Callable[[str], None]) -> List[Dict[str, Any]]:
    """``runs`` rounds; each round runs every (setup, mode, name) of ``plan`` once, in the same order.

    Rounds rather than all runs of one mode in a row, with every variant's servers up at once (ours, tuned,
    each C++ build) and B restarted empty before each run: this machine's speed drifts over minutes and
    Orthanc gets slower as transfers accumulate in one process, so modes or variants measured in a block of
    their own would meet other conditions than the others.
    """
    samples: Dict[str, List[Dict[str, Any]]] = {name: [] for _, _, name in plan}
    for i in range(runs):
        for setup, mode, name in plan:
            sample = measure_once(setup, mode, studies, expected)
            samples[name].append(sample)
            log(f"  {setup.profile:8} {name:24} run {i + 1}: {sample['seconds']:6.2f} s")
    return [summarize(plan[0][0].profile, name, samples[name]) for name in samples]


def summarize(profile: str, name: str, samples: List[Dict[str, Any]]) -> Dict[str, Any]:
    return {"mode": name, "profile": profile, "runs": samples,
            "median_seconds": statistics.median(s["seconds"] for s in samples),
            "median_cpu_a": statistics.median(s["cpu_a"] for s in samples),
            "median_cpu_b": statistics.median(s["cpu_b"] for s in samples),
            "peak_mb_a": max(s["peak_mb_a"] for s in samples), "peak_mb_b": max(s["peak_mb_b"] for s in samples),
            "median_wire_bytes": statistics.median(s["wire_bytes"] for s in samples)}


def machine() -> Dict[str, Any]:
    mem = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) // 1024
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpus": os.cpu_count(), "cpu": cpu, "memory_mb": mem, "python": platform.python_version(),
            "kernel": platform.release()}


def report(results: List[Dict[str, Any]], totals: Dict[str, int], args: argparse.Namespace) -> str:
    """The table: one row per workload, profile and mode (``totals``: each workload's bytes)."""
    capacity = args.capacity_mbit * 1e6 / 8
    lines = ["| workload | profile | mode | median s | MB/s | vs built-in peers | vs link limit | CPU s A | CPU s B | "
             "peak MB A | peak MB B |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    baseline = {(r["workload"], r["profile"]): r["median_seconds"] for r in results if r["mode"] == "peers"}
    for r in results:
        key = (r["workload"], r["profile"])
        secs = r["median_seconds"]
        mbs = totals[r["workload"]] / 1e6 / secs
        vs_peers = f"{secs / baseline[key]:.2f}x" if key in baseline else "-"
        if r["profile"] == "wan" and r["median_wire_bytes"]:
            limit = r["median_wire_bytes"] / capacity
            r["link_limit_seconds"] = limit
            vs_link = f"{secs / limit:.2f}x ({limit:.1f} s)"
        else:
            vs_link = "-"
        r["mb_per_s"] = mbs
        lines.append(f"| {r['workload']} | {r['profile']} | {r['mode']} | {secs:.2f} | {mbs:.1f} | {vs_peers} | "
                     f"{vs_link} | {r['median_cpu_a']:.1f} | {r['median_cpu_b']:.1f} | {r['peak_mb_a']:.0f} | "
                     f"{r['peak_mb_b']:.0f} |")
    return "\n".join(lines)


def is_ours(name: str) -> bool:
    return name in OURS or name.startswith("tuned-") and name[len("tuned-"):] in OURS


def summary(results: List[Dict[str, Any]]) -> str:
    """Per workload and profile: our best mode against each C++ build's best, built-in peers and the link
    limit of the bytes our best sent; and on each mode the C++ builds also have, ours against theirs."""
    lines = []
    for key in dict.fromkeys((r["workload"], r["profile"]) for r in results):
        rows = [r for r in results if (r["workload"], r["profile"]) == key]
        ours = [r for r in rows if is_ours(r["mode"])]
        if not ours:
            continue
        best = min(ours, key=lambda r: r["median_seconds"])
        parts = [f"{key[0]} {key[1]}: our best {best['mode']} {best['median_seconds']:.2f} s"]
        peers = next((r for r in rows if r["mode"] == "peers"), None)
        if peers:
            parts.append(f"{best['median_seconds'] / peers['median_seconds']:.2f}x built-in peers")
        if best.get("link_limit_seconds"):
            parts.append(f"{best['median_seconds'] / best['link_limit_seconds']:.2f}x its link limit")
        builds = sorted({r["mode"].rsplit("-", 2)[0] for r in rows if r["mode"].startswith("cxx")})
        for build in builds:
            theirs = [r for r in rows if r["mode"].startswith(build + "-")]
            cxx_best = min(theirs, key=lambda r: r["median_seconds"])
            parts.append(f"{best['median_seconds'] / cxx_best['median_seconds']:.2f}x {build}'s best "
                         f"({cxx_best['mode']} {cxx_best['median_seconds']:.2f} s)")
            same = []
            for r in theirs:
                mine = next((o for o in rows if o["mode"] == r["mode"][len(build) + 1:]), None)
                if mine:
                    same.append(f"{mine['mode']} {mine['median_seconds'] / r['median_seconds']:.2f}x")
            if same:
                parts.append(f"same modes vs {build}: " + ", ".join(same))
        lines.append("- " + "; ".join(parts))
    return "\n".join(lines)


def chart(results: List[Dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(dict.fromkeys((r["workload"], r["profile"]) for r in results))
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    for ax, (workload, profile) in zip(axes[0], panels):
        rows = [r for r in results if (r["workload"], r["profile"]) == (workload, profile)]
        names = [r["mode"] for r in rows]
        secs = [r["median_seconds"] for r in rows]
        colors = ["#999999" if n in ("peers", "dicom") else "#cc7722" if n.startswith("cxx")
                  else "#6aa84f" if n.startswith("tuned") else "#2a7ab0" for n in names]
        bars = ax.bar(names, secs, color=colors)
        for bar, s in zip(bars, secs):
            ax.annotate(f"{s:.1f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                        va="bottom", fontsize=8)
        limits = [r.get("link_limit_seconds") for r in rows if r.get("link_limit_seconds")]
        if limits:
            ax.axhline(min(limits), color="#444444", linestyle="--", linewidth=1, label="link limit (best)")
            ax.legend(fontsize=8)
        ax.set_title(f"{workload}, {profile}")
        ax.set_ylabel("seconds (median)")
        # Each label ends under its bar (centred rotated labels of different lengths look shifted).
        plt.setp(ax.get_xticklabels(), rotation=35, ha="right", rotation_mode="anchor", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


class ByteTimeline:
    """The bytes a counting proxy has seen, sampled every ``period`` seconds in a thread of its own."""

    def __init__(self, count: Callable[[], int], period: float = 0.1):
        self.count = count
        self.period = period
        self.samples: List[Tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="bench-timeline")

    def _run(self) -> None:
        while True:
            self.samples.append((time.monotonic(), self.count()))
            if self._stop.wait(self.period):
                self.samples.append((time.monotonic(), self.count()))
                return

    def __enter__(self) -> "ByteTimeline":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def steady_rate(samples: List[Tuple[float, int]], low: float = 0.05, high: float = 0.95) -> Tuple[float, float]:
    """Bytes per second between the moments the count reached ``low`` and ``high`` of its final value (what
    the cap governs: the start's lookup and the end's commit move almost nothing), and that span's seconds."""
    start, total = samples[0][1], samples[-1][1] - samples[0][1]
    if total <= 0:
        return 0.0, 0.0
    t_low, n_low = next((t, n) for t, n in samples if n - start >= low * total)
    t_high, n_high = next((t, n) for t, n in samples if n - start >= high * total)
    span = t_high - t_low
    return ((n_high - n_low) / span if span > 0 else 0.0), span


def measure_cap(args: argparse.Namespace, modes: List[str], studies: List[bytes], workdir: Path,
                log: Callable[[str], None]) -> List[Dict[str, Any]]:
    """``--cap-kbs``: each of our modes once on loopback with ``"MaxBandwidthKBs"`` in the request, A and B
    reaching each other through counting proxies (tools/net_proxy.py): the rate measured on the wire (both
    directions, headers included) against the cap."""
    from tools.net_proxy import TcpProxy

    transfers = json.loads(args.transfers) if args.transfers else {}
    port_a, port_b = free_port(), free_port()
    to_a, to_b = TcpProxy(port_a).start(), TcpProxy(port_b).start()
    extra = {"HttpTimeout": 600}
    a = OrthancServer("a", workdir / "cap" / "a", http_port=port_a, transfers=transfers, extra_config=extra,
                      peers={"b": {"Url": to_b.url}})
    b = OrthancServer("b", workdir / "cap" / "b", http_port=port_b, transfers=transfers, extra_config=extra,
                      peers={"a": {"Url": to_a.url}})
    rows: List[Dict[str, Any]] = []
    try:
        a.start()
        b.start()
        ids = [a.upload(d) for d in studies]
        resources = [{"Level": "Study", "ID": s} for s in sorted({a.get_json(f"/instances/{i}/study")["ID"]
                                                                  for i in ids})]
        for mode in modes:
            direction, compression = mode.split("-", 1)
            for patient in b.get_json("/patients"):
                b.request("DELETE", f"/patients/{patient}")
            proxy = to_a if direction == "pull" else to_b
            body = {"Resources": resources, "Compression": compression, "MaxBandwidthKBs": args.cap_kbs}
            with ByteTimeline(lambda p=proxy: p.downstream_bytes + p.upstream_bytes) as timeline:
                started = time.monotonic()
                if direction == "push":
                    r = a.post("/transfers/send", json=dict(body, Peer="b"))
                    server = a
                else:
                    r = b.post("/transfers/pull", json=dict(body, Peer="a"))
                    server = b
                r.raise_for_status()
                job = wait_job(server, r.json()["ID"])
                elapsed = time.monotonic() - started
            if job["State"] != "Success":
                raise RuntimeError(f"{mode}: job failed: {job['ErrorDescription']}")
            wire = timeline.samples[-1][1] - timeline.samples[0][1]
            rate, span = steady_rate(timeline.samples)
            cap = args.cap_kbs * 1024
            row = {"mode": mode, "cap_kbs": args.cap_kbs, "seconds": elapsed, "wire_bytes": wire,
                   "overall_kbs": wire / elapsed / 1024, "steady_kbs": rate / 1024, "steady_seconds": span,
                   "steady_vs_cap": rate / cap,
                   "timeline": [(round(t - started, 2), n - timeline.samples[0][1]) for t, n in timeline.samples[::5]]}
            rows.append(row)
            log(f"  capped {mode}: {wire / 1e6:.1f} MB on the wire in {elapsed:.1f} s; steady {rate / 1024:.0f} KB/s "
                f"over {span:.1f} s = {rate / cap:.3f} of the cap {args.cap_kbs} KB/s")
            if span < 30:
                log(f"  (the steady part lasted {span:.1f} s, less than 30 s: use a larger --ct or a lower cap)")
    finally:
        for server in (a, b):
            server.stop()
        to_a.stop()
        to_b.stop()
    return rows


def cap_report(rows: List[Dict[str, Any]]) -> str:
    lines = ["| mode | cap KB/s | wire MB | seconds | overall KB/s | steady KB/s (5-95 %) | steady s | steady / cap |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['mode']} | {r['cap_kbs']} | {r['wire_bytes'] / 1e6:.1f} | {r['seconds']:.1f} | "
                     f"{r['overall_kbs']:.0f} | {r['steady_kbs']:.0f} | {r['steady_seconds']:.1f} | "
                     f"{r['steady_vs_cap']:.3f} |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ct", type=int, default=200, help="CT slices of 512x512x16 bits (about 0.5 MB each)")
    parser.add_argument("--mr", type=int, default=0,
                        help="MR slices of 256x256x16 bits, a second workload measured on its own")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--profiles", default="loopback,wan")
    parser.add_argument("--modes", default=",".join(ALL_MODES))
    parser.add_argument("--delay-ms", type=float, default=20.0, help="WAN one-way delay")
    parser.add_argument("--capacity-mbit", type=float, default=100.0, help="WAN link capacity")
    parser.add_argument("--window-kb", type=int, default=128, help="WAN per-connection window")
    parser.add_argument("--transfers", default="", help='Transfers options of both peers as JSON, e.g. {"Threads": 8}')
    parser.add_argument("--tuned", default="", help='also run our modes with these Transfers options (JSON), '
                        'shown as "tuned-..." rows, e.g. {"Threads": 8}')
    parser.add_argument("--orthanc", default="", help="Orthanc options (JSON) of our servers, e.g. "
                        '{"Python": {"AllowThreads": true}} (the platform: TRANSFERS_PLATFORM=debian12|debian13)')
    parser.add_argument("--cxx-plugin", action="append", default=[], metavar="[LABEL=]PATH",
                        help="a C++ plugin's library, to compare with it (rows cxx-* or cxx-LABEL-*); repeatable")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench-results")
    parser.add_argument("--workdir", type=Path, default=None, help="storage of the servers (a temporary folder)")
    parser.add_argument("--cap-kbs", type=int, default=0, metavar="KBS",
                        help="instead of the comparison: our modes (of --modes) once each on loopback with "
                             '"MaxBandwidthKBs": KBS, the rate measured on the wire against the cap '
                             "(cap.json, cap.md); choose --ct so that a transfer lasts at least 30 s")
    args = parser.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    for m in modes:
        if m not in ALL_MODES:
            parser.error(f"unknown mode {m}; known: {', '.join(ALL_MODES)}")
    if args.cap_kbs < 0:
        parser.error("--cap-kbs must be a positive number of KB per second")

    def log(message: str) -> None:
        print(message, flush=True)

    if args.cap_kbs:
        ours = [m for m in modes if m in OURS] or list(OURS)
        args.out.mkdir(parents=True, exist_ok=True)
        workdir = args.workdir or Path(tempfile.mkdtemp(prefix="transfers-bench-"))
        studies = list(generate_study(args.ct, 512, 512, modality="CT", seed=2026))
        log(f"Bandwidth cap {args.cap_kbs} KB/s: {len(studies)} CT slices, "
            f"{sum(len(d) for d in studies) / 1e6:.1f} MB; {', '.join(ours)}")
        try:
            rows = measure_cap(args, ours, studies, workdir, log)
        finally:
            if args.workdir is None:
                shutil.rmtree(workdir, ignore_errors=True)
        table = cap_report(rows)
        (args.out / "cap.json").write_text(json.dumps({"machine": machine(), "ct": args.ct, "rows": rows,
                                                       "table": table}, indent=2))
        (args.out / "cap.md").write_text(table + "\n")
        log("\n" + table)
        log(f"\nWritten: {args.out / 'cap.json'}, {args.out / 'cap.md'}")
        return 0

    results: List[Dict[str, Any]] = []
    base = json.loads(args.transfers) if args.transfers else {}
    variants = [("", None, base)]
    if args.tuned:
        variants.append(("tuned-", None, dict(base, **json.loads(args.tuned))))
    for spec in args.cxx_plugin:
        label, path = cxx_build(spec)
        if not os.path.isfile(path):
            parser.error(f"--cxx-plugin: no such file {path}")
        prefix = f"cxx-{label}-" if label else "cxx-"
        if any(prefix == p for p, _, _ in variants):
            parser.error(f"--cxx-plugin: two builds are named {prefix.rstrip('-')!r}: give each its own LABEL=")
        variants.append((prefix, path, base))

    args.out.mkdir(parents=True, exist_ok=True)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="transfers-bench-"))
    log(f"Generating the workloads: {args.ct} CT slices, {args.mr} MR slices ...")
    workloads: List[Tuple[str, List[bytes]]] = []
    if args.ct:
        workloads.append(("ct", list(generate_study(args.ct, 512, 512, modality="CT", seed=2026))))
    if args.mr:
        workloads.append(("mr", list(generate_study(args.mr, 256, 256, modality="MR", seed=2027))))
    if not workloads:
        parser.error("nothing to measure: give --ct or --mr a number of slices")
    totals = {name: sum(len(d) for d in studies) for name, studies in workloads}
    for name, studies in workloads:
        log(f"  {name}: {len(studies)} instances, {totals[name] / 1e6:.1f} MB")

    versions: Dict[str, str] = {}
    try:
        for workload, studies in workloads:
            for profile in args.profiles.split(","):
                setups: List[Setup] = []
                plan: List[Tuple[Setup, str, str]] = []
                study_ids: List[str] = []
                try:
                    for prefix, library, transfers in variants:
                        setup = Setup(workdir / (prefix or "py"), profile, args, library, transfers,
                                      json.loads(args.orthanc) if args.orthanc else None)
                        setups.append(setup)
                        setup.start()
                        if library:
                            versions[prefix.rstrip("-")] = plugin_version(setup.a)
                            log(f"{prefix.rstrip('-')}: {library} reports version {versions[prefix.rstrip('-')]}")
                        ids = [setup.a.upload(d) for d in studies]
                        # One resource list for all modes: the study as a Study resource (the same ID on
                        # every A: Orthanc derives it from the DICOM UIDs).
                        study_ids = sorted({setup.a.get_json(f"/instances/{i}/study")["ID"] for i in ids})
                        allowed = CXX_MODES if library else OURS  # the C++ plugin has no zstd-shuffle
                        plan += [(setup, mode, prefix + mode) for mode in modes
                                 if not (prefix and mode not in allowed)]
                    log(f"{workload} {profile} / {', '.join(name for _, _, name in plan)}")
                    for row in measure(plan, study_ids, len(studies), args.runs, log):
                        results.append(dict(row, workload=workload))
                finally:
                    for setup, (prefix, _, _) in zip(setups, variants):
                        setup.stop()
                        shutil.rmtree(workdir / (prefix or "py") / profile, ignore_errors=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)

    table = report(results, totals, args)
    ratios = summary(results)
    info = {"machine": machine(), "workload": {"ct": args.ct, "mr": args.mr, "bytes": totals},
            "wan": {"delay_ms": args.delay_ms, "capacity_mbit": args.capacity_mbit, "window_kb": args.window_kb},
            "runs": args.runs, "transfers": args.transfers, "tuned": args.tuned, "cxx_versions": versions,
            "platform": default_platform(), "orthanc": args.orthanc,
            "results": results, "table": table, "summary": ratios}
    (args.out / "results.json").write_text(json.dumps(info, indent=2))
    (args.out / "results.md").write_text(table + "\n\n" + ratios + "\n")
    sizes = ", ".join(f"{name} {size / 1e6:.0f} MB" for name, size in totals.items())
    title = (f"synthetic {sizes}, median of {args.runs} runs; WAN: {args.delay_ms:g} ms one-way, "
             f"{args.capacity_mbit:g} Mbit/s, {args.window_kb} KB window")
    chart(results, args.out / "results.png", title)
    log("\n" + table + "\n\n" + ratios)
    log(f"\nWritten: {args.out / 'results.json'}, {args.out / 'results.md'}, {args.out / 'results.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
