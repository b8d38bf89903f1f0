"""Tests for minidock.dockerignore: Docker's .dockerignore rules as a table, and the context
helpers (walk, walk_tar, prune, COPY source matching, checksums) on real files in a temp dir."""

import io
import os
import tarfile

import pytest

from minidock import dockerignore, errors


def test_read_patterns_cleans_like_docker():
    text = ("# comment\n"
            "\n"
            "   spaced.txt   \n"
            "./dot/file\n"
            "/abs/dir/\n"
            "a//b/../c\n"
            "!  keep.me\n"
            "!/abs/dir/keep\n"
            "  # not a comment: only column 0 starts one\n"
            "/\n")
    assert dockerignore.read_patterns(text) == [
        "spaced.txt", "dot/file", "abs/dir", "a/c", "!keep.me", "!abs/dir/keep",
        "# not a comment: only column 0 starts one", "/"]


# (patterns, path, excluded?)
CASES = [
    (["*.md"], "README.md", True),
    (["*.md"], "docs/README.md", False),             # * does not cross "/"
    (["**/*.md"], "docs/a/README.md", True),
    (["**/*.md"], "README.md", True),                 # ** may match zero directories
    (["docs/**"], "docs/a/b", True),
    (["docs/**"], "docs", False),
    (["a/**/z"], "a/z", True),
    (["a/**/z"], "a/b/c/z", True),
    (["a/**/z"], "a/b/zz", False),
    (["**"], "anything/at/all", True),
    (["build"], "build", True),
    (["build"], "build/deep/file.o", True),           # a directory match covers its contents
    (["build"], "src/build", False),                  # patterns are anchored at the root
    (["*/build"], "src/build/x", True),
    (["?.txt"], "a.txt", True),
    (["?.txt"], "ab.txt", False),
    (["[a-c].txt"], "b.txt", True),
    (["[^a-c].txt"], "b.txt", False),
    (["[^a-c].txt"], "d.txt", True),
    (["\\*.txt"], "*.txt", True),
    (["\\*.txt"], "a.txt", False),
    (["file.(1)"], "file.(1)", True),                 # regex characters are literal
    (["*", "!keep"], "keep", False),
    (["*", "!keep"], "other", True),
    (["!keep", "*"], "keep", True),                   # the last matching pattern wins
    (["dir", "!dir/keep"], "dir/keep", False),
    (["dir", "!dir/keep"], "dir/keep/inner", False),
    (["dir", "!dir/keep"], "dir/other", True),
    (["dir", "!dir/keep", "dir/keep/secret"], "dir/keep/secret", True),
    (["**/*.log", "!important.log"], "important.log", False),
    (["**/*.log", "!important.log"], "sub/important.log", True),
    (["/abs/"], "abs/x", True),
    (["./rel"], "rel", True),
]


@pytest.mark.parametrize("patterns,path,excluded", CASES)
def test_excludes(patterns, path, excluded):
    ignore = dockerignore.Ignore(dockerignore.read_patterns("\n".join(patterns)))
    assert ignore.excludes(path) is excluded


def test_lone_exclamation_is_an_error():
    with pytest.raises(errors.InvalidParameter) as info:
        dockerignore.Ignore.from_text("!\n")
    assert info.value.message == 'illegal exclusion pattern: "!"'


def test_go_match():
    assert dockerignore.go_match("*.txt", "a.txt")
    assert not dockerignore.go_match("*.txt", "d/a.txt")
    assert dockerignore.go_match("d/*", "d/a.txt")
    assert dockerignore.go_match("[a-c]?", "b1") and not dockerignore.go_match("[a-c]?", "d1")
    assert dockerignore.go_match("a\\?", "a?") and not dockerignore.go_match("a\\?", "ab")
    assert dockerignore.has_wildcards("a*") and not dockerignore.has_wildcards("a\\*")
    with pytest.raises(errors.InvalidParameter):
        dockerignore.go_match("[]a]", "a")     # Go refuses an empty character class


def make_context(root):
    files = {
        "Dockerfile": "FROM a\n",
        ".dockerignore": "",
        "app.py": "print(1)\n",
        "README.md": "# hi\n",
        "notes.txt": "n\n",
        "data.txt": "d\n",
        "src/main.py": "main\n",
        "src/util/helpers.py": "h\n",
        "src/util/cache.pyc": "bin\n",
        "build/out.o": "obj\n",
        "build/keep/me.txt": "kept\n",
        "node_modules/x/index.js": "js\n",
        "star*.txt": "literal star\n",
    }
    for rel, content in files.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(content)
    os.symlink("app.py", os.path.join(root, "link.py"))
    return root


IGNORE = "Dockerfile\n.dockerignore\n**/*.pyc\nbuild\n!build/keep\nnode_modules\n*.md\n"


def test_walk_respects_rules_and_keeps_dockerfile(tmp_path):
    root = make_context(str(tmp_path))
    ignore = dockerignore.Ignore.from_text(IGNORE)
    seen = list(dockerignore.walk(root, ignore, keep=["Dockerfile", ".dockerignore"]))
    assert seen == [".dockerignore", "Dockerfile", "app.py", "build/keep", "build/keep/me.txt",
                    "data.txt", "link.py", "notes.txt", "src", "src/main.py", "src/util",
                    "src/util/helpers.py", "star*.txt"]
    # Without keep, the Dockerfile is not part of what COPY can see.
    assert "Dockerfile" not in list(dockerignore.walk(root, ignore))
    # Without rules, everything, parents first.
    everything = list(dockerignore.walk(root))
    assert everything.index("node_modules") < everything.index("node_modules/x/index.js")


def test_walk_skips_excluded_trees_without_exceptions(tmp_path):
    root = make_context(str(tmp_path))
    os.chmod(os.path.join(root, "node_modules", "x"), 0o000)  # would fail if entered...
    try:
        ignore = dockerignore.Ignore.from_text("node_modules\n")
        if os.geteuid() != 0:                  # ...which only non-root can observe
            assert "node_modules/x" not in list(dockerignore.walk(root, ignore))
        assert not any(p.startswith("node_modules") for p in dockerignore.walk(root, ignore))
    finally:
        os.chmod(os.path.join(root, "node_modules", "x"), 0o755)


def test_walk_tar(tmp_path):
    root = make_context(str(tmp_path))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(root, arcname=".")
    buf.seek(0)
    ignore = dockerignore.Ignore.from_text(IGNORE)
    with tarfile.open(fileobj=buf) as tar:
        names = sorted(m.name for m in dockerignore.walk_tar(tar, ignore, keep=["Dockerfile"]))
    assert "./Dockerfile" in names and "./.dockerignore" not in names
    assert "./build/keep/me.txt" in names and "./build/out.o" not in names
    assert "./src/util/cache.pyc" not in names and "./README.md" not in names


def test_prune(tmp_path):
    root = make_context(str(tmp_path))
    ignore = dockerignore.Ignore.from_text(IGNORE)
    dockerignore.prune(root, ignore, keep=["Dockerfile"])
    left = sorted(dockerignore.walk(root))
    # "build" itself is excluded but stays: it holds the re-included build/keep.
    assert left == sorted(["build"] + list(dockerignore.walk(root, ignore, keep=["Dockerfile"])))
    assert os.path.exists(os.path.join(root, "build", "keep", "me.txt"))
    assert not os.path.exists(os.path.join(root, "node_modules"))


@pytest.mark.parametrize("source,expected", [
    ("app.py", ["app.py"]),
    ("/app.py", ["app.py"]),
    ("./src/../app.py", ["app.py"]),
    (".", [""]),
    ("/", [""]),
    ("src", ["src"]),
    ("*.txt", ["data.txt", "notes.txt", "star*.txt"]),
    ("star\\*.txt", ["star*.txt"]),
    ("s*", ["src", "star*.txt"]),                    # a matched directory is taken whole
    ("src/*/*.py", ["src/util/helpers.py"]),
    ("[dn]*.txt", ["data.txt", "notes.txt"]),
    ("l?nk.py", ["link.py"]),
])
def test_match_sources(tmp_path, source, expected):
    root = make_context(str(tmp_path))
    assert dockerignore.match_sources(root, source) == expected


def test_match_sources_errors(tmp_path):
    root = make_context(str(tmp_path))
    ignore = dockerignore.Ignore.from_text(IGNORE)
    with pytest.raises(errors.NotFound) as info:
        dockerignore.match_sources(root, "missing.txt")
    assert info.value.message == ("file not found in build context or excluded by "
                                  ".dockerignore: stat missing.txt: file does not exist")
    with pytest.raises(errors.NotFound):
        dockerignore.match_sources(root, "README.md", ignore)      # excluded
    with pytest.raises(errors.NotFound) as info:
        dockerignore.match_sources(root, "*.nothing")
    assert info.value.message == "no source files were specified"
    assert dockerignore.match_sources(root, "*.md", None) == ["README.md"]
    with pytest.raises(errors.NotFound):
        dockerignore.match_sources(root, "*.md", ignore)
    with pytest.raises(errors.InvalidParameter) as info:
        dockerignore.match_sources(root, "../etc/passwd")
    assert info.value.message == "Forbidden path outside the build context: ../etc/passwd"
    with pytest.raises(errors.InvalidParameter):
        dockerignore.match_sources(root, "[a")                       # bad pattern


def test_checksum_tracks_content_mode_and_names_not_times(tmp_path):
    root = make_context(str(tmp_path))
    first = dockerignore.checksum(root, ["src", "app.py"])
    assert first.startswith("sha256:") and len(first) == 71
    assert dockerignore.checksum(root, ["src", "app.py"]) == first
    main = os.path.join(root, "src", "main.py")
    os.utime(main, (1, 1))
    assert dockerignore.checksum(root, ["src", "app.py"]) == first       # mtime ignored
    os.chmod(main, 0o755)
    moded = dockerignore.checksum(root, ["src", "app.py"])
    assert moded != first
    with open(main, "w") as f:
        f.write("changed\n")
    assert dockerignore.checksum(root, ["src", "app.py"]) != moded
    assert dockerignore.checksum(root, ["notes.txt"]) != dockerignore.checksum(root, ["data.txt"])
    # Files the rules exclude inside a copied directory do not count.
    ignore = dockerignore.Ignore.from_text("**/*.pyc\n")
    before = dockerignore.checksum(root, ["src"], ignore)
    with open(os.path.join(root, "src", "util", "cache.pyc"), "w") as f:
        f.write("rebuilt\n")
    assert dockerignore.checksum(root, ["src"], ignore) == before
    assert dockerignore.checksum(root, ["link.py"]) != dockerignore.checksum(root, ["app.py"])
