"""Which instances of a transfer the target already holds, byte for byte: same Orthanc ID, size and MD5.

The puller asks its own store; the receiver of a push answers ``POST /transfers/holds`` for our senders
(see :mod:`capabilities`). An instance counts as held only when Orthanc's attachment record has its size and
an MD5 (``StoreMD5ForAttachments``), both equal to the source's: anything else is transferred.

Asking costs one attachment read per instance (about 0.1 ms each, 1 s for 10,000 instances), mostly to learn
that a first transfer's instances are not there. So the resources the instances belong to come with them
(``within``: the transfer's ``Resources``, as the source resolved them): when the target holds none of them,
it holds none of their instances, since an Orthanc ID is a hash of the UIDs of the resource and of its
parents (an instance held here has its series, study and patient here), and one query per resource answers.
If a source lied about what belongs to what, an instance would only be transferred again.
"""

from typing import Any, Collection, Dict, Iterable, List, Mapping, NamedTuple, Sequence, Set, Tuple

from .errors import BadRequest, NetworkProtocol, NotFound
from .metrics import SKIPPED_INSTANCES
from .protocol import (
    LEVEL_INSTANCE,
    InstanceInfo,
    Resource,
    check_count,
    check_orthanc_id,
    dumps_compact,
    parse_resources,
    round_mb,
)

HOLDS_URI = "/transfers/holds"
HOLDS_BATCH = 1000  # instances asked per request: about 100 KB of body, and as many attachment reads
MAX_WITHIN = 100  # resources checked first; with more, each instance is asked directly


def holds_none_of(store: Any, within: Sequence[Resource], instances: Sequence[InstanceInfo]) -> bool:
    """True when ``store`` holds none of the resources ``within`` (Patient, Study or Series level), so none
    of their ``instances``; False when that is not known for fewer queries than asking each instance."""
    if not within or len(within) > MAX_WITHIN or len(within) >= len(instances):
        return False
    if any(r.level == LEVEL_INSTANCE for r in within):
        return False
    return not any(store.resource_exists(r.level, r.id) for r in within)


def held(store: Any, instances: Iterable[InstanceInfo], within: Sequence[Resource] = ()) -> List[str]:
    """The IDs of ``instances`` that ``store`` (an ``OrthancApi``) holds with the same size and MD5;
    ``within``: the resources they belong to (see the module's description)."""
    instances = list(instances)
    if holds_none_of(store, within, instances):
        return []
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


def parse_holds_request(document: Any, limits: Any) -> Tuple[List[InstanceInfo], List[Resource]]:
    """The body of ``POST /transfers/holds``: ``{"Instances": [{"ID", "Size", "MD5"}...]}``, at most
    ``HOLDS_BATCH`` instances (400 otherwise, 413 beyond the transfer limits), and, from our senders since
    the parents' shortcut, ``"Resources": [{"Level", "ID"}...]`` (at most ``MAX_WITHIN``), the resources
    they belong to. Returns both (no resources from an older sender)."""
    if not isinstance(document, dict) or not isinstance(document.get("Instances"), list):
        raise BadRequest("The holds query must be a JSON object with an Instances array")
    items = document["Instances"]
    check_count(len(items), "instances in the holds query", limits)
    if len(items) > HOLDS_BATCH:
        raise BadRequest(f"At most {HOLDS_BATCH} instances may be asked at once, not {len(items)}")
    instances = [InstanceInfo.from_json(x, f"Instances[{n}]") for n, x in enumerate(items)]
    within: List[Resource] = []
    if "Resources" in document:
        if isinstance(document["Resources"], list) and len(document["Resources"]) > MAX_WITHIN:
            raise BadRequest(f"At most {MAX_WITHIN} resources may come with a holds query")
        within = parse_resources(document["Resources"], limits)
        for n, r in enumerate(within):
            check_orthanc_id(r.id, f"Resources[{n}].ID")
    return instances, within


def ask_peer(transport: Any, peer: Any, instances: List[InstanceInfo], headers: Any = None,
             stop_event: Any = None, within: Sequence[Resource] = ()) -> Set[str]:
    """The IDs of ``instances`` that our peer (it has the ``skip-existing`` feature) holds, asked in batches,
    each with the resources ``within`` they belong to (up to ``MAX_WITHIN``; an older peer ignores them).
    Its answer is checked: a JSON object whose ``Held`` lists only IDs that were asked."""
    found: Set[str] = set()
    parents = [{"Level": r.level, "ID": r.id} for r in within] if len(within) <= MAX_WITHIN else []
    for start in range(0, len(instances), HOLDS_BATCH):
        batch = instances[start:start + HOLDS_BATCH]
        query: Dict[str, Any] = {"Instances": [i.to_json() for i in batch]}
        if parents:
            query["Resources"] = parents
        body = dumps_compact(query)
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
