"""interceptor.native: the sink's OS thread and wake-up, which gevent's patching cannot turn into
greenlets (tests/interceptor/test_gevent.py runs them under gevent)."""
from __future__ import annotations

import _thread
import threading
import time

import pytest

from interceptor import native


def test_event_is_set_until_cleared():
    event = native.Event()
    assert not event.is_set()
    assert event.wait(0.01) is False
    event.set()
    event.set()  # set twice: still one flag, no error
    assert event.is_set() and event.wait(0) is True and event.wait(5) is True  # stays set
    event.clear()
    event.clear()
    assert not event.is_set() and event.wait(0) is False


def test_event_wait_times_out_and_wakes_on_set_from_another_thread():
    event = native.Event()
    t0 = time.monotonic()
    assert event.wait(0.05) is False
    assert time.monotonic() - t0 >= 0.04
    threading.Timer(0.05, event.set).start()
    t0 = time.monotonic()
    assert event.wait(10) is True
    assert time.monotonic() - t0 < 5  # woken by the set, not by the timeout


def test_thread_runs_on_its_own_os_thread_and_joins():
    seen = []
    release = native.Lock()
    release.acquire()

    def target():
        seen.append(_thread.get_ident())
        release.acquire()

    t = native.Thread(target, name="netaudit-writer")
    t.start()
    assert t.ident is not None and t.ident != _thread.get_ident()
    assert t.is_alive()
    t.join(0.05)  # still blocked: join returns at the timeout
    assert t.is_alive()
    release.release()
    t.join(5)
    assert not t.is_alive() and seen == [t.ident]


def test_thread_start_refused_raises_and_leaves_it_not_alive(monkeypatch):
    """As threading does where the interpreter starts no thread (3.12 at shutdown): the sink relies
    on the RuntimeError to write on the calling thread instead."""
    def refuse(*args):
        raise RuntimeError("can't create new thread at interpreter shutdown")

    monkeypatch.setattr(native, "_start_new_thread", refuse)
    t = native.Thread(lambda: None)
    with pytest.raises(RuntimeError):
        t.start()
    assert not t.is_alive()
    t.join(0)  # returns at once


def test_original_is_the_module_attribute_where_gevent_patched_nothing():
    import socket
    import subprocess

    assert not native.patched("socket")
    assert native.original(socket, "socket") is socket.socket
    assert native.original(subprocess, "Popen") is subprocess.Popen
