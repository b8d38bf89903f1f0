"""Docker's `filters` query parameter, the parts every list and prune endpoint shares.

`filters` is JSON: `{"label": ["env=prod", "team"], "until": ["24h"]}`, a map of lists (the
router reads it, `ApiRequest.filters`). Each endpoint accepts its own keys and refuses others with
`invalid filter 'x'`; these meanings are common to all:

    label=k        the object has label k            (every label= filter must match)
    label=k=v      ... with the value v
    label!=k[=v]   the object does NOT have it        (since API 1.29, on prune endpoints)
    until=T        created before T: a unix or RFC 3339 timestamp, or a Go duration before now
"""

from minidock import errors, times


def check_keys(filters, allowed):
    unknown = set(filters) - set(allowed)
    if unknown:
        raise errors.InvalidParameter(f"invalid filter '{sorted(unknown)[0]}'")


def _has(labels, item):
    key, eq, value = item.partition("=")
    return key in labels and (not eq or labels[key] == value)


def labels_match(labels, filters):
    """The `label` filters all match `labels` (a dict) and no `label!` filter does."""
    labels = labels or {}
    return all(_has(labels, item) for item in filters.get("label") or []) and \
        not any(_has(labels, item) for item in filters.get("label!") or [])


def until_ns(filters):
    """The `until` filter as unix nanoseconds, or None."""
    values = filters.get("until") or []
    return times.parse_filter_time(values[-1]) if values else None


def truthy(filters, key, default):
    """A boolean filter (`dangling=true`, `all=1`)."""
    values = filters.get(key) or []
    if not values:
        return default
    if values[-1].lower() in ("1", "true"):
        return True
    if values[-1].lower() in ("0", "false"):
        return False
    raise errors.InvalidParameter(f"invalid filter '{key}={values[-1]}'")
