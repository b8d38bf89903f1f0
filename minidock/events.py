"""The daemon's event log: what happened to containers, images, volumes and networks, in order.

Every state change the daemon makes is announced here (`emit`). Clients read events two ways,
both through `GET /events`: *polling* a past window (`since`/`until` in the past: the matching
events are returned and the response ends) and *streaming* (events are written as they happen until
`until` passes or the client leaves). Like Docker, the daemon remembers a bounded number of recent
events in memory; older ones are gone.

An event is stored once, in the richest form (API v1.22+):

    {"Type": "container", "Action": "start", "Actor": {"ID": ..., "Attributes": {...}},
     "status": "start", "id": ..., "from": "busybox", "time": 1700000000, "timeNano": ...,
     "scope": "local"}

and reduced to the older `status/id/from/time` form for old API versions in `api/versions.py`.
"""

import collections
import threading
import time

MAX_EVENTS = 1024

FILTER_KEYS = {"type", "container", "image", "event", "label", "volume", "network", "daemon"}


class Events:
    def __init__(self, capacity=MAX_EVENTS):
        self._log = collections.deque(maxlen=capacity)
        self._cond = threading.Condition()
        self._seq = 0
        self.listeners = 0

    def emit(self, type_, action, actor_id, attributes=None, image=None):
        """Record one event and wake every streaming reader."""
        now = time.time_ns()
        attributes = dict(attributes or {})
        event = {"Type": type_, "Action": action,
                 "Actor": {"ID": actor_id, "Attributes": attributes},
                 "scope": "local", "time": now // 1_000_000_000, "timeNano": now}
        if type_ == "container":
            # The pre-1.22 fields; Docker fills them for container events (and images' `id`).
            event["status"] = action
            event["id"] = actor_id
            event["from"] = image or attributes.get("image", "")
        elif type_ == "image":
            event["status"] = action
            event["id"] = actor_id
        with self._cond:
            self._seq += 1
            event["_seq"] = self._seq
            self._log.append(event)
            self._cond.notify_all()
        return event

    def history(self, since_ns=None, until_ns=None, filters=None):
        with self._cond:
            events = list(self._log)
        return [e for e in events if _in_window(e, since_ns, until_ns) and matches(e, filters)]

    def follow(self, since_ns=None, until_ns=None, filters=None, stop=lambda: False, poll=0.5):
        """Past events from `since`, then live ones until `until` or until `stop()` is true.

        The subscription starts *now*, when follow() is called, not when the caller first pulls
        from the returned iterator: `docker run` on API < 1.25 starts watching for the "die"
        event before it starts the container, and must not miss it.
        """
        with self._cond:
            seq = self._seq
            past = list(self._log)
            self.listeners += 1
        return self._follow(seq, past, since_ns, until_ns, filters, stop, poll)

    def _follow(self, seq, past, since_ns, until_ns, filters, stop, poll):
        try:
            if since_ns is not None:
                for event in past:
                    if _in_window(event, since_ns, until_ns) and matches(event, filters):
                        yield event
            while True:
                if until_ns is not None and time.time_ns() > until_ns:
                    return
                with self._cond:
                    if self._seq == seq:
                        self._cond.wait(poll)
                    fresh = [e for e in self._log if e["_seq"] > seq]
                    seq = self._seq
                for event in fresh:
                    if until_ns is not None and event["timeNano"] > until_ns:
                        return
                    if matches(event, filters):
                        yield event
                if stop():
                    return
        finally:
            with self._cond:
                self.listeners -= 1


def _in_window(event, since_ns, until_ns):
    if since_ns is not None and event["timeNano"] < since_ns:
        return False
    if until_ns is not None and event["timeNano"] > until_ns:
        return False
    return True


def matches(event, filters):
    """Docker's event filters: each key must match (values of one key are alternatives)."""
    if not filters:
        return True
    actor = event["Actor"]
    attributes = actor.get("Attributes", {})
    for key, values in filters.items():
        if not values:
            continue
        if key == "type" and event["Type"] not in values:
            return False
        if key == "event" and event["Action"] not in values and event["Action"].split(":")[0] not in values:
            return False
        if key in ("container", "volume", "network", "daemon"):
            if event["Type"] != key:
                return False
            names = {actor["ID"], attributes.get("name", "")}
            if not any(v in names or (len(v) >= 3 and actor["ID"].startswith(v)) for v in values):
                return False
        if key == "image":
            candidates = {attributes.get("image", ""), event.get("from", "")}
            if event["Type"] == "image":
                candidates |= {actor["ID"], attributes.get("name", "")}
            candidates.discard("")
            expanded = candidates | {c.rsplit(":", 1)[0] for c in candidates if ":" in c.rsplit("/", 1)[-1]}
            if not any(v in expanded for v in values):
                return False
        if key == "label":
            for value in values:
                name, eq, wanted = value.partition("=")
                if name not in attributes or (eq and attributes[name] != wanted):
                    return False
    return True
