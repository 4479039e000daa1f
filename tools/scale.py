"""Scale benchmark: many small instances, one huge transfer, many jobs at once (issue 15, item 4).

    scripts/scale.sh                                    # 1000 and 10000 small instances, 5 GB, 20 jobs
    scripts/scale.sh --sizes 1000,3000,10000 --big-mb 5000 --jobs 20 --parts small,big,jobs,state

Starts real Orthanc peers A (source) and B (target) on loopback (tools/bench.py's ``Setup``) and measures:

- small: a pull and a push (``--modes``) of one study of N small instances (64x64 MR slices, about 10 KB)
         for each N of ``--sizes``: seconds, seconds per instance, and the ratio of the per-instance time at
         the largest N to the smallest (1.0 = flat);
- big:   one transfer (``--big-mode``) of a study of about ``--big-mb`` MB of large CT-like slices
         (``--big-rows`` squared, 16 bits): seconds and MB/s;
- jobs:  ``--jobs`` transfer jobs submitted at once (half pushes from A, half pulls at B, one study each): all
         must succeed; the total time;
- state: no Orthanc: the time the job engine takes to save its state (what it does once a second while a
         job runs) with ``--jobs`` jobs each carrying the resume state of a ``max(--sizes)``-instance pull,
         and the bytes it writes.

Every run gives the peak resident memory (VmHWM, reset before the run) of each Orthanc. The report is printed
as a table and written as JSON and Markdown to ``--out`` (scale.json, scale.md).
"""

import argparse
import json
import queue
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional

from tools.bench import OURS, Setup, cpu_seconds, machine, measure_once, reset_peak, wait_job
from tools.orthanc_launcher import REPO_ROOT, OrthancServer
from tools.synthetic import generate_study

PARTS = ("small", "big", "jobs", "state")
SMALL_ROWS = 64


def upload_all(server: OrthancServer, files: Iterable[bytes], threads: int = 4) -> List[str]:
    """Uploads DICOM files in ``threads`` parallel requests, taking them from ``files`` as they are needed
    (a generator of 5 GB is never held in memory at once); returns the instance IDs."""
    todo: "queue.Queue[Optional[bytes]]" = queue.Queue(maxsize=threads * 2)
    ids: List[str] = []
    errors: List[BaseException] = []
    lock = threading.Lock()

    def worker() -> None:
        while True:
            data = todo.get()
            if data is None:
                return
            try:
                instance_id = server.upload(data)
                with lock:
                    ids.append(instance_id)
            except BaseException as e:  # noqa: BLE001 - re-raised by the caller
                errors.append(e)

    workers = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for w in workers:
        w.start()
    for data in files:
        if errors:
            break
        todo.put(data)
    for _ in workers:
        todo.put(None)
    for w in workers:
        w.join()
    if errors:
        raise errors[0]
    return ids


def study_of(server: OrthancServer, instance_id: str) -> str:
    return server.get_json(f"/instances/{instance_id}/study")["ID"]


def new_setup(workdir: Path, name: str, transfers: Dict[str, Any]) -> Setup:
    setup = Setup(workdir / name, "loopback", argparse.Namespace(), None, transfers)
    setup.start()
    setup.b.get_json("/jobs")
    return setup


def row(part: str, name: str, sample: Dict[str, Any], **extra: Any) -> Dict[str, Any]:
    return dict({"part": part, "name": name}, **sample, **extra)


def measure_small(workdir: Path, args: argparse.Namespace, transfers: Dict[str, Any],
                  log: Callable[[str], None]) -> List[Dict[str, Any]]:
    rows: List[Dict[str, Any]] = []
    setup = new_setup(workdir, "small", transfers)
    try:
        for n in args.sizes:
            started = time.monotonic()
            ids = upload_all(setup.a, generate_study(n, SMALL_ROWS, SMALL_ROWS, modality="MR", seed=5000 + n,
                                                     same_pixels=True))
            study = study_of(setup.a, ids[0])
            log(f"  {n} small instances generated and uploaded in {time.monotonic() - started:.0f} s")
            for mode in args.modes:
                sample = measure_once(setup, mode, [study], n)
                r = row("small", mode, sample, instances=n, per_instance_ms=sample["seconds"] / n * 1000)
                rows.append(r)
                log(f"  {mode} of {n}: {sample['seconds']:.1f} s, {r['per_instance_ms']:.2f} ms per instance, "
                    f"peak MB A {sample['peak_mb_a']:.0f} B {sample['peak_mb_b']:.0f}")
            setup.a.request("DELETE", f"/studies/{study}")
    finally:
        setup.stop()
        shutil.rmtree(workdir / "small", ignore_errors=True)
    for mode in args.modes:
        mine = [r for r in rows if r["name"] == mode]
        if len(mine) > 1:
            ratio = mine[-1]["per_instance_ms"] / mine[0]["per_instance_ms"]
            for r in mine:
                r["per_instance_vs_smallest"] = r["per_instance_ms"] / mine[0]["per_instance_ms"]
            log(f"  {mode}: per-instance time at {mine[-1]['instances']} / at {mine[0]['instances']} = {ratio:.2f}")
    return rows


def measure_big(workdir: Path, args: argparse.Namespace, transfers: Dict[str, Any],
                log: Callable[[str], None]) -> List[Dict[str, Any]]:
    slice_bytes = args.big_rows * args.big_rows * 2
    n = max(1, round(args.big_mb * 1e6 / slice_bytes))
    setup = new_setup(workdir, "big", transfers)
    try:
        started = time.monotonic()
        ids = upload_all(setup.a, generate_study(n, args.big_rows, args.big_rows, modality="CT", seed=7000,
                                                 same_pixels=True))
        study = study_of(setup.a, ids[0])
        total = int(setup.a.get_json(f"/studies/{study}/statistics")["DiskSize"])
        log(f"  {n} slices of {args.big_rows}x{args.big_rows} ({total / 1e6:.0f} MB) generated and uploaded in "
            f"{time.monotonic() - started:.0f} s")
        sample = measure_once(setup, args.big_mode, [study], n)
        r = row("big", args.big_mode, sample, instances=n, bytes=total, mb_per_s=total / 1e6 / sample["seconds"])
        log(f"  {args.big_mode} of {total / 1e6:.0f} MB: {sample['seconds']:.1f} s, {r['mb_per_s']:.0f} MB/s, "
            f"peak MB A {sample['peak_mb_a']:.0f} B {sample['peak_mb_b']:.0f}")
        return [r]
    finally:
        setup.stop()
        shutil.rmtree(workdir / "big", ignore_errors=True)


def measure_jobs(workdir: Path, args: argparse.Namespace, transfers: Dict[str, Any],
                 log: Callable[[str], None]) -> List[Dict[str, Any]]:
    setup = new_setup(workdir, "jobs", transfers)
    try:
        studies = []
        for k in range(args.jobs):
            ids = upload_all(setup.a, generate_study(args.jobs_instances, SMALL_ROWS, SMALL_ROWS, modality="MR",
                                                     seed=9000 + k, same_pixels=True))
            studies.append(study_of(setup.a, ids[0]))
        expected = args.jobs * args.jobs_instances
        setup.fresh_b()
        a, b = setup.a, setup.b
        for s in (a, b):
            reset_peak(s.process.pid)
        cpu_before = [cpu_seconds(s.process.pid) for s in (a, b)]
        started = time.monotonic()
        submitted = []
        for k, study in enumerate(studies):  # half pushes from A, half pulls at B, submitted at once
            body = {"Resources": [{"Level": "Study", "ID": study}], "Compression": "none"}
            if k % 2 == 0:
                r = a.post("/transfers/send", json=dict(body, Peer="b"))
                submitted.append((a, r))
            else:
                r = b.post("/transfers/pull", json=dict(body, Peer="a"))
                submitted.append((b, r))
        jobs = []
        for server, r in submitted:
            r.raise_for_status()
            jobs.append((server, r.json()["ID"]))
        failed = []
        for server, job_id in jobs:
            job = wait_job(server, job_id, timeout=args.timeout)
            if job["State"] != "Success":
                failed.append(f"{job_id}: {job['ErrorDescription']}")
        elapsed = time.monotonic() - started
        stored = int(b.get_json("/statistics")["CountInstances"])
        cpu = [cpu_seconds(s.process.pid) - c for s, c in zip((a, b), cpu_before)]
        r = row("jobs", f"{args.jobs} jobs", {"seconds": elapsed, "cpu_a": cpu[0], "cpu_b": cpu[1],
                                              "peak_mb_a": a.memory_mb("VmHWM"), "peak_mb_b": b.memory_mb("VmHWM")},
                instances=expected, jobs=args.jobs, succeeded=args.jobs - len(failed), failures=failed,
                stored=stored)
        log(f"  {args.jobs} jobs of {args.jobs_instances} instances: {len(jobs) - len(failed)} succeeded, "
            f"{elapsed:.1f} s, B holds {stored} of {expected}; peak MB A {r['peak_mb_a']:.0f} B {r['peak_mb_b']:.0f}")
        if failed or stored != expected:
            raise RuntimeError(f"jobs: {len(failed)} failed ({failed[:3]}), B holds {stored} of {expected}")
        return [r]
    finally:
        setup.stop()
        shutil.rmtree(workdir / "jobs", ignore_errors=True)


def measure_state(args: argparse.Namespace, log: Callable[[str], None]) -> List[Dict[str, Any]]:
    """The engine's periodic save with ``--jobs`` running pulls of ``max(--sizes)`` instances each, half of
    their buckets done: the seconds of one save after one bucket more, and the bytes it writes."""
    from transfers_plugin.jobs.engine import JobEngine
    from transfers_plugin.jobs.model import RUNNING
    from transfers_plugin.jobs.store import GlobalPropertyJobStore

    n = max(args.sizes)
    properties: Dict[int, str] = {}
    written = [0]

    def set_property(key: int, value: str) -> None:
        written[0] += len(value)
        properties[key] = value

    class Job:
        name = "pull"

        def run(self, context: Any) -> None:  # never run here
            raise AssertionError

        def cleanup(self, record: Any, reason: str) -> None:
            pass

    engine = JobEngine({"pull": Job()}, GlobalPropertyJobStore(lambda k, d: properties.get(k, d), set_property))
    engine._loaded.set()
    contexts = []
    from transfers_plugin.jobs.engine import JobContext
    for k in range(args.jobs):
        record = engine.submit("pull", {"Peer": "a", "Resources": [{"Level": "Study", "ID": f"{k:040d}"}]})
        record.state = RUNNING
        context = JobContext(engine, record)
        ids = [f"{k:08x}-{i:08x}-00000000-00000000-00000000"[:44] for i in range(n)]
        context.update_resume_state(Instances=[{"ID": i, "MD5": "0" * 32, "Size": "10000"} for i in ids],
                                    BucketSizeKB=4096, DoneBuckets=list(range(n // 400)), Verified=ids[:n // 2],
                                    DownloadedBytes=n * 5000, Imported=[], Created=[])
        contexts.append((context, ids))
    engine._save()
    timings = []
    for step in range(5):
        for context, ids in contexts:  # one more bucket of each job, as a running pull publishes it
            state = context.resume_state
            context.update_resume_state(DoneBuckets=state["DoneBuckets"] + [n // 400 + step],
                                        Verified=ids[:n // 2 + 25 * (step + 1)])
        written[0] = 0
        started = time.perf_counter()
        engine._save()
        timings.append((time.perf_counter() - started, written[0]))
    seconds, size = min(timings)
    r = {"part": "state", "name": f"save of {args.jobs} jobs x {n} instances", "jobs": args.jobs, "instances": n,
         "seconds": seconds, "bytes_written": size, "total_saved_bytes": sum(len(v) for v in properties.values())}
    log(f"  one save of {args.jobs} running jobs of {n} instances: {seconds * 1000:.1f} ms, "
        f"{size / 1e6:.2f} MB written (the saved state holds {r['total_saved_bytes'] / 1e6:.1f} MB)")
    return [r]


def report(rows: List[Dict[str, Any]]) -> str:
    lines = ["| part | run | instances | seconds | ms per instance | per instance vs smallest | MB/s | "
             "peak MB A | peak MB B |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r["part"] == "state":
            lines.append(f"| state | {r['name']} | {r['jobs'] * r['instances']} | {r['seconds']:.3f} | - | - | "
                         f"{r['bytes_written'] / 1e6:.2f} MB written | - | - |")
            continue
        per = f"{r['per_instance_ms']:.2f}" if "per_instance_ms" in r else f"{r['seconds'] / r['instances'] * 1000:.2f}"
        vs = f"{r['per_instance_vs_smallest']:.2f}x" if "per_instance_vs_smallest" in r else "-"
        mbs = f"{r['mb_per_s']:.0f}" if "mb_per_s" in r else "-"
        name = r["name"] + (f" ({r['succeeded']} succeeded)" if r["part"] == "jobs" else "")
        lines.append(f"| {r['part']} | {name} | {r['instances']} | {r['seconds']:.1f} | {per} | {vs} | {mbs} | "
                     f"{r['peak_mb_a']:.0f} | {r['peak_mb_b']:.0f} |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default=",".join(PARTS))
    parser.add_argument("--sizes", default="1000,10000", help="instance counts of the small part")
    parser.add_argument("--modes", default="pull-none,push-none", help="modes of the small part")
    parser.add_argument("--big-mb", type=float, default=5000.0, help="size of the big transfer, in MB")
    parser.add_argument("--big-rows", type=int, default=2048, help="rows (and columns) of a big slice")
    parser.add_argument("--big-mode", default="pull-none")
    parser.add_argument("--jobs", type=int, default=20, help="jobs submitted at once")
    parser.add_argument("--jobs-instances", type=int, default=50, help="instances of each of those jobs")
    parser.add_argument("--transfers", default="", help="Transfers options of both peers as JSON")
    parser.add_argument("--timeout", type=float, default=3600.0)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench-results")
    parser.add_argument("--workdir", type=Path, default=None, help="storage of the servers (a temporary folder)")
    args = parser.parse_args(argv)
    parts = [p for p in args.parts.split(",") if p]
    for p in parts:
        if p not in PARTS:
            parser.error(f"unknown part {p}; known: {', '.join(PARTS)}")
    try:
        args.sizes = sorted(int(s) for s in args.sizes.split(",") if s)
    except ValueError:
        parser.error("--sizes: a comma-separated list of instance counts")
    if not args.sizes or min(args.sizes) < 1:
        parser.error("--sizes: positive instance counts")
    args.modes = [m for m in args.modes.split(",") if m]
    for m in args.modes + [args.big_mode]:
        if m not in OURS:
            parser.error(f"unknown mode {m}; known: {', '.join(OURS)}")
    if args.jobs < 1 or args.jobs_instances < 1 or args.big_mb <= 0 or args.big_rows < 16:
        parser.error("--jobs, --jobs-instances, --big-mb and --big-rows must be positive (rows at least 16)")
    transfers = json.loads(args.transfers) if args.transfers else {}

    def log(message: str) -> None:
        print(message, flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="transfers-scale-"))
    rows: List[Dict[str, Any]] = []
    try:
        for part in parts:
            log(f"{part}:")
            if part == "small":
                rows += measure_small(workdir, args, transfers, log)
            elif part == "big":
                rows += measure_big(workdir, args, transfers, log)
            elif part == "jobs":
                rows += measure_jobs(workdir, args, transfers, log)
            else:
                rows += measure_state(args, log)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    table = report(rows)
    info = {"machine": machine(), "parts": parts, "sizes": args.sizes, "modes": args.modes, "big_mb": args.big_mb,
            "big_rows": args.big_rows, "big_mode": args.big_mode, "jobs": args.jobs,
            "jobs_instances": args.jobs_instances, "transfers": transfers, "rows": rows, "table": table}
    (args.out / "scale.json").write_text(json.dumps(info, indent=2))
    (args.out / "scale.md").write_text(table + "\n")
    log("\n" + table)
    log(f"\nWritten: {args.out / 'scale.json'}, {args.out / 'scale.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
