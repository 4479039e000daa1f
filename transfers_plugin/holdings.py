"""Which instances of a transfer the target already holds, byte for byte: same Orthanc ID, size and MD5.

The puller asks its own store; the receiver of a push answers ``POST /transfers/holds`` for our senders
(see :mod:`capabilities`). An instance counts as held only when Orthanc's attachment record has its size and
an MD5 (``StoreMD5ForAttachments``), both equal to the source's: anything else is transferred.
"""

from typing import Any, Collection, Dict, Iterable, List, Mapping, NamedTuple, Set

from .errors import BadRequest, NetworkProtocol, NotFound
from .metrics import SKIPPED_INSTANCES
from .protocol import InstanceInfo, check_count, dumps_compact, round_mb

HOLDS_URI = "/transfers/holds"
HOLDS_BATCH = 1000  # instances asked per request: about 100 KB of body, and as many attachment reads


def held(store: Any, instances: Iterable[InstanceInfo]) -> List[str]:
    """The IDs of ``instances`` that ``store`` (an ``OrthancApi``) holds with the same size and MD5."""
    out: List[str] = []
    for info in instances:
        try:
            size, md5 = store.attachment_info(info.id)
        except NotFound:
            continue
        if md5 is not None and size == info.size and md5.lower() == info.md5.lower():
            out.append(info.id)
    return out


class Partition(NamedTuple):
    """The instances of a transfer split by what the target holds: those to move, those left out."""
    transfer: List[InstanceInfo]
    skipped: List[InstanceInfo]

    def resume_state(self) -> Dict[str, int]:
        """What a job keeps of the skipped instances in its resume state (see :func:`skipped_content`)."""
        return {"SkippedInstances": len(self.skipped), "SkippedBytes": sum(i.size for i in self.skipped)}

    def count(self, metrics: Any) -> None:
        """The skipped instances in the metrics: once per transfer (a resumed run skips nothing anew)."""
        metrics.add(SKIPPED_INSTANCES, len(self.skipped))


def partition(instances: Iterable[InstanceInfo], held_ids: Collection[str]) -> Partition:
    """``instances`` split into those to transfer and those the target holds (``held_ids``), each in its
    order; one pass, whatever the count."""
    transfer: List[InstanceInfo] = []
    skipped: List[InstanceInfo] = []
    held_set = held_ids if isinstance(held_ids, (set, frozenset)) else set(held_ids)
    for info in instances:
        (skipped if info.id in held_set else transfer).append(info)
    return Partition(transfer, skipped)


def skipped_content(state: Mapping[str, Any]) -> Dict[str, int]:
    """The job's Content fields of the skipped instances, from its resume state (see
    :meth:`Partition.resume_state`; a state without them skipped nothing)."""
    return {"SkippedInstances": int(state.get("SkippedInstances", 0)),
            "SkippedSizeMB": round_mb(int(state.get("SkippedBytes", 0)))}


def holds_answer(ids: List[str]) -> dict:
    return {"Held": ids}


def parse_holds_request(document: Any, limits: Any) -> List[InstanceInfo]:
    """The body of ``POST /transfers/holds``: ``{"Instances": [{"ID", "Size", "MD5"}...]}``, at most
    ``HOLDS_BATCH`` instances (400 otherwise, 413 beyond the transfer limits)."""
    if not isinstance(document, dict) or not isinstance(document.get("Instances"), list):
        raise BadRequest("The holds query must be a JSON object with an Instances array")
    items = document["Instances"]
    check_count(len(items), "instances in the holds query", limits)
    if len(items) > HOLDS_BATCH:
        raise BadRequest(f"At most {HOLDS_BATCH} instances may be asked at once, not {len(items)}")
    return [InstanceInfo.from_json(x, f"Instances[{n}]") for n, x in enumerate(items)]


def ask_peer(transport: Any, peer: Any, instances: List[InstanceInfo], headers: Any = None,
             stop_event: Any = None) -> Set[str]:
    """The IDs of ``instances`` that our peer (it has the ``skip-existing`` feature) holds, asked in batches.
    Its answer is checked: a JSON object whose ``Held`` lists only IDs that were asked."""
    found: Set[str] = set()
    for start in range(0, len(instances), HOLDS_BATCH):
        batch = instances[start:start + HOLDS_BATCH]
        body = dumps_compact({"Instances": [i.to_json() for i in batch]})
        answer = transport.call(peer, "POST", HOLDS_URI, body=body, headers=headers, expect_json=True,
                                stop_event=stop_event, abandon_on_stop=stop_event is not None,
                                max_bytes=64 * (len(batch) + 16))
        asked = {i.id for i in batch}
        document = answer.document
        ids = document.get("Held") if isinstance(document, dict) else None
        if not isinstance(ids, list) or not all(isinstance(i, str) and i in asked for i in ids):
            raise NetworkProtocol(f"Peer {peer.name!r} answered {HOLDS_URI} with something else than the IDs it "
                                  f"holds among those asked")
        found.update(ids)
    return found
