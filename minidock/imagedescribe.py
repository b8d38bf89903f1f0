"""Describing images for the API: the rows of `docker images`, `docker inspect`, `docker history`.

The image store (images.py) keeps configs and names; this module reads them into the documents
the API returns, in their newest shape (api/versions.py shapes them for older clients):

    list_rows   GET /images/json: one row per image, newest first, with the list filters
                (dangling, label, reference, before, since, until) and the old `filter` glob
    inspect     GET /images/{name}/json: the config, names, sizes, layers and the graph driver
    history     GET /images/{name}/history: one row per history entry, newest first, each
                with the image it made (or `<missing>` for steps that are not images here)

What you can observe: `docker images -a` shows the intermediate images a build left; `docker
history` a `<missing>` row for every step of a pulled image.
"""

import fnmatch

from minidock import errors, filters as filter_words, layers as layers_mod, times
from minidock.imagecreate import full_config


def list_rows(store, all=False, filters=None, name_filter=None, digests=False):
    """Rows for GET /images/json, newest first.

    `filters` is Docker's map of lists: dangling=true|false, label=k or k=v, reference=glob,
    before=/since=<image>, until=<timestamp or duration>. `name_filter` is the old `filter`
    parameter (a repo glob). An untagged image has empty RepoTags (API versions before 1.43
    show placeholders, see api/versions.py).
    """
    filters = filters or {}
    with store.lock:
        rows = []
        parents = {m.get("parent") for m in store.meta.values()}
        before = since = None
        if filters.get("before"):
            before = times.unix_seconds(store.configs[store.resolve(filters["before"][0])].get("created"))
        if filters.get("since"):
            since = times.unix_seconds(store.configs[store.resolve(filters["since"][0])].get("created"))
        until = times.parse_filter_time(filters["until"][0]) if filters.get("until") else None
        for image_id, config in store.configs.items():
            tags, digs = store.tags_of(image_id), store.digests_of(image_id)
            created = times.unix_seconds(config.get("created"))
            labels = (config.get("config") or {}).get("Labels") or {}
            dangling = not tags and not digs
            if not all and dangling and image_id in parents and not filters.get("dangling"):
                continue                     # an intermediate image
            if "dangling" in filters:
                want = filters["dangling"][0].lower() in ("true", "1")
                if dangling != want:
                    continue
            if not filter_words.labels_match(labels, filters):
                continue
            patterns = list(filters.get("reference") or []) + ([name_filter] if name_filter else [])
            if patterns and not any(_ref_matches(t, p) for t in tags for p in patterns):
                continue
            if before is not None and created >= before:
                continue
            if since is not None and created <= since:
                continue
            if until is not None and times.rfc3339_ns(config.get("created") or "1970-01-01T00:00:00Z") > until:
                continue
            size = store.size(image_id)
            rows.append({
                "Id": image_id,
                "ParentId": store.meta[image_id].get("parent") or "",
                "RepoTags": tags,
                "RepoDigests": digs,
                "Created": created,
                "Size": size,
                "VirtualSize": size,
                "SharedSize": -1,
                "Containers": -1,
                "Labels": labels or {},
            })
        rows.sort(key=lambda r: r["Created"], reverse=True)
        return rows

def inspect(store, name):
    """The GET /images/(name)/json document (newest shape; older versions drop keys)."""
    image_id = store.resolve(name)
    with store.lock:
        c = store.configs[image_id]
        size = store.size(image_id)
        chains = layers_mod.chain_ids(c.get("rootfs", {}).get("diff_ids") or [])
        graph = {"Name": store.layers.driver_name(), "Data": None}
        if chains:
            graph["Data"] = {"MergedDir": "", "UpperDir": store.layers.diff_dir(chains[-1]),
                             "LowerDir": ":".join(store.layers.diff_dir(x) for x in reversed(chains[:-1])),
                             "WorkDir": ""}
        return {
            "Id": image_id,
            "RepoTags": store.tags_of(image_id),
            "RepoDigests": store.digests_of(image_id),
            "Parent": store.meta[image_id].get("parent") or "",
            "Comment": c.get("comment", ""),
            "Created": c.get("created", ""),
            "Container": c.get("container", ""),
            "ContainerConfig": full_config(c.get("container_config")),
            "DockerVersion": c.get("docker_version", ""),
            "Author": c.get("author", ""),
            "Config": full_config(c.get("config")),
            "Architecture": c.get("architecture", ""),
            "Os": c.get("os", "linux"),
            "Size": size,
            "VirtualSize": size,
            "GraphDriver": graph,
            "RootFS": {"Type": "layers", "Layers": list(c.get("rootfs", {}).get("diff_ids") or [])},
            "Metadata": {"LastTagTime": store.meta[image_id].get("last_tag_time", "0001-01-01T00:00:00Z")},
        }

def history(store, name):
    """Rows for GET /images/(name)/history, newest first (Docker's shape).

    Entries map onto layers in order, skipping `empty_layer` ones. An entry gets an image ID
    when it is the top of this image or of a stored ancestor, "<missing>" otherwise.
    """
    image_id = store.resolve(name)
    with store.lock:
        c = store.configs[image_id]
        history = c.get("history") or [{"created": c.get("created"), "comment": c.get("comment", "")}]
        chains = layers_mod.chain_ids(c.get("rootfs", {}).get("diff_ids") or [])
        # ancestors by how many history entries they have
        tops = {}
        walk = image_id
        while walk and walk in store.configs:
            tops.setdefault(len(store.configs[walk].get("history") or [1]), walk)
            walk = store.meta.get(walk, {}).get("parent")
        rows, layer_index = [], 0
        for i, h in enumerate(history):
            size = 0
            if not h.get("empty_layer"):
                if layer_index < len(chains):
                    try:
                        size = store.layers.size(chains[layer_index])
                    except errors.NotFound:
                        pass
                layer_index += 1
            owner = tops.get(i + 1)
            rows.append({"Id": owner or "<missing>", "Created": times.unix_seconds(h.get("created")),
                         "CreatedBy": h.get("created_by", ""),
                         "Tags": (store.tags_of(owner) or None) if owner else None,
                         "Size": size, "Comment": h.get("comment", "")})
        return rows[::-1]


def _ref_matches(tag, pattern):
    repo = tag.rsplit(":", 1)[0]
    if ":" in pattern.rsplit("/", 1)[-1]:
        return fnmatch.fnmatchcase(tag, pattern)
    return fnmatch.fnmatchcase(repo, pattern)
