"""What the driver can tell about losing part of the Ray cluster in the middle of a job.

A worker node that dies under a shard's actor shows up in one of two ways:

- Ray Data raises one of Ray's system errors and the stream stops (``is_system_error``);
- or the shard's block errs after its task retries while the node's actor was unreachable, Ray Data
  drops it under ``DataContext.max_errored_blocks`` (logging "Ignoring this exception") and the stream
  ends without that shard.

A poison shard (its process dies on every attempt) ends the second way too, with the same
``ActorUnavailableError``, so the error cannot tell the two apart; the cluster's membership can.
``lost_nodes`` compares the nodes alive before a stream with Ray's view after it, waiting for Ray's
health check to declare a silent node dead (``RAY_health_check_*``: seconds, not minutes)."""

from __future__ import annotations

import time

# Ray's errors that say the cluster lost something (a node, an actor, an object), not that a shard is bad
SYSTEM_ERRORS = ("ActorUnavailableError", "ActorDiedError", "NodeDiedError", "ObjectLostError",
                 "OwnerDiedError", "WorkerCrashedError", "RaySystemError", "ObjectReconstructionFailedError")


def is_system_error(e: BaseException) -> bool:
    """True when ``e``, or an exception it wraps, is one of Ray's ``SYSTEM_ERRORS``."""
    seen = set()
    while e is not None and id(e) not in seen:  # Ray Data wraps the cause; look down the chain
        seen.add(id(e))
        if any(c.__name__ in SYSTEM_ERRORS for c in type(e).__mro__):
            return True
        e = e.__cause__ or e.__context__
    return False


def alive_nodes() -> set[str]:
    """The ids of the nodes Ray now counts alive."""
    import ray

    return {n["NodeID"] for n in ray.nodes() if n.get("Alive")}


def lost_nodes(before: set[str], wait: float, poll: float = 0.5) -> set[str]:
    """The nodes of ``before`` that Ray no longer counts alive, polling up to ``wait`` seconds for
    one to be declared dead (empty when none is by then). One node alone is never waited for: had the
    only node died, no actor would have been left to end the stream."""
    deadline = time.monotonic() + (wait if len(before) > 1 else 0.0)
    while True:
        gone = before - alive_nodes()
        if gone or time.monotonic() >= deadline:
            return gone
        time.sleep(poll)
