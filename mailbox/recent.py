"""A set that forgets its oldest members: for memory of things seen in the bucket.

Readers remember what they already refused or looked at so that they do not repeat the work
on every poll, but anyone who can write to the bucket decides how many such things there
are; an unbounded set would grow with an attacker's budget. Forgetting the oldest costs at
most a repeated look at an object that has been around the longest.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T", bound=Hashable)


class RecentSet(Generic[T]):
    def __init__(self, maxlen: int) -> None:
        if maxlen < 1:
            raise ValueError("maxlen must be at least 1")
        self.maxlen = maxlen
        self._items: OrderedDict[T, None] = OrderedDict()

    def add(self, item: T) -> None:
        self._items[item] = None
        self._items.move_to_end(item)
        while len(self._items) > self.maxlen:
            self._items.popitem(last=False)

    def discard(self, item: T) -> None:
        self._items.pop(item, None)

    def clear(self) -> None:
        self._items.clear()

    def __contains__(self, item: object) -> bool:
        return item in self._items

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[T]:
        return iter(list(self._items))
