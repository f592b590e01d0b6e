"""`DropOldestQueue`: the bounded queue between the threads of `Runtime.stream` (`live.py`)."""

from __future__ import annotations

import queue
import threading
from collections import deque


class DropOldestQueue:
    """A bounded FIFO whose `put` drops (and counts) the oldest item when full; `close()` ends it."""

    def __init__(self, maxsize: int) -> None:
        self._q: deque = deque()
        self._max = max(1, int(maxsize))
        self._cond = threading.Condition()
        self.dropped = 0
        self.closed = False

    def put(self, item, block: bool = False) -> None:
        """Append `item`; when full, drop the oldest (live input) or, with `block`, wait for room
        (recorded input, which can always be read later: nothing is lost)."""
        with self._cond:
            if block:
                self._cond.wait_for(lambda: len(self._q) < self._max or self.closed)
            if len(self._q) >= self._max:
                self._q.popleft()
                self.dropped += 1
            self._q.append(item)
            self._cond.notify_all()

    def __len__(self) -> int:
        """Items waiting now (soak tests watch it stay bounded)."""
        with self._cond:
            return len(self._q)

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def get(self, timeout: float | None = None):
        """The oldest item; raises queue.Empty on timeout, EOFError once closed and drained."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._q or self.closed, timeout):
                raise queue.Empty
            if self._q:
                item = self._q.popleft()
                self._cond.notify_all()
                return item
            raise EOFError
