"""Restart policies: whether a container that ended starts again, and after how long.

    no               never
    always           always, and again when the daemon starts, even after `docker stop`
    unless-stopped   always, unless someone stopped it (it stays stopped across daemon starts)
    on-failure[:N]   when it exited non-zero, at most N times (0: no limit)

A container stopped or killed by hand is not restarted. Docker waits before each restart,
doubling the delay from 100 ms after each quick exit (capped at a minute), and starts again from
100 ms once a run lasted 10 s: a crash loop slows down, an occasional crash restarts at once.
"""

BACKOFF_START = 0.1
BACKOFF_RESET = 10.0
BACKOFF_MAX = 60.0


def restarts(policy, code, restart_count, manually_stopped):
    """Does the policy (HostConfig.RestartPolicy) restart a container that exited with `code`?"""
    if manually_stopped:
        return False
    name = (policy or {}).get("Name", "no")
    if name in ("always", "unless-stopped"):
        return True
    if name == "on-failure" and code != 0:
        limit = policy.get("MaximumRetryCount", 0)
        return limit == 0 or restart_count < limit
    return False


def restarts_with_daemon(policy, manually_stopped):
    """Does a container that had exited before the daemon stopped start with the daemon?
    `always` comes back even after a manual stop; `unless-stopped` only without one."""
    name = (policy or {}).get("Name")
    return name == "always" or (name == "unless-stopped" and not manually_stopped)


def next_backoff(previous, ran):
    """The delay before the next restart, given the last delay and how long the run lasted."""
    if ran >= BACKOFF_RESET or not previous:
        return BACKOFF_START
    return min(previous * 2, BACKOFF_MAX)
