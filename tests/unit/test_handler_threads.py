"""The store and MWL ports' association threads are reused, not made per connection."""

from __future__ import annotations

import threading
import time

from echoes.dicom.server import HandlerThreads


def _wait(condition, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.001)


def test_an_idle_thread_takes_the_next_association() -> None:
    pool = HandlerThreads()
    ran: list[int] = []
    for _ in range(20):  # one association after another, as a modality sends
        done = threading.Event()
        pool.submit(lambda done=done: (ran.append(threading.get_ident()), done.set()))
        done.wait(5)
        _wait(lambda: pool.idle == 1)
    assert len(ran) == 20
    assert len(set(ran)) == 1  # the same thread ran all twenty


def test_concurrent_associations_get_threads_of_their_own() -> None:
    pool = HandlerThreads(keep_idle=5)
    release = threading.Event()
    started = threading.Semaphore(0)

    def association() -> None:
        started.release()
        release.wait(5)

    for _ in range(5):
        pool.submit(association)
    for _ in range(5):  # all five run at once: none waits for another to end
        assert started.acquire(timeout=5)
    release.set()
    _wait(lambda: pool.idle == 5)


def test_at_most_keep_idle_threads_wait_after_a_burst() -> None:
    pool = HandlerThreads(keep_idle=2)
    release = threading.Event()
    for _ in range(5):
        pool.submit(release.wait, 5)
    _wait(lambda: threading.active_count() >= 5)
    before_burst = threading.active_count() - 5
    release.set()
    _wait(lambda: pool.idle == 2 and threading.active_count() == before_burst + 2)


def test_threads_idle_too_long_leave() -> None:
    pool = HandlerThreads(idle_seconds=0.05)
    before = threading.active_count()
    pool.submit(lambda: None)
    _wait(lambda: pool.idle == 1)
    _wait(lambda: pool.idle == 0 and threading.active_count() == before)
    done = threading.Event()
    pool.submit(done.set)  # a new one is started when none is idle
    assert done.wait(5)
