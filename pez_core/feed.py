"""A live queue of PEZ targets for :func:`pez_core.stream.invert_stream` (an online server).

A feed is filled from other threads: ``put(target)`` returns the target's index, ``cancel(index)`` drops a
queued target or frees a running one's slot before the stream's next step (its result is never produced),
``close()`` lets the stream end once the feed is drained. A feed made with ``idle_timeout`` closes itself,
atomically under its lock, when it stayed empty that long while the stream waited, so the stream ends,
and a later ``put`` raises :class:`FeedClosed` (the caller starts a new stream) instead of landing in a
feed nobody reads.
"""

from __future__ import annotations

import threading
import time
from collections import deque

from .pez import Target


class FeedClosed(RuntimeError):
    """``TargetFeed.put`` on a closed feed: nothing reads it any more."""


_NOTHING_NOW = object()  # TargetFeed._take: no target queued yet, the feed still open


class TargetFeed:
    """A thread-safe live queue for :func:`invert_stream` (see the module docstring). Indices count the
    targets put, from 0, in order; a stream reads a feed in that order (FIFO)."""

    def __init__(self, idle_timeout: float | None = None):
        if idle_timeout is not None and not idle_timeout > 0:
            raise ValueError(f"idle_timeout must be > 0 or None, got {idle_timeout}")
        self.idle_timeout = idle_timeout
        self._cond = threading.Condition()
        self._queued: deque[tuple[int, Target]] = deque()
        self._cancel: set[int] = set()  # running targets to free at the next step
        self._count = 0
        self._closed = False

    def put(self, target: Target) -> int:
        """Queue ``target``; returns its index. Raises :class:`FeedClosed` once the feed is closed."""
        with self._cond:
            if self._closed:
                raise FeedClosed("this feed is closed; start a new stream")
            index, self._count = self._count, self._count + 1
            self._queued.append((index, target))
            self._cond.notify_all()
            return index

    def cancel(self, index: int) -> None:
        """Drop target ``index``: taken off the queue if still there, else its slot is freed at the stream's
        next step and no result comes for it. A finished or unknown index is ignored."""
        with self._cond:
            for i, (queued, _) in enumerate(self._queued):
                if queued == index:
                    del self._queued[i]
                    return
            if 0 <= index < self._count:
                self._cancel.add(index)

    def close(self) -> None:
        """No more puts; a stream ends once it has run every target already queued."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        """Targets queued, not yet in a slot."""
        return len(self._queued)

    def _take(self, wait: bool):
        """The stream's read: ``(index, target)``; ``_NOTHING_NOW`` when none is queued (``wait`` False);
        None when the feed is closed and drained. ``wait``: block until a put, a close or the idle timeout
        (which closes the feed, here under the lock, so no put can slip in between)."""
        with self._cond:
            end = None if self.idle_timeout is None else time.monotonic() + self.idle_timeout
            while wait and not self._queued and not self._closed:
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    self._closed = True
                    break
                self._cond.wait(left)
            if self._queued:
                return self._queued.popleft()
            return None if self._closed else _NOTHING_NOW

    def _cancelled(self) -> set[int]:
        """Indices cancelled since the last call (the stream frees their slots)."""
        with self._cond:
            out, self._cancel = self._cancel, set()
            return out
