"""Build cache sources (`docker build --cache-from IMG`, the `cachefrom` parameter of API 1.25).

The classic builder's own cache (builder.py, step 4) finds an image that an earlier build step
made *here*: same parent image, same cache key, remembered in meta.json. An image that came from
elsewhere -- `docker pull`, `docker load` -- has none of that: no parent link, no key. Its only
record of how it was built is its config's `history`, one entry per Dockerfile step with the
step's `created_by` text, next to `rootfs.diff_ids`, one per step that changed files (the others
say `"empty_layer": true`).

`cachefrom` names such images, and the builder then reads their history as a cache, with moby's
rule (`image/cache` in moby, the classic builder's image cache):

1. **A local hit counts only if it is an ancestor of a source.** With cache sources given, the
   local cache's answer is taken only when that image lies on the parent chain of one of the
   sources; otherwise it is ignored (moby does this so that `--cache-from` decides; it is why a
   build with `--cache-from` may not reuse local steps).
2. **A source matches a step** when the current image (the step's parent) is a strict prefix of
   it -- the parent's history entries equal, entry for entry (timestamps included), the source's
   first entries, and its diff_ids the source's first diff_ids (no parent, or one with no history
   and no layers, is a prefix of everything) -- and the source's next history entry has the
   step's `created_by` exactly (`/bin/sh -c echo hi`, `/bin/sh -c #(nop)  ENV A=1`,
   `/bin/sh -c #(nop) COPY file:<sha256> in /x `: for COPY/ADD the text holds the content's
   checksum, so changed files do not match).
3. **The hit.** If that entry is the source's last one, the answer is the source image itself
   (its parent is set to the current image, so `docker history` and the local cache see the
   chain). Otherwise a new image is *restored*: the parent's history plus that entry verbatim,
   the parent's diff_ids plus the entry's layer when it has one (the layer is already stored: it
   is one of the source's). From then on this stage follows that one source only (moby narrows
   the list "to avoid jumping to a different target"); each stage starts again from all of them.
4. A name that is not a local image is skipped with a warning in the daemon log (no pull), as
   dockerd does. Rule 1 still holds: with `cachefrom` given and none of its images here, the
   local cache is not used at all.

What differs from moby, honestly: moby stores the step's probe config (its `Cmd` being the
`#(nop)` text) as the restored image's config; minidock stores the config the step produces,
because its builder carries a stage's state in the images themselves. So restored images have
other IDs than moby's would, and the same images each time (their config bytes are derived
from the source's history, not from the clock). Restored images get no local cache key, as in
moby, where they carry no ContainerConfig the local cache could match: a later build without
`--cache-from` does not reuse them.

What you can observe: `docker build --cache-from app:1` after `docker rmi app:1 && docker load`
prints ` ---> Using cache` for the steps the loaded image's history covers, and its last step's
image is `app:1` itself; without `--cache-from` every step runs again.
"""

import json
import logging

from minidock import errors, imagecreate

log = logging.getLogger("minidock.buildcache")


class Sources:
    """The cache sources of one build stage: the `cachefrom` images that exist here."""

    def __init__(self, images, names):
        self.images = images
        self.asked = bool(names)
        self.sources = []
        for name in names:
            try:
                self.sources.append(images.resolve(name))
            except errors.NotFound:
                log.warning("Could not look up %s for cache resolution, skipping", name)

    def __bool__(self):
        return bool(self.sources)

    def accepts_local(self, hit):
        """Rule 1: with sources, a local cache hit counts only on a source's parent chain."""
        return not self.asked or any(hit in self._ancestors(s) for s in self.sources)

    def _ancestors(self, image_id):
        seen, parent = set(), self.images.meta.get(image_id, {}).get("parent")
        while parent and parent not in seen:       # a loop in bad metadata ends the walk
            seen.add(parent)
            parent = self.images.meta.get(parent, {}).get("parent")
        return seen

    def lookup(self, parent, created_by, config):
        """Rules 2 and 3: the image a source offers for the step `created_by` on `parent`
        (None: scratch), whose result has the config `config`; or None."""
        base = self.images.configs.get(parent) if parent else None
        base_history = list((base or {}).get("history") or [])
        base_diffs = list((base or {}).get("rootfs", {}).get("diff_ids") or [])
        n = len(base_history)
        for source in self.sources:
            target = self.images.configs.get(source)
            if target is None:                      # removed since the stage began
                continue
            history = list(target.get("history") or [])
            diffs = list(target.get("rootfs", {}).get("diff_ids") or [])
            if not _is_prefix(base_history, base_diffs, history, diffs):
                continue
            entry = history[n]
            if entry.get("created_by", "") != created_by:
                continue
            layer = sum(1 for h in history[:n] if not h.get("empty_layer"))
            if not entry.get("empty_layer") and layer >= len(diffs):
                continue                            # history and layers disagree: unusable
            if n == len(history) - 1:
                if parent:
                    self.images.set_parent(source, parent)
                return source
            image = self._restore(parent, base_diffs, history, diffs, n, layer, config, target)
            self.sources = [source]
            return image
        return None

    def _restore(self, parent, base_diffs, history, diffs, n, layer, config, target):
        """A new image: the parent's history and layers plus the source's entry `n`."""
        entry = history[n]
        new_diffs = list(base_diffs)
        if not entry.get("empty_layer"):
            # The layer of entry n is the diff_id after those of the non-empty entries before it.
            new_diffs.append(diffs[layer])
        raw = imagecreate.config_bytes(
            new_diffs, json.loads(json.dumps(config)), history[:n + 1],
            created=entry.get("created"), author=entry.get("author") or target.get("author"),
            architecture=target.get("architecture"))
        image = self.images.add_config(raw, parent=parent)
        if parent:
            self.images.set_parent(image, parent)   # add_config keeps the meta of a known image
        return image


def _is_prefix(base_history, base_diffs, history, diffs):
    """Rule 2's prefix test (moby's isValidParent)."""
    if not history:
        return False
    if not base_history and not base_diffs:
        return True
    if len(base_history) >= len(history) or len(base_diffs) > len(diffs):
        return False
    return history[:len(base_history)] == base_history and diffs[:len(base_diffs)] == base_diffs

