"""node/runtime/gcpolicy.py: startup garbage is collected, not frozen; what is alive is frozen out of full
collections; what the node allocates afterwards is still collected."""

from __future__ import annotations

import gc
import weakref

from node.runtime.gcpolicy import freeze_startup_heap


class _Node:
    pass


def test_startup_garbage_is_collected_the_live_heap_frozen_and_later_garbage_still_collected():
    before = _Node()
    before.self = before  # a reference cycle that is garbage at freeze time
    dead = weakref.ref(before)
    del before
    alive = _Node()
    try:
        frozen = freeze_startup_heap()
        assert dead() is None  # collected first, not frozen forever
        assert frozen > 1000 and gc.get_freeze_count() == frozen
        assert not any(o is alive for o in gc.get_objects())  # frozen: no collection walks it
        later = _Node()
        later.self = later
        dead_later = weakref.ref(later)
        del later
        gc.collect()
        assert dead_later() is None  # allocated after the freeze: collected as before
    finally:
        gc.unfreeze()  # the test process goes on with its usual heap
