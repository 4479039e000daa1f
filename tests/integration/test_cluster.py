"""An Orthanc cluster (issue 16): two nodes with Debian's orthanc-postgresql plugin on one PostgreSQL 15
index and one storage folder, behind Debian's nginx, and a single Orthanc peer on the other side.

Each test makes its own database, nodes, nginx and peer (tools/cluster.py) and stops them at its end; the
PostgreSQL server is one for the module."""

import hashlib
import re
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest
from transfer_helpers import load_study, new_instance_changes, pull, study_of, wait_job

from tools.cluster import NginxBalancer, PostgresServer, cluster_node_config
from tools.orthanc_launcher import OrthancServer, default_platform

pytestmark = pytest.mark.integration

ORIGINATOR = "cluster-of-test"  # Transfers.Originator of both nodes
JOBS_PROPERTY, JOURNAL_PROPERTY = 23451, 23452  # the saved jobs, the receiver's commit journal (ours)


@pytest.fixture(scope="module")
def postgres():
    workdir = Path(tempfile.mkdtemp(prefix="transfers-pg-", dir="/tmp"))  # under /tmp: the postgres user reaches it
    server = PostgresServer(workdir)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


class Cluster:
    """Nodes ``a`` and ``b`` on one database and storage folder, ``nginx`` in front, the ``single`` peer.

    The nodes know the single peer as ``single`` (push), ``single-pull`` (RemoteSelf ``cluster``) and
    ``single-pull-b`` (RemoteSelf ``b``); the single peer knows the cluster, through nginx, as ``cluster``
    (push) and ``cluster-pull`` (RemoteSelf ``single``), and node b directly as ``b``."""

    def __init__(self, base: Path, postgres: PostgresServer, balancing: str, node_transfers=None,
                 single_transfers=None):
        self.base = base
        self.postgres = postgres
        self.platform = default_platform()
        self.database = postgres.create_database("transfers_" + uuid.uuid4().hex[:12])
        storage = base / "shared-storage"
        node_transfers = {"Originator": ORIGINATOR, **(node_transfers or {})}
        self.single = OrthancServer("single", base / "single", transfers=single_transfers or {},
                                    extra_config={"JobsHistorySize": 100})
        self.nodes = []
        for name in ("a", "b"):
            extra = cluster_node_config(postgres, self.database, f"node-{name}", storage, self.platform)
            extra["JobsHistorySize"] = 100
            extra["ConcurrentJobs"] = 4
            self.nodes.append(OrthancServer(name, base / name, transfers=dict(node_transfers), extra_config=extra,
                                            peers={"single": self.single.peer_entry(),
                                                   "single-pull": self.single.peer_entry(RemoteSelf="cluster"),
                                                   "single-pull-b": self.single.peer_entry(RemoteSelf="b")}))
        self.nginx = NginxBalancer(base / "nginx", [f"127.0.0.1:{n.http_port}" for n in self.nodes], balancing)
        nginx_url = self.nginx.url + "/"
        self.single.peers = {"cluster": {"Url": nginx_url}, "cluster-pull": {"Url": nginx_url, "RemoteSelf": "single"},
                             "b": self.b.peer_entry()}

    @property
    def a(self) -> OrthancServer:
        return self.nodes[0]

    @property
    def b(self) -> OrthancServer:
        return self.nodes[1]

    def start(self) -> "Cluster":
        self.single.start()
        self.a.start()  # one after the other: the first creates the database's schema
        self.b.start()
        self.nginx.start()
        return self

    def node_of(self, port: str) -> str:
        return {f"127.0.0.1:{n.http_port}": n.name for n in self.nodes}.get(port, port)

    def close(self) -> None:
        self.nginx.stop()
        stoppers = [threading.Thread(target=server.stop) for server in [self.single] + self.nodes]
        for t in stoppers:
            t.start()
        for t in stoppers:
            t.join()
        self.postgres.drop_database(self.database)


@pytest.fixture
def make_cluster(postgres):
    made = []
    base = Path(tempfile.mkdtemp(prefix="transfers-cluster-", dir="/tmp"))
    base.chmod(0o755)  # nginx's workers (an unprivileged user) write their temporary files below it

    def make(balancing: str = "hash", **kwargs) -> Cluster:
        cluster = Cluster(base / f"c{len(made)}", postgres, balancing, **kwargs)
        made.append(cluster)
        return cluster.start()

    yield make
    for cluster in made:
        cluster.close()
    shutil.rmtree(base, ignore_errors=True)


def attachment_md5s(server, instance_ids):
    """Orthanc's own MD5 of each instance's DICOM attachment, and the MD5 of the bytes it serves."""
    out = {}
    for i in instance_ids:
        info = server.get_json(f"/instances/{i}/attachments/dicom/info")
        served = hashlib.md5(server.get(f"/instances/{i}/file").content).hexdigest()
        out[i] = (info["UncompressedMD5"], served)
    return out


def assert_cluster_holds(cluster: Cluster, files) -> None:
    """Both nodes list exactly these instances, each with the original's MD5 (attachment and bytes)."""
    expected = {i: hashlib.md5(data).hexdigest() for i, data in files.items()}
    for node in cluster.nodes:
        assert sorted(node.instances()) == sorted(expected), node.name
        for i, (stored, served) in attachment_md5s(node, expected).items():
            assert stored == served == expected[i], (node.name, i)


def assert_single_holds(single, files) -> None:
    assert sorted(single.instances()) == sorted(files)
    for i, data in files.items():
        assert hashlib.md5(single.get(f"/instances/{i}/file").content).hexdigest() == hashlib.md5(data).hexdigest()


def send(server, peer, study, **extra) -> dict:
    r = server.post("/transfers/send", json={"Resources": [{"Level": "Study", "ID": study}], "Compression": "gzip",
                                             "Peer": peer, **extra})
    assert r.status_code == 200, r.text
    return r.json()


def succeeded(server, job_id, timeout=120):
    job = wait_job(server, job_id, timeout=timeout)
    assert job["State"] == "Success", (server.name, job, server.log_tail(30))
    return job


def job_ids(server):
    return set(server.get_json("/jobs"))


def owner_of(cluster: Cluster, job_id: str) -> OrthancServer:
    owners = [n for n in cluster.nodes if job_id in job_ids(n)]
    assert len(owners) == 1, f"job {job_id} listed by {[n.name for n in owners]}"
    return owners[0]


def studies(server, count, n, rows=128):
    """``count`` generated studies: their IDs and instance ID -> bytes of all of them."""
    files, ids = {}, []
    for k in range(count):
        study = load_study(server, n, rows, seed=100 + k)
        ids.append(study_of(server, next(iter(study))))
        files.update(study)
    return ids, files


# -- into the cluster through nginx ------------------------------------------------------------------------


def test_four_pushes_at_once_through_header_routing_md5_identical_on_both_nodes(make_cluster):
    cluster = make_cluster("hash")
    ids, files = studies(cluster.single, 4, 3)
    jobs = [send(cluster.single, "cluster", s)["ID"] for s in ids]
    for job_id in jobs:
        succeeded(cluster.single, job_id)
    assert_cluster_holds(cluster, files)
    served = cluster.nginx.served("/transfers/push")
    assert sum(served.values()) >= 4 * 3  # create, bucket(s), commit of each push
    stored = cluster.postgres.properties(cluster.database, [JOBS_PROPERTY, JOURNAL_PROPERTY])
    committers = {server for server, prop in stored["per-server"] if prop == JOURNAL_PROPERTY}
    assert stored["shared"] == [] and committers and committers <= {"node-a", "node-b"}, stored  # per node


def test_push_through_sticky_cookie_md5_identical_on_both_nodes(make_cluster):
    cluster = make_cluster("cookie", single_transfers={"BucketSize": 64})
    ids, files = studies(cluster.single, 1, 6)
    succeeded(cluster.single, send(cluster.single, "cluster", ids[0])["ID"])
    assert_cluster_holds(cluster, files)
    pushes = [line.split()[3] for line in cluster.nginx.access_log.read_text().splitlines()
              if line.split()[1].startswith("/transfers/push")]
    assert len(pushes) >= 3 and len(set(pushes)) == 1  # every request of the push reached one node


def test_round_robin_push_fails_cleanly_with_nothing_imported_and_says_why(make_cluster):
    cluster = make_cluster("round-robin", single_transfers={"BucketSize": 64})
    ids, _ = studies(cluster.single, 1, 6)
    job = wait_job(cluster.single, send(cluster.single, "cluster", ids[0])["ID"])
    assert job["State"] == "Failure", job
    text = str(job.get("ErrorDetails")) + str(job.get("ErrorDescription"))
    assert "load balancer" in text and "sender-transfer-id" in text, job
    assert cluster.a.instances() == [] and cluster.b.instances() == []
    for node in cluster.nodes:
        assert "Traceback" not in node.log_text()


def test_pull_from_cluster_round_robin_four_at_once_buckets_from_both_nodes_md5_identical(make_cluster):
    cluster = make_cluster("round-robin", single_transfers={"BucketSize": 64})
    ids, files = studies(cluster.a, 4, 4)
    jobs = [pull(cluster.single, "cluster", [{"Level": "Study", "ID": s}]) for s in ids]
    for job_id in jobs:
        succeeded(cluster.single, job_id)
    assert_single_holds(cluster.single, files)
    chunks = cluster.nginx.served("/transfers/chunks")
    assert set(map(cluster.node_of, chunks)) == {"a", "b"}, chunks


# -- out of the cluster ------------------------------------------------------------------------------------


def test_send_from_nodes_push_mode_four_at_once_md5_identical(make_cluster):
    cluster = make_cluster("hash")
    ids, files = studies(cluster.a, 4, 3)
    jobs = [(node, send(node, "single", s)["ID"]) for node, s in zip(cluster.nodes * 2, ids)]
    for node, job_id in jobs:
        succeeded(node, job_id)
        assert job_id not in job_ids(cluster.b if node is cluster.a else cluster.a)
    assert_single_holds(cluster.single, files)


def test_send_from_nodes_pull_mode_four_at_once_through_round_robin_md5_identical(make_cluster):
    """The single peer pulls through a round-robin nginx: lookups answered by either node carry the
    cluster's one Originator (Transfers.Originator), so the check of the asking server passes."""
    cluster = make_cluster("round-robin", single_transfers={"BucketSize": 64})
    ids, files = studies(cluster.a, 4, 3)
    sent = [send(node, "single-pull", s) for node, s in zip(cluster.nodes * 2, ids)]
    for answer in sent:
        job = wait_job(cluster.single, answer["RemoteJob"])
        assert job["State"] == "Success", job
        assert job["Content"]["Originator"] == ORIGINATOR
    assert_single_holds(cluster.single, files)
    assert set(map(cluster.node_of, cluster.nginx.served("/transfers/"))) == {"a", "b"}


def test_send_from_node_pull_mode_answered_by_the_other_node_passes_the_originator_check(make_cluster):
    """Node a asks the single peer to pull; the single peer pulls from node b (its lookup answered by b):
    the cluster's one Originator lets the check of the asking server pass."""
    cluster = make_cluster("hash")
    ids, files = studies(cluster.a, 1, 3)
    answer = send(cluster.a, "single-pull-b", ids[0])
    job = succeeded(cluster.single, answer["RemoteJob"])
    assert job["Content"]["Originator"] == ORIGINATOR and job["Content"]["Peer"] == "b"
    assert_single_holds(cluster.single, files)


def test_send_into_cluster_pull_mode_md5_identical(make_cluster):
    cluster = make_cluster("hash")
    ids, files = studies(cluster.single, 2, 3)
    sent = [send(cluster.single, "cluster-pull", s) for s in ids]
    for answer in sent:
        owner = owner_of(cluster, answer["RemoteJob"])
        succeeded(owner, answer["RemoteJob"])
    assert_cluster_holds(cluster, files)


def test_synchronous_send_into_cluster_pull_mode_is_followed_on_its_node_through_header_routing(make_cluster):
    """The RemotePullTransfer job that follows the cluster's job asks GET /jobs/<id> with the transfer's
    sender-transfer-id: header routing brings it to the node that has the job."""
    cluster = make_cluster("hash")
    ids, files = studies(cluster.single, 1, 3)
    answer = send(cluster.single, "cluster-pull", ids[0], Synchronous=False)
    followed = succeeded(cluster.single, answer["ID"])
    assert followed["Type"] == "RemotePullTransfer", followed
    owner = owner_of(cluster, answer["RemoteJob"])
    succeeded(owner, answer["RemoteJob"])
    assert_cluster_holds(cluster, files)


# -- jobs --------------------------------------------------------------------------------------------------


def slow_pulls(cluster, per_node=2, kbs=50):
    """``per_node`` pulls of a study of the single peer on each node, capped at ``kbs`` KB/s: node -> job IDs,
    and the instances of all."""
    ids, files = studies(cluster.single, per_node * 2, 5, rows=256)
    jobs = {}
    for k, study in enumerate(ids):
        node = cluster.nodes[k % 2]
        r = node.post("/transfers/pull", json={"Resources": [{"Level": "Study", "ID": study}], "Peer": "single",
                                               "Compression": "none", "MaxBandwidthKBs": kbs})
        assert r.status_code == 200, r.text
        jobs.setdefault(node.name, []).append(r.json()["ID"])
    return jobs, files


LOADED = re.compile(r"(\d+) saved job\(s\) loaded, (\d+) unfinished")


def restarted_loads(node, before: int, timeout: float = 30):
    """The (loaded, unfinished) job counts the node logged at its latest start (the load runs after the
    start: waits for the line), ``before`` being how many such lines its log had before that start."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = LOADED.findall(node.log_text())
        if len(found) > before:
            return found[-1]
        time.sleep(0.1)
    raise AssertionError(f"{node.name} logged no job load after its restart:\n{node.log_tail(40)}")


def running_with_progress(node, job_id):
    return wait_job(node, job_id, ("Running",), timeout=60,
                    condition=lambda j: j["Content"].get("CompletedHttpQueries", 0) >= 1)


def test_job_ids_never_collide_and_each_node_lists_and_drives_only_its_own_jobs(make_cluster):
    cluster = make_cluster("hash", single_transfers={"BucketSize": 32}, node_transfers={"BucketSize": 32})
    jobs, files = slow_pulls(cluster)
    a_jobs, b_jobs = set(jobs["a"]), set(jobs["b"])
    assert len(a_jobs | b_jobs) == 4  # no id given twice
    assert a_jobs <= job_ids(cluster.a) and not b_jobs & job_ids(cluster.a)
    assert b_jobs <= job_ids(cluster.b) and not a_jobs & job_ids(cluster.b)
    victim = jobs["a"][0]
    assert cluster.b.post(f"/jobs/{victim}/pause", data=b"").status_code in (400, 404)
    assert cluster.b.get(f"/jobs/{victim}").status_code == 404
    assert cluster.a.post(f"/jobs/{victim}/pause", data=b"").status_code == 200
    assert wait_job(cluster.a, victim, ("Paused",))["State"] == "Paused"
    assert cluster.a.post(f"/jobs/{victim}/resume", data=b"").status_code == 200
    for node in cluster.nodes:
        for job_id in jobs[node.name]:
            succeeded(node, job_id, 180)
    assert_cluster_holds(cluster, files)
    stored = cluster.postgres.properties(cluster.database, [JOBS_PROPERTY])
    assert stored == {"shared": [], "per-server": [("node-a", JOBS_PROPERTY), ("node-b", JOBS_PROPERTY)]}


def test_node_restarted_mid_transfer_resumes_its_own_jobs_and_the_other_node_survives(make_cluster):
    cluster = make_cluster("hash", single_transfers={"BucketSize": 32}, node_transfers={"BucketSize": 32})
    jobs, files = slow_pulls(cluster)
    for node in cluster.nodes:
        for job_id in jobs[node.name]:
            running_with_progress(node, job_id)
    before = len(LOADED.findall(cluster.b.log_text()))
    cluster.b.stop()
    cluster.b.start()
    assert restarted_loads(cluster.b, before) == ("2", "2")  # b resumed its own two jobs, none of a's
    assert set(jobs["b"]) <= job_ids(cluster.b) and not set(jobs["a"]) & job_ids(cluster.b)
    for node in cluster.nodes:  # a's jobs went on while b restarted and swept its download area
        for job_id in jobs[node.name]:
            job = wait_job(node, job_id, timeout=180)
            assert job["State"] == "Success", job
    assert_cluster_holds(cluster, files)
    for node in cluster.nodes:
        assert "Traceback" not in node.log_text()


def test_both_nodes_restarted_at_once_every_job_resumed_exactly_once(make_cluster):
    cluster = make_cluster("hash", single_transfers={"BucketSize": 32}, node_transfers={"BucketSize": 32})
    jobs, files = slow_pulls(cluster)
    for node in cluster.nodes:
        for job_id in jobs[node.name]:
            running_with_progress(node, job_id)
    before = {node.name: len(LOADED.findall(node.log_text())) for node in cluster.nodes}
    both = [threading.Thread(target=node.stop) for node in cluster.nodes]  # at once
    for t in both:
        t.start()
    for t in both:
        t.join()
    for node in cluster.nodes:
        node.start()
    for node in cluster.nodes:
        assert restarted_loads(node, before[node.name]) == ("2", "2"), node.name  # its own two, no more
    every = jobs["a"] + jobs["b"]
    for job_id in every:
        owner = owner_of(cluster, job_id)  # on exactly one node
        assert job_id in jobs[owner.name]
        succeeded(owner, job_id, 180)
    assert_cluster_holds(cluster, files)
    assert set(new_instance_changes(cluster.a).values()) == {1}  # every instance stored once
    for node in cluster.nodes:
        assert "Traceback" not in node.log_text()
