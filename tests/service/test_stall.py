"""The stall watch tells a stopped process from a busy one (service/stall.py), and the
stall limit follows the group session (cli/service_cmd.py)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from stream_learner.cli.service_cmd import stall_limit_s
from stream_learner.errors import ConfigError
from stream_learner.service.stall import StallWatch

CHILD = """
import sys, time
from stream_learner.service.stall import StallWatch
watch = StallWatch(tick_s=0.05)
watch.start()
print("ready", flush=True)
sys.stdin.readline()  # the parent stops and resumes this process meanwhile
print(round(watch.stood_still_s(), 2), flush=True)
"""


def test_a_stopped_process_sees_how_long_it_stood_still():
    with subprocess.Popen(
        [sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as child:
        try:
            assert child.stdout.readline().strip() == "ready"
            child.send_signal(signal.SIGSTOP)
            time.sleep(1.5)
            child.send_signal(signal.SIGCONT)
            child.stdin.write("go\n")
            child.stdin.flush()
            assert float(child.stdout.readline()) >= 1.3
        finally:
            child.kill()


def test_a_busy_python_thread_is_not_a_stall():
    watch = StallWatch(tick_s=0.05)
    watch.start()
    try:
        end = time.monotonic() + 3.0
        n = 0
        while time.monotonic() < end:  # pure Python work: the ticker still gets its turns
            n += sum(range(1000))
        assert n and watch.stood_still_s() < 1.5
    finally:
        watch.stop()


def test_the_limit_is_half_the_group_session():
    assert stall_limit_s({}) == 15.0  # the default 30 s session
    assert stall_limit_s({"session.timeout.ms": 6000}) == 3.0
    with pytest.raises(ConfigError, match="session.timeout.ms"):
        stall_limit_s({"session.timeout.ms": "soon"})
