"""The application: validated configuration, domain objects and routes, built from an Orthanc boundary.

``start(api)`` is what ``plugin.py`` calls with the real boundary (:mod:`orthanc_api`); tests may call it
with a fake one. Nothing here imports ``orthanc``.
"""

import dataclasses
import sys
import threading
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional

from . import PLUGIN_NAME, __version__
from .capabilities import (
    BANDWIDTH_CAP,
    CAPABILITIES_URI,
    METADATA,
    PROGRESSIVE_COMMIT,
    SKIP_EXISTING,
    PeerCapabilities,
    choose_compression,
    local_capabilities,
    needs_peer,
)
from .config import (
    ConfigError,
    TransfersConfig,
    commit_threads_advice,
    merge_registered_peers,
    parse_configuration,
    releases_gil,
)
from .download_area import DownloadArea
from .errors import NetworkProtocol, NotFound, TransfersError, Unavailable, http_status_of
from .holdings import held
from .jobs.engine import JobEngine
from .jobs.model import SUCCESS, JobRecord
from .jobs.pull import PullJobType
from .jobs.push import PushJobType
from .jobs.remote import RemotePullJobType, follow_parameters
from .jobs.routes import CoreJobMethods, build_job_routes
from .jobs.store import GlobalPropertyJobStore
from .journal import CommitJournal
from .metadata import MetadataStore
from .metrics import PULL_SENT_BYTES, RETRIES, Metrics, Publisher, jobs_by_type_and_state
from .peers import has_transfers_plugin, probe_peers
from .protocol import PEER_ID, UUID, TransferQuery, dumps_compact
from .receiver import FOLDER_PREFIX, PushReceiver
from .routes import Router, build_push_routes, build_source_routes, build_transfer_routes
from .source import Source
from .transport import PeerTransport, transfer_headers

METRICS_PERIOD = 1.0  # seconds between two publications of the metrics' changed values
EXPLORER_SCRIPT = Path(__file__).resolve().parent / "explorer" / "transfers.js"
DESCRIPTION = ("Accelerates transfers between Orthanc peers (Python implementation, wire-compatible with "
               "the C++ Transfers accelerator plugin)")


class Application:
    def __init__(self, api: Any, config: TransfersConfig):
        self.api = api
        self.config = config
        self.run_id = str(uuid.uuid4())  # this start of the plugin (the commit journal's owner)
        # What lookups answer and pull-mode sends give: by default this start's own (as the C++ plugin's);
        # Transfers.Originator makes the nodes of a cluster answer as one server.
        self.originator = config.originator or self.run_id
        self.metrics = Metrics()
        self.metadata = MetadataStore(api, api.log_warning)
        self.source = Source(api, config.cache_size_bytes, config.threads)
        self.transport = PeerTransport(config)
        self.transport.on_retry = lambda: self.metrics.add(RETRIES)
        self.download_root = Path(config.download_area).absolute()
        self.pull_job = PullJobType(config, self.peers, self.transport, api, self.download_root,
                                    api.log_info, api.log_warning, self.metrics, self.metadata, self.run_id)
        store = GlobalPropertyJobStore(api.get_global_property, api.set_global_property) if config.save_jobs else None
        self.push_job = PushJobType(config, self.peers, self.transport, self.source, api.log_info, api.log_warning,
                                    self.metrics, self.metadata, self.run_id)
        self.remote_job = RemotePullJobType(config, self.peers, self.transport, api.log_info, api.log_warning)
        self.engine = JobEngine({job.name: job for job in (self.pull_job, self.push_job, self.remote_job)}, store,
                                config.concurrent_jobs,
                                config.jobs_history_size, api.log_info, api.log_error, log_warning=api.log_warning)
        self.router = Router(api.log_error, api.log_info)
        build_source_routes(self.router, self)
        build_transfer_routes(self.router, self)
        build_job_routes(self.router, self.engine, api, CoreJobMethods.of(api.orthanc_version_at_least))
        self._stopping = threading.Event()
        self.receiver: Optional[PushReceiver] = None
        if config.max_push_transactions > 0:
            self.receiver = PushReceiver(config.max_push_transactions, self.download_root, api,
                                         config.commit_threads_count, config.push_transaction_timeout,
                                         api.log_warning,
                                         journal=CommitJournal(api.get_global_property, api.set_global_property,
                                                               owner=self.run_id),
                                         metadata_store=self.metadata)
            build_push_routes(self.router, self.receiver, config.limits)
        self.metrics.source(self.cache_metrics)
        self.metrics.source(lambda: jobs_by_type_and_state(self.engine.types_and_states()))
        if self.receiver is not None:
            self.metrics.source(self.receiver.metrics)

    # -- what the routes need ------------------------------------------------------------------------

    def cache_metrics(self) -> Dict[str, float]:
        cache = self.source.cache
        return {"orthanc_transfers_used_cache_size": cache.used_bytes,
                "orthanc_transfers_cache_hit_count": cache.hits, "orthanc_transfers_cache_miss_count": cache.misses}

    def served_chunks(self, n_bytes: int) -> None:
        """A chunks answer of ``n_bytes`` (as encoded) served to a puller."""
        self.metrics.add(PULL_SENT_BYTES, n_bytes)

    def codec_for(self, name: str):
        return self.config.codec(name)

    def peers(self):
        return merge_registered_peers(self.config, self.api.registered_peers())

    def probe_peers(self) -> Dict[str, str]:
        def probe(peer, timeout):
            answer = self.transport.request(peer, "GET", "/plugins", timeout=timeout)
            return has_transfers_plugin(answer.status, answer.content)

        return probe_peers(self.peers(), float(self.config.peer_connectivity_timeout), probe,
                           self.api.log_warning)

    def core_plugins(self) -> List[str]:
        return self.api.core_plugins()

    def plugin_description(self) -> Dict[str, Any]:
        # "Capabilities" tells our peers (only) that they may ask GET /transfers/capabilities (capabilities.py).
        return {"ID": PLUGIN_NAME, "Version": __version__, "Description": DESCRIPTION,
                "ExtendsOrthancExplorer": True, "Capabilities": CAPABILITIES_URI}

    def capabilities(self) -> Dict[str, Any]:
        return local_capabilities(__version__, self.run_id)

    def holds(self, instances, within=()) -> List[str]:
        return held(self.api, instances, within)

    def _peer(self, name: str):
        peer = self.peers().get(name)
        if peer is None:
            raise NotFound(f"Unknown peer {name!r}: it is not in OrthancPeers")
        return peer

    @staticmethod
    def _with_transfer_id(query: TransferQuery) -> TransferQuery:
        if query.sender_transfer_id is not None:
            return query
        return dataclasses.replace(query, sender_transfer_id=str(uuid.uuid4()))

    def _with_progressive(self, query: TransferQuery) -> TransferQuery:
        """``ProgressiveCommit`` decided when the job is submitted (the request's, else the configuration's), so
        that the job keeps it whatever the configuration says when it resumes."""
        if query.progressive_commit is not None:
            return query
        return dataclasses.replace(query, progressive_commit=self.config.progressive_commit)

    def submit_pull(self, query: TransferQuery):
        self._peer(query.peer)
        query = self._with_progressive(self._with_transfer_id(query))
        return self.engine.submit(self.pull_job.name, query.to_json(), query.priority)

    def pull(self, query: TransferQuery, synchronous: Optional[bool] = None) -> Dict[str, Any]:
        """``/transfers/pull``: a pull job; with ``synchronous``, the answer comes at its end (its outcome)."""
        job = self.submit_pull(query)
        return self.outcome(job) if synchronous else {"ID": job.id, "Path": f"/jobs/{job.id}"}

    def outcome(self, job: JobRecord) -> Dict[str, Any]:
        """Waits for the job's end (``"Synchronous": true``, as Orthanc's ``/peers/{id}/store``): its Content
        on success; on failure an error answer with the job's error code, description and details."""
        final = self.engine.wait_finished(job)
        if final is None:
            raise Unavailable(f"Orthanc is stopping before job {job.id} ended: it goes on at the next start "
                              f"(/jobs/{job.id})")
        if final["State"] == SUCCESS:
            return final["Content"]
        code = final["ErrorCode"]
        raise TransfersError(final["ErrorDescription"], status=http_status_of(code), orthanc_code=code,
                             details=final["ErrorDetails"] or None)

    def send(self, query: TransferQuery, synchronous: Optional[bool] = None) -> Dict[str, Any]:
        """``/transfers/send``: a push job, or, to a peer with RemoteSelf, a pull asked of that peer. Without
        ``synchronous`` (None), the C++ plugin's answers; with it, Orthanc's convention: false answers the job
        at once ({ID, Path}; in pull mode a local RemotePullTransfer job that follows the remote one, and the
        answer keeps Peer, RemoteJob and URL), true answers the transfer's outcome at its end."""
        peer = self._peer(query.peer)
        query = self._with_transfer_id(query)
        if peer.remote_self is None:
            query = self._with_progressive(query)
            job = self.engine.submit(self.push_job.name, query.to_json(), query.priority)
            if synchronous:
                return self.outcome(job)
            return {"ID": job.id, "Path": f"/jobs/{job.id}"}
        body = {"Resources": [r.to_json() for r in query.resources], "Compression": self.wire_compression(query, peer),
                "Originator": self.originator, "Peer": peer.remote_self}  # no Priority: the peer sets it (as C++)
        body.update(self.forwarded_options(query, peer))
        answer = self.transport.call(peer, "POST", "/transfers/pull", body=dumps_compact(body), expect_json=True,
                                     headers=transfer_headers(query.sender_transfer_id, "application/json"))
        remote = answer.document
        job_id = remote.get("ID") if isinstance(remote, dict) else None
        if not (isinstance(job_id, str) and PEER_ID.fullmatch(job_id)
                and remote.get("Path") in (f"/jobs/{job_id}", f"//jobs/{job_id}")):
            raise NetworkProtocol(f"Peer {peer.name!r} answered /transfers/pull without a job ID and its Path "
                                  f"(/jobs/<ID>)")
        sent = {"Peer": peer.name, "RemoteJob": job_id, "URL": peer.url.rstrip("/") + f"/jobs/{job_id}"}
        if synchronous is None:
            return sent
        follow = self.engine.submit(self.remote_job.name,
                                    follow_parameters(peer.name, job_id, sent["URL"], query.to_json()), query.priority)
        if synchronous:
            return self.outcome(follow)
        return {**sent, "ID": follow.id, "Path": f"/jobs/{follow.id}"}

    def wire_compression(self, query: TransferQuery, peer) -> str:
        """The compression a send in pull mode asks the peer to pull in: "auto" and zstd-shuffle resolved with
        the peer's capabilities (a C++ peer, which knows neither, gets gzip)."""
        if not needs_peer(query.compression):
            return query.compression
        caps = PeerCapabilities(self.transport, self.api.log_warning,
                                float(self.config.peer_connectivity_timeout)).of(peer)
        return choose_compression(query.compression, caps, peer.name, self.api.log_warning)

    def forwarded_options(self, query: TransferQuery, peer) -> Dict[str, Any]:
        """What a send in pull mode passes on of our own options: only to our peers (a C++ peer is not even
        asked for its capabilities unless the request has such an option), each if the peer has its feature."""
        wanted = {}
        if not query.skip_existing:
            wanted[SKIP_EXISTING] = ("SkipExisting", False)
        if query.max_bandwidth_kbs is not None:
            wanted[BANDWIDTH_CAP] = ("MaxBandwidthKBs", query.max_bandwidth_kbs)
        if query.metadata:
            wanted[METADATA] = ("Metadata", True)
        progressive = query.progressive_commit if query.progressive_commit is not None \
            else self.config.progressive_commit
        if progressive or query.progressive_commit is not None:  # else the peer's own default
            wanted[PROGRESSIVE_COMMIT] = ("ProgressiveCommit", progressive)
        if not wanted:
            return {}
        caps = PeerCapabilities(self.transport, self.api.log_warning,
                                float(self.config.peer_connectivity_timeout)).of(peer)
        out = {}
        for feature, (key, value) in wanted.items():
            if caps is not None and caps.supports(feature):
                out[key] = value
            else:
                self.api.log_warning(f"Transfers: peer {peer.name!r} does not take {key!r} (a C++ peer, or an "
                                     f"older one): the transfer goes without it")
        return out

    # -- Orthanc events ------------------------------------------------------------------------------

    def on_started(self) -> None:
        if self.receiver is not None:
            try:
                self.receiver.recover()
            except TransfersError as e:
                self.api.log_error(f"Transfers: rolling back interrupted push commits failed: {e}")
        self.engine.start()
        self.sweep_download_root()
        if self.receiver is not None:
            threading.Thread(target=self._expire_push_transactions, name="transfers-push-expiry", daemon=True).start()
        try:
            self.advise_commit_threads()
        except Exception as e:  # noqa: BLE001 - only advice: the rest starts anyway
            self.api.log_warning(f"Transfers: could not tell what CommitThreadsCount does on this Python plugin: {e}")
        set_metric = getattr(self.api, "set_metric", None)
        if set_metric is not None:  # last: its first publication says the start is over
            Publisher(self.metrics, set_metric, self._stopping, METRICS_PERIOD, self.api.log_warning).start()

    def advise_commit_threads(self) -> None:
        """Logs what ``CommitThreadsCount`` can do on this Python plugin (see ``config.commit_threads_advice``)."""
        version = self.api.python_plugin_version()
        gil_released = releases_gil(self.config.python_allow_threads, version)
        advice = commit_threads_advice(self.config.commit_threads_count, gil_released, version)
        if advice is not None:
            level, message = advice
            (self.api.log_warning if level == "warning" else self.api.log_info)(f"Transfers: {message}")

    def _expire_push_transactions(self) -> None:
        while not self._stopping.wait(30.0):
            self.receiver.expire_idle()

    def sweep_download_root(self) -> None:
        """Removes the folders of the download area that nothing will use: partial downloads of jobs no
        longer known (dropped from the history) and the folders of push transactions of earlier runs (killed
        with Orthanc; transactions do not survive a restart), whatever their age. Only folders named as
        this plugin names them are touched; those of this run's jobs and transactions stay. A node of a
        cluster (``DatabaseServerIdentifier``) sweeps its own folder only: the other nodes' folders, and what
        an older version left directly in the shared root, are never touched (the latter is logged)."""
        if self.config.node_id:
            self._report_old_layout()
        try:
            children = list(self.download_root.iterdir()) if self.download_root.is_dir() else []
        except OSError as e:
            self.api.log_warning(f"Transfers: cannot list the download area {self.download_root}: {e.strerror}")
            return
        for child in children:
            name = child.name
            ours = UUID.fullmatch(name[len(FOLDER_PREFIX):] if name.startswith(FOLDER_PREFIX) else name)
            if not ours or not child.is_dir() or self.engine.owns(name):
                continue
            if self.receiver is not None and self.receiver.owns(name):
                continue
            try:
                DownloadArea(child, ()).remove()
                self.api.log_info(f"Transfers: removed the orphan download area {child}")
            except TransfersError as e:
                self.api.log_warning(f"Transfers: {e}")

    def _report_old_layout(self) -> None:
        parent = self.download_root.parent
        try:
            old = [c.name for c in parent.iterdir() if c.is_dir() and UUID.fullmatch(
                c.name[len(FOLDER_PREFIX):] if c.name.startswith(FOLDER_PREFIX) else c.name)]
        except OSError:
            return
        if old:
            self.api.log_warning(f"Transfers: {len(old)} folder(s) of an earlier layout in {parent} (a node that "
                                 f"ran without DatabaseServerIdentifier) are left alone: this node keeps its "
                                 f"files in {self.download_root}; remove them once no such node runs")

    def on_stopped(self) -> None:
        """The plugin is finalized: Orthanc's database is already closed to plugins, so the jobs are not
        saved now (their state was saved as they went, at most a second ago); they go on at the next start."""
        self._stopping.set()
        self.engine.stop(save=False)
        if self.receiver is not None:
            self.receiver.close_all()


def start(api: Any) -> Optional[Application]:
    """Validates the configuration and registers everything; on a bad configuration, registers nothing."""
    try:
        config = parse_configuration(api.configuration())
    except ConfigError as e:
        for problem in e.problems:
            api.log_error(f"Transfers: invalid configuration: {problem}")
        api.log_error("Transfers: the plugin is disabled because of the configuration errors above")
        return None
    for warning in config.warnings:
        api.log_warning(f"Transfers: {warning}")
    app = Application(api, config)
    for route in app.router.routes:
        api.register_route(route.pattern, lambda request, route=route: app.router.handle(route, request))
    api.register_lifecycle(app.on_started, app.on_stopped)
    api.extend_explorer(EXPLORER_SCRIPT.read_text(encoding="utf-8"))
    python = f"{sys.version_info[0]}.{sys.version_info[1]}"
    api.log_warning(f"Transfers accelerator {__version__} (Python {python}) started: Threads {config.threads}, "
                    f"BucketSize {config.bucket_size_kb} KB, CacheSize {config.cache_size_mb} MB, "
                    f"{len(config.peers)} peer(s) configured")
    return app
