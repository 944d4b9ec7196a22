"""Garbage-collector settings for long-running engine and server processes.

A full (generation 2) collection walks every object the collector tracks. After a model, its
tokenizer and a web app are loaded that is millions of objects: the last full collections of
a CPU server's start-up (tiny model) took 150–230 ms each, and one while serving would stall
the engine's step loop or the event loop that feeds it for as long.
Freezing the heap once start-up is over moves those long-lived objects to the permanent
generation: later full collections walk only what was allocated since, and reference counting
still frees everything as before (only reference cycles among the frozen objects are never
collected, and start-up leaves none that matter).
"""

from __future__ import annotations

import atexit
import gc

_unfreeze_registered = False


def freeze_startup_heap() -> None:
    """Collect what start-up left behind, then exclude the survivors from future collections.

    The heap is unfrozen at exit, so that the interpreter's last collections still free the
    frozen objects (native extensions such as xgrammar's report leaked instances otherwise).
    """
    global _unfreeze_registered
    gc.collect()
    gc.freeze()
    if not _unfreeze_registered:
        atexit.register(gc.unfreeze)
        _unfreeze_registered = True
