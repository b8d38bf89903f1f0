"""The build context: .dockerignore rules, walking the context, and COPY/ADD source matching.

`docker build DIR` sends DIR to the daemon as a tar stream: the *build context*. Only what is in
it can be COPY'd or ADD'ed, and a `.dockerignore` file at its root keeps things out of it. This
module is separate from dockerfile.py because it is about files, not syntax: the builder uses it
to decide which paths of the context exist for COPY, and to fingerprint them for the cache.

.dockerignore format (Docker's patternmatcher rules):

- one pattern per line; a line whose *first* character is `#` is a comment; surrounding blanks
  are trimmed and blank lines skipped;
- each pattern is cleaned like Go's filepath.Clean (`./a//b/` -> `a/b`) and a leading `/` is
  dropped: every pattern is relative to the context root;
- matching is Go's filepath.Match -- `*` any run of characters except `/`, `?` one character
  except `/`, `[a-z]`/`[^a-z]` classes, `\\` escapes the next character -- plus `**`, which
  matches any number of directories, zero included (`**/*.go`, `a/**/b`, a trailing `a/**`);
- a pattern excludes a path if it matches the path *or one of its parent directories*, so
  `build` excludes `build/x/y` too;
- a pattern starting with `!` is an exception that re-includes what earlier patterns excluded;
  patterns are evaluated in order and the last one that matches wins;
- the client (and this module's walkers, when told with `keep=`) still sends the Dockerfile and
  `.dockerignore` even when a pattern excludes them; they just are not COPY-able.

COPY/ADD sources are separate from the ignore rules: a source is a path relative to the context
root (a leading `/` means the root too); if it contains `*`, `?` or `[` it is matched with
filepath.Match against every path of the context (a matched directory is taken whole), otherwise
it must exist. `checksum()` hashes what the sources name (paths, types, permission bits,
contents, link targets -- not times or owners) so the builder can tell when a cached COPY step is
stale.
"""

import hashlib
import os
import posixpath
import re
import stat

from minidock import errors


def read_patterns(text):
    """The cleaned pattern list of a .dockerignore file (str or bytes)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    if text.startswith("\ufeff"):
        text = text[1:]
    patterns = []
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        pattern = line.strip()
        if not pattern:
            continue
        invert = pattern.startswith("!")
        if invert:
            pattern = pattern[1:].strip()
        if pattern:
            pattern = posixpath.normpath(pattern)
            if pattern.startswith("//"):
                pattern = "/" + pattern.lstrip("/")   # normpath keeps a leading "//"
            if len(pattern) > 1 and pattern.startswith("/"):
                pattern = pattern[1:]
        patterns.append("!" + pattern if invert else pattern)
    return patterns


def _translate(pattern, doublestar):
    """A Go filepath.Match pattern (with `**` if `doublestar`) -> an anchored regex string."""
    out = []
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        i += 1
        if ch == "*":
            if doublestar and i < n and pattern[i] == "*":
                i += 1
                if i < n and pattern[i] == "/":
                    i += 1                     # "**/" is "**": it may match no directory
                out.append(".*" if i == n else "(?:.*/)?")
            else:
                out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "\\":
            if i < n:
                out.append(re.escape(pattern[i]))
                i += 1
            else:
                raise errors.InvalidParameter(f"syntax error in pattern: {pattern}")
        elif ch == "[":
            cls, i = _translate_class(pattern, i)
            out.append(cls)
        else:
            out.append(re.escape(ch))
    return "^" + "".join(out) + "$"


def _translate_class(pattern, i):
    """`[^a-z\\]]` starting after the `[` -> (regex class, index after the `]`)."""
    n = len(pattern)
    parts = ["["]
    if i < n and pattern[i] == "^":
        parts.append("^")
        i += 1
    first = True
    while True:
        if i >= n:
            raise errors.InvalidParameter(f"syntax error in pattern: {pattern}")
        ch = pattern[i]
        if ch == "]":
            if first:                          # Go refuses an empty class
                raise errors.InvalidParameter(f"syntax error in pattern: {pattern}")
            return "".join(parts) + "]", i + 1
        first = False
        if ch == "\\":
            i += 1
            if i >= n:
                raise errors.InvalidParameter(f"syntax error in pattern: {pattern}")
            ch = pattern[i]
        elif ch in "-]":
            raise errors.InvalidParameter(f"syntax error in pattern: {pattern}")
        i += 1
        parts.append(re.escape(ch))
        if i + 1 < n and pattern[i] == "-" and pattern[i + 1] != "]":
            hi = pattern[i + 1]
            i += 2
            if hi == "\\":
                if i >= n:
                    raise errors.InvalidParameter(f"syntax error in pattern: {pattern}")
                hi = pattern[i]
                i += 1
            if hi < ch:
                raise errors.InvalidParameter(f"syntax error in pattern: {pattern}")
            parts.append("-" + re.escape(hi))


def has_wildcards(path):
    """True if `path` has an unescaped `*`, `?` or `[` (so COPY matches instead of stat'ing)."""
    i = 0
    while i < len(path):
        if path[i] == "\\":
            i += 2
            continue
        if path[i] in "*?[":
            return True
        i += 1
    return False


def go_match(pattern, name):
    """Go's filepath.Match(pattern, name) on `/`-separated paths."""
    return re.match(_translate(pattern, doublestar=False), name, re.DOTALL) is not None


class Ignore:
    """Compiled .dockerignore rules. `Ignore.from_text(text)` or `Ignore(patterns)`."""

    def __init__(self, patterns=()):
        self.rules = []                        # [(exception, regex, pattern)]
        for pattern in patterns:
            exception = pattern.startswith("!")
            body = pattern[1:] if exception else pattern
            if exception and body == "":
                raise errors.InvalidParameter('illegal exclusion pattern: "!"')
            body = posixpath.normpath(body) if body else body
            regex = re.compile(_translate(body, doublestar=True), re.DOTALL)
            self.rules.append((exception, regex, pattern))
        self.has_exceptions = any(rule[0] for rule in self.rules)

    @classmethod
    def from_text(cls, text):
        return cls(read_patterns(text))

    def excludes(self, path):
        """True if the context path (relative, `/`-separated) is excluded by the rules."""
        path = _clean(path)
        parents = path.split("/")[:-1]
        prefixes = ["/".join(parents[:i + 1]) for i in range(len(parents))]
        excluded = False
        for exception, regex, _ in self.rules:
            # A pattern can only flip the current answer: skip exclusions once excluded and
            # exceptions while included.
            if exception != excluded:
                continue
            hit = regex.match(path) is not None or any(regex.match(p) for p in prefixes)
            if hit:
                excluded = not exception
        return excluded


def _clean(path):
    path = posixpath.normpath(path.replace(os.sep, "/")).lstrip("/")
    return "" if path == "." else path


def walk(root, ignore=None, keep=()):
    """Yield the included paths of a context directory, relative and `/`-separated, parents
    before children, sorted by name. Symlinks are reported, never followed. Paths in `keep`
    (say the Dockerfile and ".dockerignore") are yielded even when excluded."""
    keep = {_clean(k) for k in keep}

    def visit(rel_dir):
        with os.scandir(os.path.join(root, rel_dir) if rel_dir else root) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            excluded = ignore is not None and rel not in keep and ignore.excludes(rel)
            if not excluded:
                yield rel
            if entry.is_dir(follow_symlinks=False):
                # An excluded directory still has to be entered when an exception (or a kept
                # file) could bring something inside it back.
                if excluded and not ignore.has_exceptions and \
                        not any(k.startswith(rel + "/") for k in keep):
                    continue
                yield from visit(rel)

    yield from visit("")


def walk_tar(tar, ignore=None, keep=()):
    """Yield the TarInfo members of an open tarfile.TarFile that the rules include (same rules
    as walk(); member names are cleaned of `./` and trailing `/` before matching)."""
    keep = {_clean(k) for k in keep}
    for member in tar:
        rel = _clean(member.name)
        if rel == "":
            continue                           # the "./" entry of the context root
        if ignore is not None and rel not in keep and ignore.excludes(rel):
            continue
        yield member


def prune(root, ignore, keep=()):
    """Delete the excluded paths of an extracted context directory in place (the kept ones
    stay). Returns the number of paths removed."""
    keep = {_clean(k) for k in keep}
    removed = 0
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        rel_dir = _clean(os.path.relpath(dirpath, root))
        for name in filenames + dirnames:
            rel = f"{rel_dir}/{name}" if rel_dir else name
            full = os.path.join(dirpath, name)
            if rel in keep or not ignore.excludes(rel):
                continue
            if os.path.isdir(full) and not os.path.islink(full):
                if os.listdir(full):
                    continue                   # holds something an exception re-included
                os.rmdir(full)
            else:
                os.unlink(full)
            removed += 1
    return removed


def clean_source(source):
    """A COPY/ADD source as a context-relative path ("" is the root); ".." may not leave it."""
    stripped = source.lstrip("/")
    rel = posixpath.normpath(stripped) if stripped else "."
    if rel == ".." or rel.startswith("../"):
        raise errors.InvalidParameter(f"Forbidden path outside the build context: {source}")
    return "" if rel == "." else rel


def match_sources(root, source, ignore=None):
    """The context paths one COPY/ADD source names, relative to `root` ("" for the root).

    Without wildcards the path must exist (and not be excluded); with them, every context path
    matching it by filepath.Match is returned, a matched directory standing for its whole tree.
    """
    rel = clean_source(source)
    if not has_wildcards(rel):
        rel = re.sub(r"\\(.)", r"\1", rel)     # `a\*` names the file "a*"
        full = os.path.join(root, rel) if rel else root
        if not os.path.lexists(full) or (rel and ignore is not None and ignore.excludes(rel)):
            raise errors.NotFound("file not found in build context or excluded by "
                                  f".dockerignore: stat {rel or '.'}: file does not exist")
        return [rel]
    regex = re.compile(_translate(rel, doublestar=False), re.DOTALL)
    matched = []
    for path in walk(root, ignore):
        if matched and path.startswith(matched[-1] + "/"):
            continue                           # inside a directory already taken whole
        if regex.match(path):
            matched.append(path)
    if not matched:
        raise errors.NotFound("no source files were specified")
    return matched


def checksum(root, paths, ignore=None):
    """A "sha256:<hex>" fingerprint of what `paths` (from match_sources) name in the context:
    for every file below them, its path, type, permission bits and contents (or link target).
    Times and owners are left out, as Docker's cache does, so a fresh checkout still hits."""
    digest = hashlib.sha256()

    def add(rel):
        full = os.path.join(root, rel) if rel else root
        st = os.lstat(full)
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISDIR(st.st_mode):
            digest.update(f"d\0{rel}\0{mode:o}\0".encode())
            for name in sorted(os.listdir(full)):
                child = f"{rel}/{name}" if rel else name
                if ignore is not None and ignore.excludes(child):
                    continue
                add(child)
        elif stat.S_ISLNK(st.st_mode):
            digest.update(f"l\0{rel}\0{mode:o}\0{os.readlink(full)}\0".encode())
        elif stat.S_ISREG(st.st_mode):
            content = hashlib.sha256()
            with open(full, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    content.update(block)
            digest.update(f"f\0{rel}\0{mode:o}\0{st.st_size}\0{content.hexdigest()}\0".encode())
        else:
            digest.update(f"o\0{rel}\0{stat.S_IFMT(st.st_mode):o}\0{mode:o}\0".encode())

    for rel in paths:
        add(rel)
    return "sha256:" + digest.hexdigest()
