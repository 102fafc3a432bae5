"""Which credentials a job's workers use (``--credentials auto|forward|worker``), and keeping forwarded
temporary credentials fresh.

- ``worker``: every process resolves its own AWS chain (instance or pod roles, the node's env/files);
  nothing secret leaves the driver. The default (``auto``) when ``--address`` joins a cluster, whose
  nodes have their own identity.
- ``forward``: the driver resolves its chain once and ships the keys in the workers' task and actor
  arguments (so they sit in Ray's object store; they are never logged: Credentials' repr is redacted).
  The default (``auto``) on a local Ray: the same machine and the same chain, but Ray's worker
  processes may not see the driver's environment. Temporary credentials (SSO, STS assume-role,
  ``credential_process``) carry an expiry: a small broker actor on the driver's node, started with the
  driver's non-secret AWS settings (profile, config files), re-resolves them there, and each read task
  and shard asks it for fresh ones when theirs expire within ``MARGIN_S``.
"""

from __future__ import annotations

import dataclasses
import os
import time

from pipelines.io.storage import StorageOptions

MODES = ("auto", "forward", "worker")
MARGIN_S = 600.0  # refresh forwarded credentials that expire within this many seconds
_SECRET_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")


def resolve_mode(choice: str, address: str | None) -> str:
    """``auto`` -> ``worker`` when joining a cluster (``--address``), else ``forward``."""
    if choice not in MODES:
        raise ValueError(f"--credentials must be one of {', '.join(MODES)}, got {choice!r}")
    if choice == "auto":
        return "worker" if address else "forward"
    return choice


def expiring(options: StorageOptions, margin: float = MARGIN_S) -> bool:
    c = options.credentials
    return c is not None and c.expires_at is not None and c.expires_at - time.time() < margin


class CredentialBroker:
    """Ray actor on the driver's node: resolves the driver's AWS chain again on request."""

    def __init__(self, endpoint_url: str | None):
        self.endpoint_url = endpoint_url

    def fresh(self) -> StorageOptions:
        return StorageOptions.from_env(self.endpoint_url, forward_credentials=True)


def start_broker(options: StorageOptions):
    """A broker when forwarded credentials expire (else None: nothing to refresh)."""
    if options.credentials is None or options.credentials.expires_at is None:
        return None
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    env = {k: v for k, v in os.environ.items() if k.startswith("AWS_") and k not in _SECRET_VARS}
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    actor = ray.remote(num_cpus=0, scheduling_strategy=here, runtime_env={"env_vars": env})(CredentialBroker)
    return actor.remote(options.endpoint_url)


def refreshed(options: StorageOptions, broker) -> StorageOptions:
    """``options`` with fresh credentials from the broker if theirs expire soon (else unchanged)."""
    if broker is None or not expiring(options):
        return options
    import ray

    fresh = ray.get(broker.fresh.remote())
    return dataclasses.replace(options, credentials=fresh.credentials)
