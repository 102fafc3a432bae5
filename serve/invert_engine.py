"""Continuous batching for ``POST /v1/invert``: one long-lived PEZ batch per request group.

Requests that can share a PEZ batch (the same ``(steps, prompt_len, ban, early_stop, method, fluency)``:
the group key) share one worker thread, which runs ``pez_core.invert_stream`` over a live
``TargetFeed`` with ``slots`` slots. A request joins its group's feed and awaits its own future; the
stream takes it into a free slot at the next step (a full batch queues it, first come first served),
and when a target stops its slot goes to the next queued one, so a short request never waits for a long
one to finish and the batch stays full. Each target carries its request's seed and keeps its own
optimiser state and step count, so a prompt is the one ``pez_core.invert`` gives that image alone.

* Results reach the event loop with ``loop.call_soon_threadsafe``; a request whose deadline passes (or
  whose caller goes away) cancels its target, which frees its slot before the next step.
* A worker whose feed stays empty for ``idle_s`` ends: the feed closes itself under its lock, so a
  request arriving at that moment gets ``FeedClosed`` and starts a new worker instead of being lost.
* ``slots`` may change at run time (``user_config``); a change applies to workers started after it.
* At most ``max_groups`` workers run at once (each is a PEZ batch holding its own activations): a request
  for a new group while that many are running waits for one to end (idle), or fails with
  :class:`GroupsBusy` at its deadline.
* A model error ends that worker and fails every request in it (the next request starts a new one).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter

from pez_core.feed import FeedClosed, TargetFeed
from pez_core.stream import invert_stream

log = logging.getLogger(__name__)

IDLE_EXIT_S = 5.0  # a worker with no request for this long ends (and frees its thread)
GIVE_UP_EARLY_S = 0.2  # a request waiting for a group stops this long before its deadline


class Expired(Exception):
    """The request's deadline passed before its prompt was ready."""


class GroupsBusy(Expired):
    """The request's deadline passed while every worker was busy with another group's settings."""

    def __init__(self, max_groups: int):
        super().__init__(max_groups)
        self.max_groups = max_groups


class _Job:
    """One request's future on its event loop, and the occupied slots when its target started."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop, self.future, self.batch_size = loop, loop.create_future(), 0

    def settle(self, value=None, error: BaseException | None = None) -> None:  # from the worker thread
        def done():
            if not self.future.done():
                self.future.set_exception(error) if error is not None else self.future.set_result(value)

        try:
            self.loop.call_soon_threadsafe(done)
        except RuntimeError:  # the loop is closed: nobody waits any more
            pass


class _Worker:
    """One group's stream, on its own thread."""

    def __init__(self, engine: InvertEngine, key: tuple, cfg, vocab):
        self.engine, self.key, self.cfg, self.vocab = engine, key, cfg, vocab
        self.slots = engine.slots
        self.feed = TargetFeed(idle_timeout=engine.idle_s)
        self.lock = threading.Lock()  # jobs; never held while waiting on the feed
        self.jobs: dict[int, _Job] = {}
        self.stream = None
        self.thread = threading.Thread(target=self._run, name=f"invert-group-{len(engine.workers)}", daemon=True)

    def put(self, target, job: _Job) -> int:
        with self.lock:
            index = self.feed.put(target)  # FeedClosed: this worker is ending
            self.jobs[index] = job
        return index

    def cancel(self, index: int) -> None:
        with self.lock:
            self.jobs.pop(index, None)
        self.feed.cancel(index)

    def _started(self, indices: list[int], occupied: int) -> None:
        with self.lock:
            for i in indices:
                if i in self.jobs:
                    self.jobs[i].batch_size = occupied
        self.engine._count(started=len(indices))

    def _run(self) -> None:
        try:
            self.stream = invert_stream(self.engine.clip, self.feed, self.cfg, slots=self.slots, vocab=self.vocab,
                                        on_start=self._started,
                                        on_step=lambda step, occupied: self.engine._count(occupied, self.slots))
            for index, result in self.stream:
                with self.lock:
                    job = self.jobs.pop(index, None)
                if job is not None:  # counted first: a caller reading the stats after its answer sees it
                    self.engine._count(answered=job.batch_size)
                    job.settle((result, job.batch_size))
        except Exception as e:  # a model failure fails this group's requests only; logged here, once
            log.exception("PEZ worker for %d slots failed", self.slots)
            self.feed.close()
            with self.lock:
                jobs, self.jobs = self.jobs, {}
            for job in jobs.values():
                job.settle(error=e)
        finally:
            self.engine._retire(self)


class InvertEngine:
    """The replica's PEZ workers, one per group key; ``await run(...)`` answers one request."""

    def __init__(self, clip, slots: int = 8, idle_s: float = IDLE_EXIT_S, max_groups: int = 4):
        if max_groups < 1:
            raise ValueError(f"max_groups must be >= 1, got {max_groups}")
        self.clip, self.slots, self.idle_s, self.max_groups = clip, slots, idle_s, max_groups
        self.workers: dict[tuple, _Worker] = {}
        self.waiting = 0  # requests waiting for a group worker to end
        self._lock = threading.Lock()  # workers and the counters
        self.streams = self.started = self.answered = self.cancelled = 0
        self.batch_steps = self.occupied_steps = self.slot_capacity_steps = 0
        self.histogram: Counter[int] = Counter()  # batch_size of answered requests

    async def run(self, key: tuple, cfg, vocab, target, deadline: float):
        """``(PEZResult, batch_size)`` for ``target`` in group ``key`` (``cfg`` and ``vocab`` start the group's
        worker if it has none). Raises :class:`Expired` at ``deadline`` (time.time()), the worker's error if
        the model failed."""
        job = _Job(asyncio.get_running_loop())
        worker, index = await self._admit(key, cfg, vocab, target, job, deadline)
        try:
            return await asyncio.wait_for(job.future, deadline - time.time())
        except asyncio.TimeoutError:
            self._cancel(worker, index)
            raise Expired() from None
        except asyncio.CancelledError:  # the caller went away (Serve cancels the request)
            self._cancel(worker, index)
            raise

    def _cancel(self, worker: _Worker, index: int) -> None:
        """Drop a request's target: off the queue, or out of its slot before the stream's next step."""
        worker.cancel(index)
        with self._lock:
            self.cancelled += 1

    async def _admit(self, key, cfg, vocab, target, job, deadline: float) -> tuple[_Worker, int]:
        """Queue ``target`` on its group's worker, starting one when fewer than ``max_groups`` run; else wait
        (polling: workers end on their own threads) for one to end, until ``deadline``."""
        queued = self._enqueue(key, cfg, vocab, target, job)
        if queued is not None:
            return queued
        with self._lock:
            self.waiting += 1
        try:
            give_up = deadline - GIVE_UP_EARLY_S  # so that the answer reaches the caller inside its time limit
            while (queued := self._enqueue(key, cfg, vocab, target, job)) is None:
                if time.time() >= give_up:
                    raise GroupsBusy(self.max_groups)
                await asyncio.sleep(min(0.02, max(0.0, give_up - time.time())))
            return queued
        finally:
            with self._lock:
                self.waiting -= 1

    def _enqueue(self, key, cfg, vocab, target, job) -> tuple[_Worker, int] | None:
        """(worker, index) of ``target`` queued on its group's worker; None when a new worker is needed and
        ``max_groups`` already run."""
        with self._lock:
            worker = self.workers.get(key)
            if worker is not None:
                try:
                    return worker, worker.put(target, job)
                except FeedClosed:  # it went idle just now; its thread is leaving
                    del self.workers[key]  # ended: it no longer counts against max_groups
            if len(self.workers) >= self.max_groups:
                return None
            worker = _Worker(self, key, cfg, vocab)
            self.workers[key] = worker
            self.streams += 1
            index = worker.put(target, job)  # before the thread starts: a fresh feed cannot be idle yet
            worker.thread.start()
            return worker, index

    def _retire(self, worker: _Worker) -> None:
        with self._lock:
            if self.workers.get(worker.key) is worker:
                del self.workers[worker.key]

    def _count(self, occupied: int = 0, slots: int = 0, started: int = 0, answered: int = 0) -> None:
        with self._lock:
            if slots:
                self.batch_steps += 1
                self.occupied_steps += occupied
                self.slot_capacity_steps += slots
            self.started += started
            if answered:
                self.answered += 1
                self.histogram[answered] += 1

    def snapshot(self) -> dict:
        """The stats of GET /v1/models (see docs/serving.md)."""
        with self._lock:
            workers = list(self.workers.values())
            hist = {str(k): v for k, v in sorted(self.histogram.items())}
            waiting = self.waiting
            out = {"batches": self.streams, "requests": self.answered, "items": self.started,
                   "max_batch_size_seen": max(self.histogram, default=0), "batch_size_histogram": hist,
                   "batch_steps": self.batch_steps, "occupied_slot_steps": self.occupied_steps,
                   "slot_capacity_steps": self.slot_capacity_steps, "cancelled": self.cancelled,
                   "mean_slot_occupancy": round(self.occupied_steps / self.slot_capacity_steps, 4)
                   if self.slot_capacity_steps else 0.0}
        out["workers"] = len(workers)
        out["max_groups"] = self.max_groups
        out["waiting_for_group"] = waiting
        out["running"] = sum(w.stream.occupied for w in workers if w.stream is not None)
        out["queued"] = sum(len(w.feed) for w in workers)
        return out
