"""Healthchecks: a command run inside a running container, over and over, that says if it is well.

An image's `HEALTHCHECK` instruction, or a container's `Config.Healthcheck`, is

    {"Test": ["CMD-SHELL", "nc -z 127.0.0.1 80"], "Interval": 30e9, "Timeout": 30e9,
     "Retries": 3, "StartPeriod": 0, "StartInterval": 5e9}          (durations in nanoseconds)

`Test` is `["NONE"]` (disabled; also what `--no-healthcheck` sends), `["CMD", argv...]` (run as
is), `["CMD-SHELL", "a command"]` (run with the container's `Shell`, by default `/bin/sh -c`),
or empty (inherit the image's). Zero durations and zero retries mean Docker's defaults below;
fields the container leaves zero are taken from the image's check (moby's config merge).

The probe is an ordinary exec in the container (as `docker exec` would start it); its stdout and
stderr together, cut at 4096 bytes with "..." appended, become the `Output` of a log entry:

    State.Health = {"Status": "starting"|"healthy"|"unhealthy", "FailingStreak": n,
                    "Log": [{"Start", "End", "ExitCode", "Output"}, ... the last five]}

The state machine (moby's handleProbeResult), for each finished probe:

    exit 0                      FailingStreak = 0, Status = healthy
    anything else               (exit 1, another code, -1 for a timeout or an exec error)
      starting, within StartPeriod of StartedAt    nothing counts yet
      otherwise                 FailingStreak += 1; Status = unhealthy once it reaches Retries

Every change of Status is one event, `health_status: healthy` (or `: unhealthy`). A container
starts in `starting`. While it is `starting` and still within StartPeriod, probes come every
StartInterval; otherwise every Interval. A probe still running after Timeout is killed and counts
as a failure with exit code -1 and "Health check exceeded timeout (30s)". Stopping the monitor
(container paused, stopped or dead) sets Status to unhealthy *without* an event, as Docker does
"for compatibility reasons"; `docker unpause` and a new start begin again in `starting`.

Threads. Each monitored container has one thread (`Monitor`) that sleeps on an Event, so a stop
wakes it at once. A probe runs through a callback given by the container layer; the callback may
block (a wedged exec), but only this container's monitor waits for it: `stop()` never joins an
unresponsive thread, and a result that arrives after stop is discarded.

Observe it yourself:

    docker run -d --name h --health-cmd 'test -e /tmp/ok' --health-interval 1s busybox sleep 1d
    docker inspect -f '{{json .State.Health}}' h          # starting, then unhealthy (3 failures)
    docker exec h touch /tmp/ok; docker ps                 # Up 9 seconds (healthy)
    docker events --filter event=health_status
"""

import threading
import time

from .errors import InvalidParameter
from .times import format_rfc3339

STARTING, HEALTHY, UNHEALTHY, NONE = "starting", "healthy", "unhealthy", "none"

SECOND = 10**9
DEFAULT_INTERVAL = 30 * SECOND            # moby's defaultProbeInterval
DEFAULT_TIMEOUT = 30 * SECOND             # defaultProbeTimeout
DEFAULT_START_PERIOD = 0                  # defaultStartPeriod
DEFAULT_START_INTERVAL = 5 * SECOND       # defaultStartInterval
DEFAULT_RETRIES = 3                       # defaultProbeRetries
MIN_DURATION = 10**6                      # containertypes.MinimumDuration: 1ms
MAX_LOG_ENTRIES = 5
MAX_OUTPUT = 4096

DURATIONS = ("Interval", "Timeout", "StartPeriod", "StartInterval")


def go_duration(ns):
    """Go's time.Duration.String() for the durations Docker prints: 30s, 1.5s, 500ms, 1m30s."""
    ns = int(ns)
    if ns == 0:
        return "0s"
    if ns < SECOND:
        for unit, size in (("ms", 10**6), ("µs", 10**3), ("ns", 1)):
            if ns >= size:
                return _trim(ns / size) + unit
    hours, rest = divmod(ns, 3600 * SECOND)
    minutes, rest = divmod(rest, 60 * SECOND)
    out = f"{hours}h" if hours else ""
    if hours or minutes:
        out += f"{minutes}m"
    return out + _trim(rest / SECOND) + "s"


def _trim(value):
    text = f"{value:.9f}".rstrip("0").rstrip(".")
    return text or "0"


# -- configuration ---------------------------------------------------------------------------

def validate(hc):
    """Reject what moby's verifyContainerSettings rejects, with its words."""
    if not hc:
        return
    if not isinstance(hc, dict):
        raise InvalidParameter("Healthcheck must be an object")
    test = hc.get("Test") or []
    if not isinstance(test, list) or not all(isinstance(t, str) for t in test):
        raise InvalidParameter("Healthcheck.Test must be a list of strings")
    if test and test[0] not in ("NONE", "CMD", "CMD-SHELL"):
        raise InvalidParameter(f"unknown healthcheck type '{test[0]}' (expected NONE, CMD or CMD-SHELL)")
    for field in DURATIONS:
        value = hc.get(field) or 0
        if not isinstance(value, int):
            raise InvalidParameter(f"{field} in Healthcheck must be an integer (nanoseconds)")
        if value != 0 and value < MIN_DURATION:
            raise InvalidParameter(f"{field} in Healthcheck cannot be less than {go_duration(MIN_DURATION)}")
    retries = hc.get("Retries") or 0
    if not isinstance(retries, int):
        raise InvalidParameter("Retries in Healthcheck must be an integer")
    if retries < 0:
        raise InvalidParameter("Retries in Healthcheck cannot be negative")


def merge(image_hc, user_hc):
    """The container's effective Healthcheck (moby's daemon.merge): the user's where given, the
    image's for an empty Test and for every zero field."""
    if not user_hc:
        return dict(image_hc) if image_hc else None
    if not image_hc:
        return dict(user_hc)
    out = dict(user_hc)
    if not out.get("Test"):
        out["Test"] = image_hc.get("Test")
    for field in DURATIONS + ("Retries",):
        if not out.get(field):
            out[field] = image_hc.get(field, 0)
    return out


class Probe:
    """A healthcheck ready to run: argv and durations in seconds, defaults applied."""

    def __init__(self, argv, interval, timeout, start_period, start_interval, retries):
        self.argv = argv
        self.interval, self.timeout = interval, timeout
        self.start_period, self.start_interval = start_period, start_interval
        self.retries = retries
        self.timeout_ns = 0

    @classmethod
    def from_config(cls, hc, shell=None):
        """None when there is nothing to run: no Healthcheck, an empty Test, or NONE."""
        if not hc:
            return None
        test = hc.get("Test") or []
        if not test or test[0] == "NONE":
            return None
        if test[0] == "CMD":
            argv = list(test[1:])
        elif test[0] == "CMD-SHELL":
            argv = list(shell or ["/bin/sh", "-c"]) + [" ".join(test[1:])]
        else:
            raise InvalidParameter(f"unknown healthcheck type '{test[0]}'")
        if not argv:
            return None

        def ns(field, default):
            return hc.get(field) or default
        probe = cls(argv, ns("Interval", DEFAULT_INTERVAL) / SECOND,
                    ns("Timeout", DEFAULT_TIMEOUT) / SECOND,
                    ns("StartPeriod", DEFAULT_START_PERIOD) / SECOND,
                    ns("StartInterval", DEFAULT_START_INTERVAL) / SECOND,
                    hc.get("Retries") or DEFAULT_RETRIES)
        probe.timeout_ns = ns("Timeout", DEFAULT_TIMEOUT)
        return probe


# -- state --------------------------------------------------------------------------------------

def now_rfc3339(stamp=None):
    """Docker's time format for probe Start/End; `stamp` in epoch seconds, default now."""
    return format_rfc3339(time.time_ns() if stamp is None else int(stamp * 10**9))


class LimitedBuffer:
    """Collects probe output up to MAX_OUTPUT bytes; `text()` appends "..." if more came."""

    def __init__(self, limit=MAX_OUTPUT):
        self.limit, self.data, self.truncated = limit, bytearray(), False
        self.lock = threading.Lock()

    def write(self, chunk):
        with self.lock:
            keep = max(0, min(self.limit - len(self.data), len(chunk)))
            self.data += chunk[:keep]
            if keep < len(chunk):
                self.truncated = True

    def text(self):
        with self.lock:
            out = self.data.decode("utf-8", errors="replace")
            return out + "..." if self.truncated else out


class Health:
    """State.Health of one container. Not thread-safe by itself: the owner holds its lock."""

    def __init__(self, record=None):
        record = record or {}
        self.status = record.get("Status", STARTING)
        self.failing_streak = record.get("FailingStreak", 0)
        self.log = list(record.get("Log") or [])

    def as_dict(self):
        return {"Status": self.status, "FailingStreak": self.failing_streak, "Log": list(self.log)}

    def reset(self):
        """A (re)start or an unpause: probing begins again in `starting`."""
        self.status = STARTING
        self.failing_streak = 0

    def stopped(self):
        """The monitor stopped (pause, stop, death): unhealthy, and no event (moby does so)."""
        self.status = UNHEALTHY

    def record(self, result, retries, start_period, started_at):
        """Apply one probe result; returns the new status if it changed, else None.

        `result` is {"Start", "End", "ExitCode", "Output"} with `_start` (epoch seconds) for the
        start-period rule; `started_at` is the container's start, in epoch seconds.
        """
        old = self.status
        entry = {k: result[k] for k in ("Start", "End", "ExitCode", "Output")}
        self.log = (self.log + [entry])[-MAX_LOG_ENTRIES:]
        if result["ExitCode"] == 0:
            self.failing_streak = 0
            self.status = HEALTHY
        else:
            counts = True
            if self.status == STARTING and result["_start"] - started_at < start_period:
                counts = False          # failures within the start period are forgiven
            if counts:
                self.failing_streak += 1
                if self.failing_streak >= retries:
                    self.status = UNHEALTHY
        return self.status if self.status != old else None


def status_suffix(health):
    """What `docker ps` appends to "Up 5 seconds": "(health: starting)", "(healthy)"."""
    if health is None:
        return ""
    status = health.status if isinstance(health, Health) else health.get("Status")
    return " (health: starting)" if status == STARTING else f" ({status})"


# -- running probes -------------------------------------------------------------------------

class Monitor:
    """Runs a container's probe on schedule until stopped.

    Contract of the callbacks (given by the container layer):
      run(argv, write) -> handle      start the probe in the container, feeding its output
                                      to write(bytes); raise on failure to start
      handle.wait(timeout) -> int|None   the exit code, or None if still running
      handle.kill()                   SIGKILL the probe (it may already have ended)
      apply(result) -> None           record a finished result (under the container's lock:
                                      Health.record, saving, emitting the event). It should
                                      check `stopped` under that lock: stop() is called under
                                      it, so a result racing a stop never lands
      status() -> str                 the current Health status (for the interval choice)
    """

    def __init__(self, probe, started_at, run, apply, status, name="health"):
        self.probe, self.started_at = probe, started_at
        self.run, self.apply, self.status = run, apply, status
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True, name=name)

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        """Stop probing; never waits (for a wedged probe or for a lock). Results that arrive
        after this are discarded."""
        self.stop_event.set()

    @property
    def stopped(self):
        return self.stop_event.is_set()

    def interval(self):
        """moby's getInterval: StartInterval while starting within the start period."""
        p = self.probe
        if time.time() - self.started_at >= p.start_period:
            return p.interval
        return p.start_interval if self.status() == STARTING else p.interval

    def _loop(self):
        # No lock of ours is held around apply(): it takes the container's lock, and the
        # container layer calls stop() while holding that lock (an exit, a pause).
        while not self.stop_event.wait(self.interval()):
            result = self.run_once()
            if self.stop_event.is_set():
                return                  # a late result of a stopped monitor never lands
            self.apply(result)

    def run_once(self):
        """One probe, bounded by its timeout: the result dict Health.record takes."""
        started = time.time()
        output = LimitedBuffer()
        try:
            handle = self.run(self.probe.argv, output.write)
        except Exception as e:          # the exec could not start: a failed probe, as in moby
            return self._result(started, -1, str(e) or type(e).__name__)
        code = handle.wait(self.probe.timeout)
        if code is None:
            handle.kill()
            # Give the kill a moment to be reaped, but never wait on a wedged exec.
            handle.wait(min(1.0, self.probe.timeout))
            return self._result(started, -1, "Health check exceeded timeout "
                                f"({go_duration(self.probe.timeout_ns or self.probe.timeout * SECOND)})")
        return self._result(started, code, output.text())

    @staticmethod
    def _result(started, code, output):
        return {"Start": now_rfc3339(started), "End": now_rfc3339(), "ExitCode": code,
                "Output": output, "_start": started}


HEALTH_FILTER_VALUES = (STARTING, HEALTHY, UNHEALTHY, NONE)


def filter_value(health):
    """The value `docker ps --filter health=...` matches: a status, or "none" without a check."""
    if health is None:
        return NONE
    return health.status if isinstance(health, Health) else health.get("Status", NONE)


class Checks:
    """The container layer's side: one Monitor per running container with a healthcheck.

    The container object needs `id`, `lock` (an RLock held around state changes), `config`
    (`Healthcheck`, `Shell`) and `state` (a dict: `Health` is written there, as inspect shows
    it). Callbacks:

      run_probe(c, argv, write) -> handle    see Monitor
      save(c)                                persist the record (called under c.lock)
      emit(c, action)                        publish an event ("health_status: healthy")

    Lifecycle hooks, called by the container layer *after* its own state change:
      started(c, started_at, reset=True)   a (re)start (State.Health starts over at
                    `starting`; `started_at` in epoch seconds for StartPeriod) or, with
                    reset=False, an unpause
      stopped(c)    pause, stop, death: probing ends, Status unhealthy (no event)
    """

    def __init__(self, run_probe, save, emit):
        self.run_probe, self.save, self.emit = run_probe, save, emit
        self.monitors = {}
        self.lock = threading.Lock()

    def started(self, c, started_at, reset=True):
        """Start probing. `reset` False (an unpause) keeps the status: moby's monitor resumes
        with the unhealthy its stop left, until the next probe says otherwise."""
        probe = Probe.from_config(c.config.get("Healthcheck"), c.config.get("Shell"))
        self.stopped(c, quiet=True)
        if probe is None:
            return
        with c.lock:
            h = Health(c.state.get("Health"))
            if reset or not c.state.get("Health"):
                h.reset()
            c.state["Health"] = h.as_dict()
            self.save(c)

        def apply(result):
            with c.lock:
                if monitor.stopped:     # stopped meanwhile (stop() runs under c.lock)
                    return
                h = Health(c.state.get("Health"))
                changed = h.record(result, probe.retries, probe.start_period, started_at)
                c.state["Health"] = h.as_dict()
                self.save(c)
            if changed:
                self.emit(c, f"health_status: {changed}")

        def status():
            return (c.state.get("Health") or {}).get("Status", STARTING)

        monitor = Monitor(probe, started_at, lambda argv, write: self.run_probe(c, argv, write),
                          apply, status, name=f"health-{c.id[:12]}")
        with self.lock:
            self.monitors[c.id] = monitor
        monitor.start()

    def stopped(self, c, quiet=False):
        with self.lock:
            monitor = self.monitors.pop(c.id, None)
        if monitor is None:
            return
        monitor.stop()
        if quiet:
            return
        with c.lock:
            if c.state.get("Health"):
                h = Health(c.state["Health"])
                h.stopped()
                c.state["Health"] = h.as_dict()
                self.save(c)

    def shutdown(self):
        with self.lock:
            monitors, self.monitors = list(self.monitors.values()), {}
        for m in monitors:
            m.stop()
