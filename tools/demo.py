"""Two local Orthanc peers A and B with the transfers plugin, and a generated study in A.

    .venv/bin/python -m tools.demo [--instances 60] [--port-a 8142] [--port-b 8143] [--seconds 0]

A knows B twice: as "b" (with RemoteSelf, so sending uses pull mode) and as "b-push" (push mode).
B knows A as "a" (with RemoteSelf) and "a-push". The script prints the URLs and curl lines, then keeps
both servers running until Ctrl-C (or for --seconds). At start it sends the study from A to B in push mode
and prints the job's progress (skip with --no-transfer).
"""

import argparse
import json
import shutil
import signal
import sys
import time
from pathlib import Path

from tools.orthanc_launcher import REPO_ROOT, OrthancServer
from tools.synthetic import generate_study


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=REPO_ROOT / "demo-data",
                        help="storage and logs of both servers (emptied first)")
    parser.add_argument("--instances", type=int, default=60, help="CT slices in the generated study")
    parser.add_argument("--rows", type=int, default=512, help="rows and columns of each slice")
    parser.add_argument("--port-a", type=int, default=8142)
    parser.add_argument("--port-b", type=int, default=8143)
    parser.add_argument("--seconds", type=float, default=0, help="stop after this many seconds (0: Ctrl-C)")
    parser.add_argument("--no-transfer", action="store_true", help="do not send the study to B at start")
    args = parser.parse_args(argv)

    if args.workdir.exists():
        shutil.rmtree(args.workdir)
    url_a = f"http://127.0.0.1:{args.port_a}"
    url_b = f"http://127.0.0.1:{args.port_b}"
    transfers = {"Threads": 4, "BucketSize": 4096}
    a = OrthancServer("a", args.workdir / "a", http_port=args.port_a, transfers=transfers, peers={
        "b": {"Url": url_b + "/", "RemoteSelf": "a"}, "b-push": {"Url": url_b + "/"}})
    b = OrthancServer("b", args.workdir / "b", http_port=args.port_b, transfers=transfers, peers={
        "a": {"Url": url_a + "/", "RemoteSelf": "b"}, "a-push": {"Url": url_a + "/"}})
    servers = [a, b]
    try:
        for s in servers:
            s.start()
        print(f"Generating a CT study of {args.instances} slices of {args.rows}x{args.rows} into A ...")
        size = 0
        instance_id = None
        for data in generate_study(args.instances, args.rows, args.rows, seed=int(time.time()) % 100000):
            instance_id = a.upload(data)
            size += len(data)
        study = a.get_json(f"/instances/{instance_id}/study")["ID"]
        if not args.no_transfer:
            watch_transfer(a, b, study)
        print_help(a, b, study, size, args)
        stop_at = time.monotonic() + args.seconds if args.seconds else None
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        while stop_at is None or time.monotonic() < stop_at:
            time.sleep(0.5)
            for s in servers:
                if not s.running:
                    print(f"Orthanc {s.name} stopped unexpectedly; its log is {s.log_path}")
                    return 1
    except KeyboardInterrupt:
        pass
    finally:
        for s in servers:
            s.stop()
        print("Both servers are stopped.")
    return 0


def progress_line(job) -> str:
    """One line of a transfer job's progress: "X of Y MB" both in the instances' own size, the bytes on the
    wire (compressed: ``Compression`` ``auto`` gives zstd-shuffle between our peers), the speed and the time
    left (once the job estimates it)."""
    c = job["Content"]
    line = (f"{job['State']:8} {job['Progress']:3}%  buckets {c.get('CompletedHttpQueries', 0)}  "
            f"{c.get('CompletedSizeMB', 0)} MB of {c.get('TotalSizeMB', '?')} MB  "
            f"({c.get('WireSizeMB', 0)} MB on the wire)  {c.get('NetworkSpeedKBs', 0)} KB/s")
    if job["State"] not in ("Success", "Failure") and "RemainingSeconds" in c:
        line += f"  about {c['RemainingSeconds']} s left"
    return line


def watch_transfer(a: OrthancServer, b: OrthancServer, study: str) -> None:
    """Sends the study from A to B in push mode and prints the job until it ends."""
    r = a.post("/transfers/send", json={"Resources": [{"Level": "Study", "ID": study}], "Compression": "auto",
                                        "Peer": "b-push"})
    r.raise_for_status()
    job_id = r.json()["ID"]
    print(f"\nSending it to B: POST {a.url}/transfers/send (Compression auto) -> job {job_id}")
    while True:
        job = a.get_json(f"/jobs/{job_id}")
        print("  " + progress_line(job), flush=True)
        if job["State"] in ("Success", "Failure"):
            break
        time.sleep(0.5)
    if job["State"] == "Success":
        print(f"Done: B now holds {len(b.get_json(f'/studies/{study}/instances'))} instances of the study "
              f"(sent with {job['Content'].get('Compression')}).")
    else:
        print(f"The transfer failed: {job['ErrorDescription']}")


def print_help(a: OrthancServer, b: OrthancServer, study: str, size: int, args) -> None:
    resources = json.dumps([{"Level": "Study", "ID": study}])
    print(f"""
Orthanc A: {a.url}/app/explorer.html   (log: {a.log_path})
Orthanc B: {b.url}/app/explorer.html   (log: {b.log_path})
Study in A: {study} ({args.instances} instances, {size / 1e6:.1f} MB)

Peers as A sees them (installed = push mode, bidirectional = pull mode):
  curl -s {a.url}/transfers/peers
What A would send (instances, sizes, MD5s):
  curl -s -X POST {a.url}/transfers/lookup -d '{resources}'
Send the study from A to B, in push mode (peer "b-push") or pull mode (peer "b"):
  curl -s -X POST {a.url}/transfers/send -d '{{"Resources": {resources}, "Compression": "auto", "Peer": "b-push"}}'
Or have B pull it from A:
  curl -s -X POST {b.url}/transfers/pull -d '{{"Resources": {resources}, "Compression": "auto", "Peer": "a"}}'
("auto": zstd-shuffle between our peers when both have zstandard, gzip with any other peer; or "gzip", "none")
Then watch the job:  curl -s {a.url}/jobs/<ID>   (or B's /jobs/<ID> for a pull)""")
    print("\nCtrl-C stops both servers.", flush=True)


if __name__ == "__main__":
    sys.exit(main())
