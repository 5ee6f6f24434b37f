"""The ``slow`` marker, applied by measured time instead of by guess.

``tests/durations.json`` holds each test's call time (seconds) from a full run on the development machine
(2 cores, see BENCHMARKS.md). A test that took ``SLOW_SECONDS`` or more there is marked ``slow``, so
``pytest -m 'not slow'`` skips exactly those. After adding or changing tests, measure again:
``make durations`` (``pytest --record-durations tests/durations.json``).
"""
import json
from pathlib import Path

import pytest

SLOW_SECONDS = 5.0
DURATIONS = Path(__file__).resolve().parent / "durations.json"


#: Ids of the tests collected but left out of this run (``-m 'not slow'``, ``--deselect``): conftest's
#: ``pytest_deselected`` adds them, so that a quick run still knows every test the suite has.
DESELECTED = set()


def slow_ids(durations, threshold=SLOW_SECONDS):
    """The ids of the tests whose measured call time is at least ``threshold`` seconds."""
    return {test_id for test_id, seconds in durations.items() if seconds >= threshold}


def read_durations(path=DURATIONS):
    return json.loads(Path(path).read_text()) if Path(path).is_file() else {}


def mark_slow(items, durations):
    slow = slow_ids(durations)
    for item in items:
        if item.nodeid in slow:
            item.add_marker(pytest.mark.slow)


class Recorder:
    """Collects each test's call time and writes them, sorted, at the end of the session."""

    def __init__(self, path):
        self.path, self.seconds = Path(path), {}

    def pytest_runtest_logreport(self, report):
        if report.when == "call":
            self.seconds[report.nodeid] = round(report.duration, 3)

    def pytest_sessionfinish(self, session):
        if self.seconds:
            self.path.write_text(json.dumps(dict(sorted(self.seconds.items())), indent=1) + "\n")
