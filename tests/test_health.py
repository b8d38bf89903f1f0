"""health.py without HTTP: config rules, the state machine on results, and the monitor running
real processes (host subprocesses stand in for the container exec) on a fast schedule."""

import os
import subprocess
import threading
import time

import pytest

from minidock import health
from minidock.errors import InvalidParameter

S = health.SECOND


@pytest.mark.parametrize("ns,text", [
    (30 * S, "30s"), (S // 2, "500ms"), (3 * S // 2, "1.5s"), (90 * S, "1m30s"),
    (3600 * S, "1h0m0s"), (10**6, "1ms"), (0, "0s")])
def test_go_duration(ns, text):
    assert health.go_duration(ns) == text


@pytest.mark.parametrize("hc,message", [
    ({"Test": ["CMD", "true"], "Interval": 10}, "Interval in Healthcheck cannot be less than 1ms"),
    ({"Test": ["CMD", "true"], "Timeout": 999}, "Timeout in Healthcheck cannot be less than 1ms"),
    ({"Test": ["CMD", "true"], "StartPeriod": 5}, "StartPeriod in Healthcheck cannot be less than 1ms"),
    ({"Test": ["CMD", "true"], "StartInterval": 5}, "StartInterval in Healthcheck cannot be less than 1ms"),
    ({"Test": ["CMD", "true"], "Retries": -1}, "Retries in Healthcheck cannot be negative"),
    ({"Test": ["BOGUS"]}, "unknown healthcheck type 'BOGUS'"),
])
def test_validate_refuses_as_moby(hc, message):
    with pytest.raises(InvalidParameter, match=message):
        health.validate(hc)


def test_validate_accepts_zero_and_none():
    health.validate(None)
    health.validate({"Test": ["NONE"]})
    health.validate({"Test": ["CMD-SHELL", "true"], "Interval": 0, "Retries": 0})


def test_merge_takes_the_images_fields_for_zero_ones():
    image = {"Test": ["CMD-SHELL", "check"], "Interval": 5 * S, "Retries": 7}
    assert health.merge(image, None) == image
    assert health.merge(None, {"Test": ["CMD", "x"]}) == {"Test": ["CMD", "x"]}
    merged = health.merge(image, {"Interval": 2 * S})
    assert merged["Test"] == ["CMD-SHELL", "check"] and merged["Interval"] == 2 * S
    assert merged["Retries"] == 7
    assert health.merge(image, {"Test": ["NONE"]})["Test"] == ["NONE"]


def test_probe_forms_and_defaults():
    assert health.Probe.from_config(None) is None
    assert health.Probe.from_config({"Test": ["NONE"]}) is None
    assert health.Probe.from_config({"Test": []}) is None
    p = health.Probe.from_config({"Test": ["CMD-SHELL", "nc -z", "localhost 80"]})
    assert p.argv == ["/bin/sh", "-c", "nc -z localhost 80"]
    assert (p.interval, p.timeout, p.start_period, p.start_interval, p.retries) == (30, 30, 0, 5, 3)
    p = health.Probe.from_config({"Test": ["CMD-SHELL", "x"]}, shell=["/bin/ash", "-eo"])
    assert p.argv == ["/bin/ash", "-eo", "x"]
    p = health.Probe.from_config({"Test": ["CMD", "curl", "-f", "x"], "Interval": S, "Retries": 2})
    assert p.argv == ["curl", "-f", "x"] and p.interval == 1 and p.retries == 2


def result(code, start=100.0, output=""):
    return {"Start": "s", "End": "e", "ExitCode": code, "Output": output, "_start": start}


def test_state_machine_streaks_retries_and_events():
    h = health.Health()
    assert h.status == health.STARTING
    assert h.record(result(1), 3, 0, 0) is None and h.failing_streak == 1
    assert h.record(result(0), 3, 0, 0) == health.HEALTHY and h.failing_streak == 0
    assert h.record(result(1), 3, 0, 0) is None
    assert h.record(result(-1), 3, 0, 0) is None
    assert h.record(result(2), 3, 0, 0) == health.UNHEALTHY and h.failing_streak == 3
    assert h.record(result(1), 3, 0, 0) is None and h.failing_streak == 4
    assert h.record(result(0), 3, 0, 0) == health.HEALTHY
    assert len(h.log) == 5                        # the last five only
    assert [e["ExitCode"] for e in h.log] == [1, -1, 2, 1, 0]


def test_start_period_forgives_failures_while_starting_only():
    h = health.Health()
    for _ in range(5):                            # probes 5 s after a start, period 10 s
        assert h.record(result(1, start=105.0), 1, 10, 100.0) is None
    assert h.status == health.STARTING and h.failing_streak == 0
    assert h.record(result(1, start=111.0), 1, 10, 100.0) == health.UNHEALTHY
    h.reset()
    h.record(result(0, start=101.0), 1, 10, 100.0)
    assert h.record(result(1, start=102.0), 1, 10, 100.0) == health.UNHEALTHY  # healthy once: counts


def test_stop_is_unhealthy_and_suffixes():
    h = health.Health()
    assert health.status_suffix(h) == " (health: starting)"
    h.record(result(0), 3, 0, 0)
    assert health.status_suffix(h.as_dict()) == " (healthy)"
    h.stopped()
    assert h.status == health.UNHEALTHY and health.status_suffix(h) == " (unhealthy)"
    assert health.status_suffix(None) == ""
    assert health.filter_value(None) == "none" and health.filter_value(h) == "unhealthy"


def test_output_is_cut_at_4096_with_dots():
    b = health.LimitedBuffer()
    b.write(b"a" * 4000)
    b.write(b"b" * 200)
    assert b.text() == "a" * 4000 + "b" * 96 + "..."
    small = health.LimitedBuffer()
    small.write(b"ok\n")
    assert small.text() == "ok\n"


# -- the monitor with real processes ----------------------------------------------------------

class HostExec:
    """run() callback: the probe as a host subprocess, output read by a thread."""

    def __init__(self):
        self.started = []

    def __call__(self, argv, write):
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.started.append(proc)

        def pump():
            for chunk in iter(lambda: proc.stdout.read1(4096), b""):
                write(chunk)
        t = threading.Thread(target=pump, daemon=True)
        t.start()
        return Handle(proc, t)


class Handle:
    def __init__(self, proc, pump):
        self.proc, self.pump = proc, pump

    def wait(self, timeout):
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        self.pump.join(timeout)
        return code

    def kill(self):
        self.proc.kill()


class Container:
    """The container layer's side: a lock, Health, and the events it emitted."""

    def __init__(self, probe, run):
        self.lock = threading.Lock()
        self.health = health.Health()
        self.events = []
        self.probe = probe
        self.monitor = health.Monitor(probe, time.time(), run, self.apply, lambda: self.health.status)

    def apply(self, r):
        with self.lock:
            changed = self.health.record(r, self.probe.retries, self.probe.start_period,
                                         self.monitor.started_at)
            if changed:
                self.events.append(f"health_status: {changed}")

    def until(self, predicate, limit=10.0):
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            with self.lock:
                if predicate(self):
                    return True
            time.sleep(0.02)
        return False


def fast(test, **kw):
    hc = {"Test": test, "Interval": 50 * 10**6, "Timeout": kw.pop("timeout", S), "Retries": 2}
    hc.update(kw)
    return health.Probe.from_config(hc)


@pytest.fixture
def monitors():
    made = []
    yield made
    for m in made:
        m.monitor.stop()


def test_monitor_goes_healthy_with_output(monitors):
    c = Container(fast(["CMD-SHELL", "echo fine; echo warn >&2"]), HostExec())
    monitors.append(c)
    c.monitor.start()
    assert c.until(lambda c: c.health.status == health.HEALTHY)
    assert c.events == ["health_status: healthy"]
    entry = c.health.log[0]
    assert entry["ExitCode"] == 0 and entry["Output"] == "fine\nwarn\n"
    assert entry["Start"] <= entry["End"]


def test_monitor_goes_unhealthy_after_retries(monitors):
    c = Container(fast(["CMD", "false"]), HostExec())
    monitors.append(c)
    c.monitor.start()
    assert c.until(lambda c: c.health.status == health.UNHEALTHY)
    assert c.health.failing_streak == 2 and c.events == ["health_status: unhealthy"]


def test_overrunning_probe_is_killed_and_counted_failed(monitors):
    run = HostExec()
    c = Container(fast(["CMD", "sleep", "30"], timeout=200 * 10**6), run)
    monitors.append(c)
    c.monitor.start()
    assert c.until(lambda c: len(c.health.log) >= 1)
    entry = c.health.log[0]
    assert entry["ExitCode"] == -1
    assert entry["Output"] == "Health check exceeded timeout (200ms)"
    assert run.started[0].poll() is not None      # the kernel shows it gone (reaped, killed)
    assert run.started[0].returncode == -9


def test_exec_failure_is_a_failed_probe(monitors):
    def broken(argv, write):
        raise OSError(2, "No such file or directory", argv[0])
    c = Container(fast(["CMD", "/nope"]), broken)
    monitors.append(c)
    c.monitor.start()
    assert c.until(lambda c: c.health.status == health.UNHEALTHY)
    assert c.health.log[0]["ExitCode"] == -1 and "No such file" in c.health.log[0]["Output"]


def test_a_wedged_exec_wedges_only_its_own_monitor(monitors):
    # One monitor's exec never returns (a stuck spawner, say). Another container's checks keep
    # running, and stopping the wedged monitor returns at once and discards its late result.
    release = threading.Event()

    def wedged(argv, write):
        release.wait(30)
        raise OSError(5, "late")
    stuck = Container(fast(["CMD", "x"]), wedged)
    well = Container(fast(["CMD", "true"]), HostExec())
    monitors.extend([stuck, well])
    stuck.monitor.start()
    well.monitor.start()
    assert well.until(lambda c: len(c.health.log) >= 3)
    t0 = time.monotonic()
    stuck.monitor.stop()
    assert time.monotonic() - t0 < 1.0
    release.set()
    stuck.monitor.thread.join(5)
    assert not stuck.monitor.thread.is_alive()
    assert stuck.health.log == [] and stuck.health.status == health.STARTING


def test_stop_ends_probing(monitors):
    run = HostExec()
    c = Container(fast(["CMD", "true"]), run)
    monitors.append(c)
    c.monitor.start()
    assert c.until(lambda c: len(c.health.log) >= 1)
    c.monitor.stop()
    c.monitor.thread.join(5)
    n = len(run.started)
    time.sleep(0.3)                               # six intervals: none may start
    assert len(run.started) == n


def test_start_interval_is_used_while_starting(monitors):
    # Interval one hour, StartInterval 50ms, within a long StartPeriod: probes still come.
    probe = health.Probe.from_config({"Test": ["CMD", "false"], "Interval": 3600 * S,
                                      "StartInterval": 50 * 10**6, "StartPeriod": 3600 * S})
    c = Container(probe, HostExec())
    monitors.append(c)
    c.monitor.start()
    assert c.until(lambda c: len(c.health.log) >= 3)
    assert c.health.status == health.STARTING and c.health.failing_streak == 0


class Box:
    """What health.Checks needs of a container."""

    def __init__(self, hc, shell=None):
        self.id, self.name = "c" * 64, "box"
        self.lock = threading.RLock()
        self.config = {"Healthcheck": hc, "Shell": shell}
        self.state = {}


def test_supervisor_records_state_events_and_stops_to_unhealthy():
    saved, events = [], []
    sup = health.Checks(lambda c, argv, write: HostExec()(argv, write),
                            lambda c: saved.append(dict(c.state["Health"])),
                            lambda c, action: events.append(action))
    box = Box({"Test": ["CMD-SHELL", "echo probe-ran"], "Interval": 50 * 10**6})
    sup.started(box, time.time())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and box.state["Health"]["Status"] != "healthy":
        time.sleep(0.02)
    assert box.state["Health"]["Status"] == "healthy"
    assert box.state["Health"]["Log"][0]["Output"] == "probe-ran\n"
    assert events == ["health_status: healthy"]
    assert saved[0]["Status"] == "starting"
    sup.stopped(box)
    assert box.state["Health"]["Status"] == "unhealthy" and events == ["health_status: healthy"]
    sup.started(box, time.time())                     # unpause / restart: starting again
    assert box.state["Health"]["Status"] == "starting"
    sup.shutdown()


def test_supervisor_ignores_containers_without_a_check():
    sup = health.Checks(None, None, None)
    for hc in (None, {"Test": ["NONE"]}):
        box = Box(hc)
        sup.started(box, time.time())
        assert "Health" not in box.state and sup.monitors == {}
