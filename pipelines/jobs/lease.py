"""One driver per output: a lease object ``OUTPUT/_lease.json`` that a driver takes before it looks at
what to do and holds (renewed by a heartbeat thread) until it has written its summary.

    {"host", "pid", "run_id", "acquired_at", "expires_at" (unix seconds), "expires" (ISO, for people)}

Taking it is create-if-absent:
- local folders: the record is written to a temporary file and hard-linked to ``_lease.json``
  (``link`` fails if the name exists: create-exclusive with the content already whole);
- S3: ``PUT`` with ``If-None-Match: *`` (AWS since 2024, recent MinIO and SeaweedFS, moto 5); renewals
  and take-overs are ``PUT`` with ``If-Match: <ETag>``, so of two drivers racing, one wins. A store that
  rejects the conditional headers as not implemented gets the weaker fallback: write, wait
  ``SETTLE_S``, read back and compare the run id (two drivers racing within that window can both win).

A lease whose owner is dead is taken over: when it has expired (its driver stopped renewing), or at
once when it was taken on this host by a process that no longer exists. The second driver either
refuses at once (``wait=0``, the default: :class:`LeaseHeld`, a one-line message naming the owner and
the expiry) or waits up to ``wait`` seconds for the lease to be released or to expire.

Workers check the lease before each shard's write (:func:`lease_owner`), so a driver that lost its
lease (e.g. stalled longer than the TTL and taken over) cannot have its actors write over the new
owner's shards.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone

from pipelines.io.storage import Location, StorageError

log = logging.getLogger(__name__)

LEASE_NAME = "_lease.json"
SETTLE_S = 1.0  # fallback for stores without conditional writes: wait before reading our write back


class LeaseHeld(ValueError):
    """Another live driver holds the output's lease."""


class LeaseLost(RuntimeError):
    """This driver's lease was taken over (it stopped renewing for longer than the TTL)."""


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stale(record: dict | None, now: float) -> bool:
    if record is None:  # unreadable: a crash between create and write cannot happen locally (link), but be safe
        return True
    if record.get("expires_at", 0) < now:
        return True
    return record.get("host") == socket.gethostname() and not _pid_alive(int(record.get("pid", 0)))


def describe(record: dict) -> str:
    return (f"host {record.get('host')}, pid {record.get('pid')}, run {record.get('run_id')}, "
            f"until {record.get('expires')}")


# ---- the two stores ------------------------------------------------------------------------------
class _LocalStore:
    def __init__(self, loc: Location):
        self.path = loc.path

    def read(self) -> tuple[dict | None, str | None]:
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None, None
        try:
            return json.loads(data), data.decode()
        except ValueError:
            return None, data.decode(errors="replace")

    def create(self, text: str) -> str | None:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        tmp = f"{self.path}.{uuid.uuid4().hex[:8]}.new"
        with open(tmp, "w") as f:
            f.write(text)
        try:
            os.link(tmp, self.path)  # fails if the name exists
            return text
        except FileExistsError:
            return None
        finally:
            os.remove(tmp)

    def replace(self, text: str, tag: str) -> str | None:
        """Write ``text`` if the lease still reads ``tag`` (our last write, or the stale record)."""
        _, now = self.read()
        if now != tag:
            return None
        tmp = f"{self.path}.{uuid.uuid4().hex[:8]}.new"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, self.path)
        return text

    def takeover(self, text: str, tag: str) -> str | None:
        """Replace a stale lease atomically: move it to a private name, check that it is the one judged
        stale, then create ours (a racing taker finds the name gone, or ours)."""
        mine = f"{self.path}.{uuid.uuid4().hex[:8]}.stale"
        try:
            os.rename(self.path, mine)
        except FileNotFoundError:
            return None
        with open(mine) as f:
            moved = f.read()
        if moved != tag:  # a live lease taken meanwhile: put it back
            try:
                os.link(mine, self.path)
            except FileExistsError:
                pass
            os.remove(mine)
            return None
        os.remove(mine)
        return self.create(text)

    def delete(self, tag: str) -> None:
        if self.read()[1] == tag:
            os.remove(self.path)


class _S3Store:
    def __init__(self, loc: Location):
        import boto3

        o = loc.options
        kwargs = {"endpoint_url": o.endpoint_url, "region_name": o.region or "us-east-1"}
        if o.credentials is not None:
            kwargs.update(aws_access_key_id=o.credentials.access_key, aws_secret_access_key=o.credentials.secret_key,
                          aws_session_token=o.credentials.session_token)
        # a new session, not boto3's process-wide default one: that one caches the credential chain of
        # whatever environment first built it (a profile, env keys), and a driver's chain may change
        self.client = boto3.session.Session().client("s3", **kwargs)
        self.bucket, _, self.key = loc.path.partition("/")
        self.conditional = True

    @staticmethod
    def _code(e) -> str:
        return str(getattr(e, "response", {}).get("Error", {}).get("Code", ""))

    def read(self) -> tuple[dict | None, str | None]:
        try:
            r = self.client.get_object(Bucket=self.bucket, Key=self.key)
        except self.client.exceptions.NoSuchKey:
            return None, None
        body = r["Body"].read()
        try:
            return json.loads(body), r["ETag"]
        except ValueError:
            return None, r["ETag"]

    def _put(self, text: str, **cond) -> str | None:
        from botocore.exceptions import ClientError

        try:
            return self.client.put_object(Bucket=self.bucket, Key=self.key, Body=text.encode(), **cond)["ETag"]
        except ClientError as e:
            if self._code(e) in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409", "NoSuchKey", "404"):
                return None
            if self._code(e) in ("NotImplemented", "501") and cond:
                log.warning("s3://%s/%s: the store has no conditional writes; the lease falls back to "
                            "write-then-read-back (two drivers racing within %.0f s can both start)",
                            self.bucket, self.key, SETTLE_S)
                self.conditional = False
                return self._fallback(text, cond)
            raise

    def _fallback(self, text: str, cond: dict) -> str | None:
        record, etag = self.read()
        if cond.get("IfNoneMatch") and etag is not None:
            return None
        if cond.get("IfMatch") and etag != cond["IfMatch"]:
            return None
        self.client.put_object(Bucket=self.bucket, Key=self.key, Body=text.encode())
        time.sleep(SETTLE_S)
        record, etag = self.read()
        return etag if record is not None and record.get("run_id") == json.loads(text)["run_id"] else None

    def create(self, text: str) -> str | None:
        return self._put(text, IfNoneMatch="*") if self.conditional else self._fallback(text, {"IfNoneMatch": "*"})

    def replace(self, text: str, tag: str) -> str | None:
        return self._put(text, IfMatch=tag) if self.conditional else self._fallback(text, {"IfMatch": tag})

    takeover = replace  # If-Match on the stale record's ETag: of two takers, one wins

    def delete(self, tag: str) -> None:
        if self.read()[1] == tag:
            self.client.delete_object(Bucket=self.bucket, Key=self.key)


# ---- the lease -----------------------------------------------------------------------------------
def lease_owner(out: Location) -> str | None:
    """The run id holding ``out``'s lease (None: no lease); what a worker checks before it writes."""
    record = _store(out.child(LEASE_NAME)).read()[0]
    return record.get("run_id") if record else None


def _store(loc: Location):
    return _LocalStore(loc) if loc.scheme == "file" else _S3Store(loc)


@dataclass
class Lease:
    out: Location  # the job's output folder / prefix
    ttl: float = 60.0  # seconds a lease lives without renewal (renewed every ttl/3)
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    _tag: str | None = field(default=None, repr=False)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)
    lost: bool = False

    def __post_init__(self):
        if self.ttl <= 0:
            raise ValueError(f"lease TTL must be > 0 seconds, got {self.ttl}")
        self.store = _store(self.out.child(LEASE_NAME))

    def _record(self) -> str:
        now = time.time()
        return json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "run_id": self.run_id,
                           "acquired_at": _iso(now), "expires_at": now + self.ttl, "expires": _iso(now + self.ttl)},
                          indent=1)

    def acquire(self, wait: float = 0.0, poll: float = 1.0) -> "Lease":
        """Take the lease, waiting up to ``wait`` seconds for a live owner to finish; then heartbeat."""
        deadline = time.monotonic() + wait
        try:
            while True:
                self._tag = self.store.create(self._record())
                if self._tag is not None:
                    break
                record, tag = self.store.read()
                if tag is not None and _stale(record, time.time()):
                    log.warning("%s: taking over the lease of a dead driver (%s)", self.out.uri,
                                describe(record or {}))
                    self._tag = self.store.takeover(self._record(), tag)
                    if self._tag is not None:
                        break
                    continue  # someone else took it first: look again
                if tag is not None and time.monotonic() >= deadline:
                    raise LeaseHeld(f"{self.out.uri} is being written by another driver ({describe(record or {})}); "
                                    f"wait for it, or pass --wait-lease SECONDS")
                time.sleep(poll)
        except (LeaseHeld, StorageError):
            raise
        except Exception as e:  # noqa: BLE001 -- OSError locally, botocore errors on S3 (no bucket, access denied)
            code = getattr(e, "response", {}).get("Error", {}).get("Code") or type(e).__name__
            raise StorageError(f"{self.out.child(LEASE_NAME).uri}: cannot take the lease ({code})") from None
        self._thread = threading.Thread(target=self._heartbeat, name="promptmine-lease", daemon=True)
        self._thread.start()
        return self

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                tag = self.store.replace(self._record(), self._tag)
            except Exception as e:  # noqa: BLE001 -- a failed renewal is retried at the next beat
                log.warning("%s: lease renewal failed (%s); retrying", self.out.uri, type(e).__name__)
                continue
            if tag is None:
                self.lost = True
                log.error("%s: this driver's lease was taken over by another driver; its workers stop writing",
                          self.out.uri)
                return
            self._tag = tag

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._tag is not None and not self.lost:
            try:
                self.store.delete(self._tag)
            except Exception as e:  # noqa: BLE001 -- it expires by itself
                log.warning("%s: could not release the lease (%s); it expires in %.0f s", self.out.uri,
                            type(e).__name__, self.ttl)
        self._tag = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()
