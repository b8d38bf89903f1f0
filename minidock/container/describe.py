"""What the API shows of a container: the inspect document, list rows, list filters, status text.

These are the version-neutral models of the newest API shape; older shapes are derived from
them in minidock/api/versions.py. `docker ps` shows `status_text` ("Up 3 minutes", "Exited (0)
2 seconds ago") and filters rows with `--filter key=value` (`FILTERS` below). Its rows are kept
encoded between calls while their records do not change (`RowCache`).
"""

import copy
import functools
import json
import re
from json.encoder import encode_basestring_ascii

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


# -- the list's row cache --------------------------------------------------------------------------
# `docker ps -a` with 1,000 containers asks for 1,000 rows that, between two calls, have mostly
# not changed, and building each row (summary(), the networks' settings, the version steps) and
# encoding it as JSON costs ~25 us: 25 ms a call. The cache keeps each row as encoded JSON, per
# version shape, with holes for the fields that change without the record changing (VOLATILE:
# the Status text depends on now, the sizes on the disk); a call fills the holes and joins.
# A cached row is valid while the record fields it was built from are unchanged: row_inputs()
# names them, and every call compares them by value with the copy kept when the row was
# encoded. No code that changes a record has to remember to invalidate anything.

VOLATILE = ("Status", "SizeRw", "SizeRootFs")


def row_inputs(c):
    """Every record field summary() and the networks' per-container summaries read, but the
    volatile ones (tests/test_list_rows.py changes every field of a record to check this)."""
    r = c.record
    cfg, hc = r["Config"], r["HostConfig"]
    return (r["Id"], r["Name"], r["Image"], r["Path"], r["Args"], r["Created"], r["State"]["Status"],
            cfg.get("Image"), cfg.get("Labels"), cfg.get("ExposedPorts"), hc.get("NetworkMode"),
            hc.get("Annotations"), r.get("NetworkSettings"), r.get("Mounts"))


def _copy(value):
    """A deep copy of a record's plain data, several times faster than copy.deepcopy; the
    strings and numbers themselves are shared (they are immutable), which also makes comparing
    the copy with the record fast: equal parts are the same objects."""
    kind = type(value)
    if kind is dict:
        return {k: _copy(v) for k, v in value.items()}
    if kind is list:
        return [_copy(v) for v in value]
    if kind is tuple:
        return tuple([_copy(v) for v in value])
    if kind in (str, int, float, bool) or value is None:
        return value
    return copy.deepcopy(value)


class RowCache:
    """`GET /containers/json` rows as JSON bytes, cached per container and version shape.

    `build(c, sizes)` is the straightforward row (summary() with the networks' parts); `shaper`
    is versions.item_shaper()'s (key, shape one row) for the request's version. encode() gives
    exactly json.dumps(rows shaped).encode(), rows built now."""

    def __init__(self, build):
        self.build = build
        self.entries = {}            # container id -> [copy of row_inputs, {template key: template}]

    def encode(self, containers, shaper, sizes_of=None):
        shape_key, shape = shaper
        tkey = (shape_key, sizes_of is not None)
        parts = [b"["]
        entries, texts = self.entries, {}        # texts: Status text -> its JSON, once per call
        for c in containers:
            inputs = row_inputs(c)
            entry = entries.get(inputs[0])
            if entry is None or entry[0] != inputs:
                entry = entries[inputs[0]] = [_copy(inputs), {}]
            sizes = sizes_of(c) if sizes_of is not None else None
            template = entry[1].get(tkey)
            if template is None:
                template = self._template(c, entry, tkey, shape, sizes)
            if template is False:                # a shape that changes a volatile field: no holes
                parts += (json.dumps(shape(self.build(c, sizes))).encode(), b", ")
                continue
            if len(template) == 3 and template[1] == "Status":      # the common case, unrolled
                text = status_text(c)
                encoded = texts.get(text)
                if encoded is None:
                    encoded = texts[text] = encode_basestring_ascii(text).encode()
                parts += (template[0], encoded, template[2], b", ")
                continue
            for i, piece in enumerate(template):
                if not i & 1:
                    parts.append(piece)
                elif piece == "Status":
                    text = status_text(c)
                    encoded = texts.get(text)
                    if encoded is None:
                        encoded = texts[text] = encode_basestring_ascii(text).encode()
                    parts.append(encoded)
                else:                            # SizeRw, SizeRootFs: (rw, rootfs) in `sizes`
                    parts.append(json.dumps(sizes[0 if piece == "SizeRw" else 1]).encode())
            parts.append(b", ")
        if len(parts) > 1:
            parts.pop()                          # the last separator
        parts.append(b"]")
        return b"".join(parts)

    def _template(self, c, entry, tkey, shape, sizes):
        """The row of `c` encoded as (JSON, hole, JSON, hole, ..., JSON), each hole the name of
        a VOLATILE field; False when the shape does not show a volatile field as the row has
        it. Kept only when c's inputs did not change while it was built."""
        row = self.build(c, sizes)
        shaped = shape(row)
        # The row's fields in order, runs of ordinary ones as one dict each (encoded at once:
        # json.dumps of a dict is "{" + its items joined by ", " + "}"), volatile ones as holes.
        runs, run = [], {}
        for key, value in shaped.items():
            if key not in VOLATILE:
                run[key] = value
            elif key in row and value == row[key]:
                runs += (run, key)
                run = {}
            else:
                return self._keep(c, entry, tkey, False)
        runs.append(run)
        template, static = [], "{"
        for part in runs:
            if isinstance(part, dict):
                text = json.dumps(part)[1:-1]
                if text:
                    static += (", " if static != "{" else "") + text
            else:
                static += (", " if static != "{" else "") + encode_basestring_ascii(part) + ": "
                template += (static.encode(), part)
                static = ""
        template.append((static + "}").encode())
        return self._keep(c, entry, tkey, tuple(template))

    @staticmethod
    def _keep(c, entry, tkey, template):
        if row_inputs(c) == entry[0]:
            entry[1][tkey] = template
        return template

    def forget_all_but(self, ids):
        """Drop the rows of containers that are gone."""
        for cid in [cid for cid in self.entries if cid not in ids]:
            self.entries.pop(cid, None)


def status_text(c):
    """The human `Status` column: "Up 3 minutes", "Exited (0) 2 seconds ago", ..."""
    st = c.record["State"]
    status = st["Status"]
    if status == RUNNING:         # "Up 5 seconds (healthy)" with a healthcheck
        return "Up " + human_duration(seconds_since(st["StartedAt"])) + health.status_suffix(st.get("Health"))
    if status == PAUSED:
        return "Up " + human_duration(seconds_since(st["StartedAt"])) + " (Paused)"
    if status == RESTARTING:
        return f"Restarting ({st['ExitCode']}) " + human_duration(seconds_since(st["FinishedAt"])) + " ago"
    if status == CREATED:
        return "Created"
    if status == REMOVING:
        return "Removal In Progress"
    if status == DEAD:
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
    for key in ("publish", "expose"):
        port_keys(tuple(filters.get(key, ())))        # InvalidParameter for a malformed one


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
    if not any(filters.values()):        # `docker ps -a`: no filter to test, row by row
        return items if all_ else [c for c in items if c.status in ACTIVE]
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
    if filters.get("publish"):           # API 1.28: a container port published while it runs
        ports = (c.record.get("NetworkSettings") or {}).get("Ports") or {} if c.running else {}
        if not port_keys(tuple(filters["publish"])) & {k for k, binds in ports.items() if binds}:
            return False
    if filters.get("expose"):            # API 1.28: `port[/proto]` the image or run exposed
        if not port_keys(tuple(filters["expose"])) & set(c.config.get("ExposedPorts") or {}):
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


@functools.lru_cache(maxsize=64)
def port_keys(values):
    """`publish`/`expose` filter values (a tuple), `port[/proto]` or `start-end[/proto]` (tcp
    when no protocol is given), as the "port/proto" keys of ExposedPorts and
    NetworkSettings.Ports. Cached: a listing asks once per container."""
    keys = set()
    for value in values:
        ports, _, proto = value.partition("/")
        start, dash, end = ports.partition("-")
        end = end if dash else start
        if not start.isdigit() or not end.isdigit() or int(end) < int(start):
            raise errors.InvalidParameter(f"invalid port filter value {value!r}: want port[/proto] or "
                                          f"start-end[/proto]")
        keys |= {f"{port}/{proto or 'tcp'}" for port in range(int(start), int(end) + 1)}
    return frozenset(keys)


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
