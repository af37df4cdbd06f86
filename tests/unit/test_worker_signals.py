"""The worker base reacts to SIGHUP and SIGTERM whichever thread the kernel gives them to."""

from __future__ import annotations

import logging
import signal
import threading
import time

import pytest
from helpers import write_offline_config

from echoes import config as config_module
from echoes.processes import worker as worker_module


class _Role(worker_module.Worker):
    role = "testrole"

    def __init__(self, config) -> None:
        super().__init__(config)
        self.reloads = 0
        self.stopped = False

    def reload(self, fresh) -> None:
        self.reloads += 1

    def stop(self) -> None:
        self.stopped = True


@pytest.fixture
def role(tmp_path, monkeypatch):
    monkeypatch.setattr(worker_module, "set_title", lambda _role: None)
    saved = {number: signal.getsignal(number)
             for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield _Role(config_module.load(write_offline_config(tmp_path / "home")))
    for number, handler in saved.items():
        signal.signal(number, handler)
    signal.set_wakeup_fd(-1)
    root.handlers[:], root.level = handlers, level


def test_signals_delivered_to_another_thread_still_reload_and_stop(role) -> None:
    """Before: the main thread slept in threading.Event.wait, which a signal
    taken by another thread never interrupts: no reload, no stop (the test's
    fallback SIGTERM to the main thread then ended it with 0 reloads)."""
    seen: dict[str, int] = {}
    main_thread = threading.main_thread().ident

    def signals_from_a_thread_of_the_process() -> None:
        me = threading.get_ident()
        time.sleep(0.3)
        signal.pthread_kill(me, signal.SIGHUP)  # the kernel's choice: this thread
        deadline = time.monotonic() + 5
        while role.reloads == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        seen["reloads before stop"] = role.reloads
        signal.pthread_kill(me, signal.SIGTERM)
        time.sleep(3)
        if not role.stopped:  # the fix is missing: end the test, not the run
            seen["fallback"] = 1
            signal.pthread_kill(main_thread, signal.SIGTERM)

    threading.Thread(target=signals_from_a_thread_of_the_process, daemon=True).start()
    assert role.main() == 0
    assert seen["reloads before stop"] == 1
    assert role.stopped
    assert "fallback" not in seen  # stopped by its own SIGTERM
