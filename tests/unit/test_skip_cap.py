"""Issue 14: the bandwidth limiter, the capabilities answer and its client, what a store holds, the options."""

import json
import threading

import pytest

from transfers_plugin import capabilities, codec
from transfers_plugin.bandwidth import KB, RateLimiter, cap_kbs, capped_bucket_kb
from transfers_plugin.config import PeerConfig, parse_configuration
from transfers_plugin.errors import BadRequest, NetworkProtocol, NotFound, TransfersError
from transfers_plugin.holdings import HOLDS_BATCH, MAX_WITHIN, ask_peer, held, parse_holds_request
from transfers_plugin.protocol import DEFAULT_LIMITS, InstanceInfo, Limits, Resource, TransferQuery
from transfers_plugin.transport import HttpAnswer, PeerError, StoppableBody

ID1 = "11111111-11111111-11111111-11111111-11111111"
ID2 = "22222222-22222222-22222222-22222222-22222222"
ID3 = "33333333-33333333-33333333-33333333-33333333"
MD5 = "0123456789abcdef0123456789abcdef"
PEER = PeerConfig("p", "http://p/")


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


# -- the limiter -------------------------------------------------------------------------------------


def test_the_limiter_lets_its_depth_pass_then_makes_each_byte_wait_its_turn():
    clock = Clock()
    limiter = RateLimiter(1000, burst=500, clock=clock)
    assert limiter.reserve(500) == 0
    assert limiter.reserve(100) == pytest.approx(0.1)  # a debt of 100 bytes at 1000 B/s
    assert limiter.reserve(400) == pytest.approx(0.5)  # served after the first: 500 bytes of debt
    clock.now += 0.5
    assert limiter.reserve(0) == 0  # the debt is paid
    clock.now += 10  # a long pause refills the bucket to its depth only
    assert limiter.reserve(500) == 0 and limiter.reserve(1000) == pytest.approx(1.0)


def test_the_limiter_rate_over_many_pieces_is_the_cap():
    """Over a long transfer in pieces, the bytes allowed by any time are at most rate * time + depth."""
    clock = Clock()
    limiter = RateLimiter(100 * KB, clock=clock)
    start, moved = clock.now, 0
    for _ in range(1000):
        wait = limiter.reserve(128 * KB)
        clock.now += wait  # the worker sleeps, then moves its piece
        moved += 128 * KB
        assert moved <= 100 * KB * (clock.now - start) + limiter.burst + 128 * KB
    assert moved / (clock.now - start) == pytest.approx(100 * KB, rel=0.01)


def test_the_limiter_is_shared_by_threads_and_a_stop_ends_a_wait():
    limiter = RateLimiter(1000, burst=1000)
    assert limiter.acquire(1000)
    stop = threading.Event()
    stop.set()
    assert limiter.acquire(10_000, stop) is False  # would wait 10 s: a stopped job does not
    results = []
    threads = [threading.Thread(target=lambda: results.append(limiter.reserve(100))) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Ten reservations of 100 bytes after a debt of 10,000: each waits its own turn, never two the same.
    assert len(set(round(r, 6) for r in results)) == 10


def test_caps():
    assert RateLimiter.of_kbs(0) is None and RateLimiter.of_kbs(None) is None
    assert RateLimiter.of_kbs(10).rate == 10 * KB
    assert cap_kbs(None, 500) == 500 and cap_kbs(0, 500) == 0 and cap_kbs(100, 0) == 100
    with pytest.raises(ValueError):
        RateLimiter(0)


def test_a_capped_upload_asks_the_limiter_for_each_slice():
    asked = []

    class Limiter:
        def acquire(self, n, stop):
            asked.append(n)
            return True

    body = StoppableBody(b"x" * (StoppableBody.PIECE * 2 + 10), None, limiter=Limiter())
    assert b"".join(bytes(p) for p in body) == b"x" * (StoppableBody.PIECE * 2 + 10)
    assert asked == [StoppableBody.PIECE, StoppableBody.PIECE, 10]

    class Stopped:
        def acquire(self, n, stop):
            return False

    with pytest.raises(OSError):
        list(StoppableBody(b"abc", None, limiter=Stopped()))


# -- options -------------------------------------------------------------------------------------------


def query(**extra):
    return {"Resources": [{"Level": "Study", "ID": ID1}], "Peer": "p", "Compression": "none", **extra}


def test_the_request_options():
    q = TransferQuery.from_json(query())
    assert q.skip_existing is True and q.max_bandwidth_kbs is None
    assert "SkipExisting" not in q.to_json() and "MaxBandwidthKBs" not in q.to_json()  # jobs saved as before
    q = TransferQuery.from_json(query(SkipExisting=False, MaxBandwidthKBs=0))
    assert q.skip_existing is False and q.max_bandwidth_kbs == 0
    assert TransferQuery.from_json(q.to_json()) == q
    for bad in ({"SkipExisting": "false"}, {"SkipExisting": None}, {"SkipExisting": 1},
                {"MaxBandwidthKBs": "1"}, {"MaxBandwidthKBs": -1}, {"MaxBandwidthKBs": 10_000_001},
                {"MaxBandwidthKBs": 2.0}, {"MaxBandwidthKBs": False}):
        with pytest.raises(BadRequest) as e:
            TransferQuery.from_json(query(**bad))
        assert next(iter(bad)) in e.value.message


def test_the_configured_cap():
    assert parse_configuration({}).max_bandwidth_kbs == 0
    assert parse_configuration({"Transfers": {"MaxBandwidthKBs": 2048}}).max_bandwidth_kbs == 2048
    for bad in (-1, "2048", 1.5, 10_000_001):
        with pytest.raises(Exception) as e:
            parse_configuration({"Transfers": {"MaxBandwidthKBs": bad}})
        assert "MaxBandwidthKBs" in str(e.value)


# -- what a store holds --------------------------------------------------------------------------------


class Store:
    def __init__(self, records, resources=()):
        self.records = records
        self.resources = set(resources)
        self.asked = []

    def attachment_info(self, iid):
        self.asked.append(("Instance", iid))
        if iid not in self.records:
            raise NotFound(f"Unknown instance {iid}")
        return self.records[iid]

    def resource_exists(self, level, rid):
        self.asked.append((level, rid))
        return (level, rid) in self.resources


def test_held_needs_the_same_size_and_md5():
    store = Store({ID1: (10, MD5), ID2: (11, MD5), ID3: (10, None)})
    asked = [InstanceInfo(ID1, 10, MD5), InstanceInfo(ID2, 10, MD5), InstanceInfo(ID3, 10, MD5),
             InstanceInfo("44444444-44444444-44444444-44444444-44444444", 10, MD5)]
    assert held(store, asked) == [ID1]  # ID2: another size; ID3: no MD5 recorded; the last: absent
    assert held(Store({ID1: (10, MD5.upper())}), asked[:1]) == [ID1]
    assert held(Store({ID1: (10, "f" * 32)}), asked[:1]) == []


STUDY = "55555555-55555555-55555555-55555555-55555555"
SERIES = "66666666-66666666-66666666-66666666-66666666"


def test_held_asks_the_parents_first_and_each_instance_only_when_one_is_there():
    asked = [InstanceInfo(f"{n:08x}-11111111-11111111-11111111-11111111", 10, MD5) for n in range(50)]
    within = [Resource("Study", STUDY), Resource("Series", SERIES)]
    store = Store({})  # a first transfer: none of them is there, two queries instead of fifty
    assert held(store, asked, within) == [] and store.asked == [("Study", STUDY), ("Series", SERIES)]
    store = Store({asked[3].id: (10, MD5)}, resources=[("Series", SERIES)])  # one is there: each instance asked
    assert held(store, asked, within) == [asked[3].id]
    assert [a for a in store.asked if a[0] == "Instance"] == [("Instance", i.id) for i in asked]
    # Instance-level resources, more resources than instances, too many of them: each instance is asked.
    for many in ([Resource("Instance", i.id) for i in asked[:5]], [Resource("Study", STUDY)] * 50,
                 [Resource("Study", STUDY)] * (MAX_WITHIN + 1)):
        instances = asked if len(many) <= 50 else asked * 3
        store = Store({instances[-1].id: (10, MD5)})
        assert set(held(store, instances, many)) == {instances[-1].id}
        assert store.asked == [("Instance", i.id) for i in instances]  # each one, and nothing else
    store = Store({asked[0].id: (10, MD5)})  # without parents, as from an older sender
    assert held(store, asked) == [asked[0].id] and len(store.asked) == len(asked)


def test_the_holds_query_is_bounded_and_checked():
    one = {"ID": ID1, "Size": "10", "MD5": MD5}
    assert parse_holds_request({"Instances": [one]}, DEFAULT_LIMITS) == ([InstanceInfo(ID1, 10, MD5)], [])
    study = {"Level": "Study", "ID": ID2}
    assert parse_holds_request({"Instances": [one], "Resources": [study]}, DEFAULT_LIMITS) == \
        ([InstanceInfo(ID1, 10, MD5)], [Resource("Study", ID2)])
    for bad in ([one], {"Instances": one}, {"Instances": [{"ID": "../x", "Size": "1", "MD5": MD5}]},
                {"Instances": [one] * (HOLDS_BATCH + 1)},
                {"Instances": [one], "Resources": study},
                {"Instances": [one], "Resources": [{"Level": "Study", "ID": "../../x"}]},
                {"Instances": [one], "Resources": [{"Level": "Volume", "ID": ID2}]},
                {"Instances": [one], "Resources": [study] * (MAX_WITHIN + 1)}):
        with pytest.raises(BadRequest):
            parse_holds_request(bad, DEFAULT_LIMITS)
    with pytest.raises(TransfersError) as e:
        parse_holds_request({"Instances": [one] * 20}, Limits(max_instances=10))
    assert e.value.status == 413


class Transport:
    """Answers per URI: a JSON value, or an exception to raise."""

    def __init__(self, answers):
        self.answers = answers
        self.calls = []

    def call(self, peer, method, uri, **kwargs):
        self.calls.append((method, uri, kwargs.get("body")))
        answer = self.answers[uri]
        if callable(answer):
            answer = answer(kwargs.get("body"))
        if isinstance(answer, Exception):
            raise answer
        return HttpAnswer(200, {}, json.dumps(answer).encode(), document=answer)


def test_our_peer_is_asked_in_batches_and_its_answer_is_checked():
    instances = [InstanceInfo(f"{n:08x}-11111111-11111111-11111111-11111111", 10, MD5) for n in range(2500)]

    def answer(body):
        ids = [i["ID"] for i in json.loads(body)["Instances"]]
        return {"Held": ids[::2]}

    transport = Transport({"/transfers/holds": answer})
    found = ask_peer(transport, PEER, instances)
    assert len(transport.calls) == 3 and found == {i.id for n, i in enumerate(instances) if n % 1000 % 2 == 0}
    assert all("Resources" not in json.loads(body) for _, _, body in transport.calls)
    transport = Transport({"/transfers/holds": answer})
    ask_peer(transport, PEER, instances, within=[Resource("Study", STUDY)])  # each batch says what they are in
    assert all(json.loads(body)["Resources"] == [{"Level": "Study", "ID": STUDY}] for _, _, body in transport.calls)
    transport = Transport({"/transfers/holds": answer})
    ask_peer(transport, PEER, instances, within=[Resource("Study", STUDY)] * (MAX_WITHIN + 1))  # too many: none
    assert all("Resources" not in json.loads(body) for _, _, body in transport.calls)
    for bad in ({"Held": [ID2]}, {"Held": ID1}, [], {"Held": [1]}):
        with pytest.raises(NetworkProtocol):
            ask_peer(Transport({"/transfers/holds": bad}), PEER, instances[:1])


# -- capabilities --------------------------------------------------------------------------------------


OURS = {"ID": "transfers", "Version": "0.1.0", "Capabilities": "/transfers/capabilities"}
CXX = {"ID": "transfers", "Version": "1.4", "Description": "Accelerates transfers and provides "
       "storage commitment between Orthanc peers", "ExtendsOrthancExplorer": True}


def test_the_local_answer_parses_as_a_peer_answer():
    caps = capabilities.parse_capabilities(capabilities.local_capabilities("0.1.0"))
    assert caps.implementation == "orthanc-transfers-py" and caps.version == "0.1.0"
    assert caps.supports("skip-existing") and caps.supports("bandwidth-cap") and not caps.supports("x")
    assert caps.compression == codec.codec_names() == ("none", "gzip", "zstd-shuffle")  # zstandard in the venv
    assert capabilities.from_state(caps.to_json()) == caps and capabilities.from_state(None) is None


def test_a_cxx_peer_is_never_asked_for_capabilities():
    for info in (CXX, {"Capabilities": "/elsewhere"}, [], "transfers"):
        transport = Transport({"/plugins/transfers": info})
        assert capabilities.ask(transport, PEER) is None
        assert [uri for _, uri, _ in transport.calls] == ["/plugins/transfers"]
    transport = Transport({"/plugins/transfers": PeerError("404", 404)})  # no plugin, or unreachable
    assert capabilities.ask(transport, PEER) is None
    assert [uri for _, uri, _ in transport.calls] == ["/plugins/transfers"]


def test_our_peer_is_asked_and_a_hostile_answer_means_everything_is_sent():
    good = capabilities.local_capabilities("0.2.0")
    transport = Transport({"/plugins/transfers": OURS, "/transfers/capabilities": good})
    assert capabilities.ask(transport, PEER).version == "0.2.0"
    newer = dict(good, Features=["skip-existing", "zstd-codec"], Compression=["none", "gzip", "zstd"], Other=1)
    caps = capabilities.ask(Transport({"/plugins/transfers": OURS, "/transfers/capabilities": newer}), PEER)
    assert caps.supports("zstd-codec") and caps.compression == ("none", "gzip", "zstd")
    warnings = []
    for bad in ([], dict(good, Features="skip-existing"), dict(good, Features=["x"] * 65),
                dict(good, Version=""), dict(good, Version="1" * 65), dict(good, Implementation=None),
                dict(good, Features=[1]), dict(good, Compression=None), dict(good, Version="a\nb")):
        transport = Transport({"/plugins/transfers": OURS, "/transfers/capabilities": bad})
        assert capabilities.ask(transport, PEER, log_warning=warnings.append) is None, bad
    assert len(warnings) == 9


def test_the_server_identifier_tells_a_transfer_to_itself():
    mine = capabilities.local_capabilities("0.3.0", "run-1")
    assert mine["Server"] == "run-1"
    caps = capabilities.parse_capabilities(mine)
    assert caps.server == "run-1" and capabilities.from_state(caps.to_json()) == caps
    assert capabilities.same_server(caps, "run-1")
    assert not capabilities.same_server(caps, "run-2")  # another process: another node of a cluster, say
    assert not capabilities.same_server(caps, None) and not capabilities.same_server(caps, "")
    assert not capabilities.same_server(None, "run-1")  # a C++ peer
    older = capabilities.parse_capabilities(capabilities.local_capabilities("0.2.0"))  # without "Server"
    assert "Server" not in older.to_json() and not capabilities.same_server(older, "run-1")
    for bad in (1, "", "x" * 65, "a\nb", ["run-1"]):
        with pytest.raises(ValueError):
            capabilities.parse_capabilities(dict(mine, Server=bad))


def test_a_job_asks_its_peer_once_and_keeps_the_answer_unless_stopped_meanwhile():
    from job_context import FakeJobContext

    from transfers_plugin.jobs.engine import JobStopped
    from transfers_plugin.jobs.pull import PullJobType

    good = capabilities.local_capabilities("0.3.0", "run-1")
    transport = Transport({"/plugins/transfers": OURS, "/transfers/capabilities": good})
    ctx = FakeJobContext()
    first = capabilities.of_job(ctx, transport, PEER, lambda m: None, 1.0)
    assert first.server == "run-1" and ctx.resume_state["PeerCapabilities"] == good
    assert capabilities.of_job(ctx, transport, PEER, lambda m: None, 1.0) == first
    assert len(transport.calls) == 2  # asked once: the second answer is the kept one

    class Stopped(FakeJobContext):
        def check(self):
            raise JobStopped("Paused")

    stopped = Stopped()
    with pytest.raises(JobStopped):
        capabilities.of_job(stopped, transport, PEER, lambda m: None, 1.0)
    assert "PeerCapabilities" not in stopped.resume_state  # asked again when the job resumes

    # A pull needing them for its compression, the check of a pull from itself and its metadata: one question.
    transport = Transport({"/plugins/transfers": OURS, "/transfers/capabilities": good})
    job = PullJobType(parse_configuration({}), lambda: {"p": PEER}, transport, None, "/nonexistent",
                      server_id="run-2")
    ctx = FakeJobContext()
    query = TransferQuery.from_json({"Resources": [{"Level": "Study", "ID": "x"}], "Peer": "p",
                                     "Compression": "auto"})
    assert job.wire_query(ctx, query, PEER).compression == "zstd-shuffle"
    assert not job.from_itself(ctx, PEER)
    assert job.peer_capabilities(ctx, PEER) == first
    assert len(transport.calls) == 2


def test_the_answers_are_asked_with_a_small_bound_and_cached_per_peer():
    sizes = []

    class Recording(Transport):
        def call(self, peer, method, uri, **kwargs):
            sizes.append(kwargs.get("max_bytes"))
            return super().call(peer, method, uri, **kwargs)

    transport = Recording({"/plugins/transfers": OURS,
                           "/transfers/capabilities": capabilities.local_capabilities("1")})
    cache = capabilities.PeerCapabilities(transport)
    assert cache.of(PEER) is cache.of(PEER)
    assert cache.of(PeerConfig("q", "http://q/")) is not None
    assert len(transport.calls) == 4 and set(sizes) == {capabilities.MAX_ANSWER_BYTES}


def test_a_refund_pays_back_a_debt_and_a_pull_under_a_cap_plans_small_buckets():
    clock = Clock()
    limiter = RateLimiter(1000, burst=500, clock=clock)
    assert limiter.reserve(1500) == pytest.approx(1.0)  # a 1500-byte bucket reserved
    limiter.refund(1000)  # its gzip answer was 500 bytes
    assert limiter.reserve(0) == 0
    limiter.refund(10_000)
    assert limiter.reserve(501) == pytest.approx(0.001)  # a refund never fills the bucket beyond its depth
    limiter.refund(-1000)  # 1000 bytes more than reserved
    assert limiter.reserve(0) == pytest.approx(1.001)
    assert capped_bucket_kb(4096, 0) == 4096 and capped_bucket_kb(4096, 2000) == 500
    assert capped_bucket_kb(4096, 100) == 64 and capped_bucket_kb(256, 100_000) == 256
