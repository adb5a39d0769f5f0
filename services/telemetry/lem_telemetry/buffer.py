"""A bounded, thread-safe queue of readings waiting to be written; when full, the oldest are dropped."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable
from typing import Generic, TypeVar

T = TypeVar("T")


class SampleBuffer(Generic[T]):
    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.dropped = 0
        self._items: deque[T] = deque(maxlen=capacity)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def add(self, items: Iterable[T]) -> None:
        with self._lock:
            for item in items:
                if len(self._items) == self.capacity:
                    self.dropped += 1
                self._items.append(item)

    def take_all(self) -> list[T]:
        with self._lock:
            items = list(self._items)
            self._items.clear()
            return items

    def put_back(self, items: list[T]) -> None:
        """Return items taken by a write that failed; they are older than anything added since."""
        with self._lock:
            merged = items + list(self._items)
            self.dropped += max(len(merged) - self.capacity, 0)
            self._items = deque(merged, maxlen=self.capacity)
