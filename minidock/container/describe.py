"""What the API shows of a container: the inspect document, list rows, list filters, status text.

These are the version-neutral models of the newest API shape; older shapes are derived from
them in minidock/api/versions.py. `docker ps` shows `status_text` ("Up 3 minutes", "Exited (0)
2 seconds ago") and filters rows with `--filter key=value` (`FILTERS` below).
"""

import json
import re

from minidock import errors, filters as filters_mod, health
from minidock.container.lifecycle import ACTIVE, CREATED, DEAD, EXITED, PAUSED, REMOVING, RESTARTING, RUNNING
from minidock.times import ZERO_TIME, human_duration, rfc3339_ns, rfc3339_seconds, seconds_since

FILTERS = {"status", "exited", "label", "ancestor", "before", "since", "volume", "name", "id",
           "isolation", "network", "health", "is-task", "publish", "expose"}
STATUSES = ("created", "restarting", "running", "removing", "paused", "exited", "dead")
MOUNT_KEYS = ("Type", "Name", "Source", "Destination", "Driver", "Mode", "RW", "Propagation")
HIDDEN_KEYS = ("HasBeenManuallyStopped",)      # our bookkeeping, not Docker's document


def mount_point(m):
    return {k: m.get(k) for k in MOUNT_KEYS if k in m}


def inspect(c, driver_name, sizes=None, network_settings=None):
    """`GET /containers/(id)/json`; `sizes` is (SizeRw, SizeRootFs) when asked for;
    `network_settings` is what the networks backend says (Networks.settings)."""
    record = {k: v for k, v in c.record.items() if k not in HIDDEN_KEYS}
    record = json.loads(json.dumps(record))
    record["Name"] = "/" + c.name
    record["ExecIDs"] = list(c.exec_ids) or None
    record["Mounts"] = [mount_point(m) for m in record.get("Mounts") or []]
    record["GraphDriver"] = {"Name": driver_name, "Data": None}
    record["NetworkSettings"] = network_settings
    if sizes is not None:
        record["SizeRw"], record["SizeRootFs"] = sizes
    return record


def summary(c, sizes=None, ports=(), networks=None):
    """One row of `GET /containers/json`; `ports` and `networks` from the networks backend."""
    cfg = c.config
    row = {
        "Id": c.id,
        "Names": ["/" + c.name],
        "Image": cfg.get("Image", ""),
        "ImageID": c.record["Image"],
        "Command": " ".join([c.record["Path"]] + c.record["Args"]),
        "Created": int(rfc3339_seconds(c.record["Created"])),
        "Ports": list(ports),
        "Labels": cfg.get("Labels") or {},
        "State": c.status,
        "Status": status_text(c),
        "HostConfig": {"NetworkMode": c.host_config.get("NetworkMode", "default"),
                       **({"Annotations": c.host_config["Annotations"]} if c.host_config.get("Annotations") else {})},
        "NetworkSettings": {"Networks": networks or {}},
        "Mounts": [mount_point(m) for m in c.record.get("Mounts") or []],
    }
    if sizes is not None:
        row["SizeRw"], row["SizeRootFs"] = sizes
    return row


def status_text(c):
    """The human `Status` column: "Up 3 minutes", "Exited (0) 2 seconds ago", ..."""
    st = c.state
    if c.status == RUNNING:       # "Up 5 seconds (healthy)" with a healthcheck
        return "Up " + human_duration(seconds_since(st["StartedAt"])) + health.status_suffix(st.get("Health"))
    if c.status == PAUSED:
        return "Up " + human_duration(seconds_since(st["StartedAt"])) + " (Paused)"
    if c.status == RESTARTING:
        return f"Restarting ({st['ExitCode']}) " + human_duration(seconds_since(st["FinishedAt"])) + " ago"
    if c.status == CREATED:
        return "Created"
    if c.status == REMOVING:
        return "Removal In Progress"
    if c.status == DEAD:
        return "Dead"
    if st["FinishedAt"] == ZERO_TIME:
        return "Created"
    return f"Exited ({st['ExitCode']}) " + human_duration(seconds_since(st["FinishedAt"])) + " ago"


# -- list filters ---------------------------------------------------------------------------------

def counts(containers):
    """/info's ContainersRunning, ContainersPaused and ContainersStopped."""
    counts = {"running": 0, "paused": 0, "stopped": 0}
    for c in containers:
        if c.status == PAUSED:
            counts["paused"] += 1
        elif c.status in (RUNNING, RESTARTING):
            counts["running"] += 1
        else:
            counts["stopped"] += 1
    return counts


def check_filters(filters):
    for key in filters:
        if key not in FILTERS:
            raise errors.InvalidParameter(f"Invalid filter '{key}'")
    for status in filters.get("status", []):
        if status not in STATUSES:
            raise errors.InvalidParameter(f"Unrecognised filter value for status: {status}")
    for value in filters.get("health", []):
        if value not in health.HEALTH_FILTER_VALUES:
            raise errors.InvalidParameter(f"Unrecognised filter value for health: {value}")


def listing(containers, get, all_, limit, since, before, filters, descends_from):
    """`GET /containers/json`'s containers, newest first: `since`/`before` (ids or names, as
    arguments or filters; `get` resolves them) cut the list by creation time, `limit` keeps the
    first ones, and any of the three lists stopped containers too, as Docker does."""
    check_filters(filters)
    # By creation time, parsed: RFC 3339 as Go writes it trims the fraction's trailing
    # zeros, so the strings do not sort as the times do ("…20.1Z" > "…20.12Z").
    created = lambda c: rfc3339_ns(c.record["Created"])      # noqa: E731
    items = sorted(containers, key=created, reverse=True)
    since = since or (filters.get("since") or [None])[-1]
    before = before or (filters.get("before") or [None])[-1]
    if since:
        pivot = created(get(since))
        items = [c for c in items if created(c) > pivot]
    if before:
        pivot = created(get(before))
        items = [c for c in items if created(c) < pivot]
    if limit and limit > 0 or since or before:
        all_ = True
    result = select(items, all_, filters, descends_from)
    return result[:limit] if limit and limit > 0 else result


def select(items, all_, filters, descends_from):
    """The containers of `items` a listing shows. `descends_from(image_id, ref)` answers the
    `ancestor` filter."""
    result = []
    for c in items:
        if not all_ and not filters.get("status") and c.status not in ACTIVE:
            continue
        if matches(c, filters, descends_from):
            result.append(c)
    return result


def matches(c, filters, descends_from):
    if filters.get("status") and c.status not in filters["status"]:
        return False
    if filters.get("health") and health.filter_value(c.state.get("Health")) not in filters["health"]:
        return False
    if filters.get("exited"):
        if c.status != EXITED or str(c.state["ExitCode"]) not in filters["exited"]:
            return False
    if filters.get("id") and not any(c.id.startswith(v) for v in filters["id"]):
        return False
    if filters.get("name") and not any(re.search(v.lstrip("/"), c.name) for v in filters["name"]):
        return False
    if not filters_mod.labels_match(c.config.get("Labels"), {"label": filters.get("label")}):
        return False
    if filters.get("is-task") and filters_mod.truthy(filters, "is-task", False):
        return False                     # API 1.25: swarm tasks; a node outside a swarm runs none
    if filters.get("publish"):
        return False                     # API 1.28: minidock publishes no ports (host network)
    if filters.get("expose"):            # API 1.28: `port[/proto]` the image or run exposed
        exposed = set(c.config.get("ExposedPorts") or {})
        if not any((v if "/" in v else v + "/tcp") in exposed for v in filters["expose"]):
            return False
    if filters.get("ancestor"):
        if not any(descends_from(c.record["Image"], v) for v in filters["ancestor"]):
            return False
    if filters.get("volume"):
        mounts = c.record.get("Mounts") or []
        names = {m.get("Name") for m in mounts} | {m.get("Destination") for m in mounts} | \
                {m.get("Source") for m in mounts}
        if not any(v in names for v in filters["volume"]):
            return False
    if filters.get("network"):
        # by the mode asked for, or any network joined (by name or id)
        endpoints = (c.record.get("NetworkSettings") or {}).get("Networks") or {}
        joined = set(endpoints) | {ep.get("NetworkID") for ep in endpoints.values()}
        joined |= {c.host_config.get("NetworkMode"), c.network_mode}
        if not any(v in joined for v in filters["network"]):
            return False
    return True


def descends_from(images, image_id, ref):
    """Is `ref` (a name or ID) the image `image_id` or one of that image's parents?"""
    try:
        wanted = images.resolve(ref)
    except errors.MinidockError:
        return False
    current = image_id
    while current:
        if current == wanted:
            return True
        current = images.meta.get(current, {}).get("parent")
    return False
