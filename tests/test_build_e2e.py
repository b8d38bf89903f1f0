"""docker build (classic builder, DOCKER_BUILDKIT=0) with the real CLI against a rootless daemon.

One context directory per test; the daemon is the module's `rootless` fixture (uid 65534, no
subordinate ids, a `busybox` image). What is checked is what a user sees: `docker run` output of
the built image, `docker inspect` config, `docker history` rows, and the build stream's lines.
"""

import io
import json
import os
import tarfile
import tempfile

import pytest

pytestmark = pytest.mark.e2e

MULTI_STAGE = """\
# a multi-stage build touching most instructions
ARG BASE=busybox
FROM ${BASE} AS build
ARG GREETING=hello
ENV OUT=/out
WORKDIR $OUT
COPY src/ ./src/
RUN cat src/a.txt src/b.txt > joined.txt && echo "$GREETING from build" > greeting.txt
FROM $BASE
LABEL org.example.name="demo app" org.example.stage=final
ENV APP=/app PATH=/app/bin:$PATH
WORKDIR ${APP}
COPY --from=build /out/joined.txt /out/greeting.txt ./
ADD bundle.tar /app/bundle/
COPY --chown=1000:1000 run.sh bin/
RUN chmod +x bin/run.sh
EXPOSE 8080 9090/udp
VOLUME /data
USER 1000
ENTRYPOINT ["run.sh"]
CMD ["default-arg"]
"""

RUN_SH = """\
#!/bin/sh
echo "arg=$1 user=$(id -u) pwd=$(pwd)"
cat /app/joined.txt /app/greeting.txt /app/bundle/inside/file.txt
ls /app | tr '\\n' ' '; echo
"""


def write(root, rel, data, mode=0o644):
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
    os.chmod(path, mode)
    return path


def bundle_tar():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        data = b"from the bundle\n"
        info = tarfile.TarInfo("inside/file.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def context(rootless):
    path = tempfile.mkdtemp(prefix="ctx-", dir=rootless.base)
    os.chmod(path, 0o755)
    return path


def build(d, ctx, *args, check=True):
    result = d.docker("build", *args, ctx, check=check, timeout=120)
    return result.returncode, result.stdout.decode(errors="replace"), result.stderr.decode(errors="replace")


def make_app(ctx):
    write(ctx, "Dockerfile", MULTI_STAGE)
    write(ctx, "src/a.txt", "alpha\n")
    write(ctx, "src/b.txt", "beta\n")
    write(ctx, "src/secret.key", "do not copy\n")
    write(ctx, "run.sh", RUN_SH, 0o644)
    write(ctx, "bundle.tar", bundle_tar())
    write(ctx, "notes/big.log", "ignored\n")
    write(ctx, ".dockerignore", "# keep secrets and logs out\n**/*.key\nnotes\n")


def test_multi_stage_build_runs_and_caches(rootless, context):
    d = rootless
    make_app(context)
    _, out, _ = build(d, context, "-t", "demo:1", "-t", "demo:latest")
    assert "Step 1/20 : ARG BASE=busybox" in out
    assert "Successfully built" in out and "Successfully tagged demo:1" in out
    assert "Successfully tagged demo:latest" in out
    assert " ---> Running in " in out and "Removing intermediate container" in out

    run = d.docker("run", "--rm", "demo:1", timeout=30)
    lines = run.stdout.decode().splitlines()
    assert lines[0] == "arg=default-arg user=1000 pwd=/app"
    assert lines[1:5] == ["alpha", "beta", "hello from build", "from the bundle"]
    assert lines[5].split() == ["bin", "bundle", "greeting.txt", "joined.txt"]
    # .dockerignore kept the key out of the build stage's copy of src/ (--target stops there)
    build(d, context, "--target", "build", "-t", "demo-build")
    listing = d.docker("run", "--rm", "demo-build", "ls", "/out/src").stdout.decode()
    assert listing.split() == ["a.txt", "b.txt"]

    config = json.loads(d.docker("inspect", "demo:1").stdout)[0]["Config"]
    assert config["Labels"] == {"org.example.name": "demo app", "org.example.stage": "final"}
    assert sorted(config["ExposedPorts"]) == ["8080/tcp", "9090/udp"]
    assert config["Volumes"] == {"/data": {}}
    assert config["User"] == "1000" and config["WorkingDir"] == "/app"
    assert config["Entrypoint"] == ["run.sh"] and config["Cmd"] == ["default-arg"]
    assert "PATH=/app/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" in config["Env"] \
        or any(e.startswith("PATH=/app/bin:") for e in config["Env"])

    # the second identical build is served from the cache, step for step
    _, again, _ = build(d, context, "-t", "demo:2")
    steps = again.count("Step ")
    assert steps == 20
    # every step after each FROM (and the meta ARG) is a cache hit
    assert again.count("Using cache") == 20 - 1 - 2
    assert "Running in" not in again
    ids = lambda tag: json.loads(d.docker("inspect", tag).stdout)[0]["Id"]   # noqa: E731
    assert ids("demo:1") == ids("demo:2")

    # docker history lists the steps, newest first, metadata ones with #(nop)
    hist = d.docker("history", "--no-trunc", "--format", "{{.CreatedBy}}", "demo:1").stdout.decode()
    rows = hist.splitlines()
    assert rows[0].startswith('/bin/sh -c #(nop)  CMD ["default-arg"]')
    assert any("chmod +x bin/run.sh" in r for r in rows)
    assert any("#(nop)  EXPOSE 8080/tcp 9090/udp" in r for r in rows)
    assert any(r.startswith("/bin/sh -c #(nop) COPY") for r in rows)


def test_changed_file_invalidates_from_its_copy_on(rootless, context):
    d = rootless
    write(context, "Dockerfile", "FROM busybox\nENV A=1\nCOPY one.txt /one.txt\nRUN echo ran\n"
          "COPY two.txt /two.txt\nCMD [\"cat\", \"/one.txt\", \"/two.txt\"]\n")
    write(context, "one.txt", "one\n")
    write(context, "two.txt", "two\n")
    build(d, context, "-t", "inv:1")
    _, out, _ = build(d, context, "-t", "inv:1")
    assert out.count("Using cache") == 5
    write(context, "two.txt", "TWO\n")
    _, out, _ = build(d, context, "-t", "inv:2")
    steps = out.split("Step ")[1:]
    hits = ["Using cache" in s for s in steps]
    assert hits == [False, True, True, True, False, False]      # FROM, ENV, COPY, RUN hit
    assert d.docker("run", "--rm", "inv:2").stdout.decode() == "one\nTWO\n"
    # --no-cache runs everything again
    _, out, _ = build(d, context, "--no-cache", "-t", "inv:3")
    assert "Using cache" not in out and "ran" in out


def test_failing_run_reports_step_and_code(rootless, context):
    d = rootless
    write(context, "Dockerfile", "FROM busybox\nRUN echo before-failure\nRUN exit 3\nRUN echo never\n")
    code, out, err = build(d, context, "-t", "broken", check=False)
    assert code != 0
    assert "Step 3/4 : RUN exit 3" in out and "before-failure" in out
    assert "The command '/bin/sh -c exit 3' returned a non-zero code: 3" in err
    assert "never" not in out
    assert d.docker("inspect", "broken", check=False).returncode != 0


def test_scratch_quiet_and_build_args(rootless, context):
    d = rootless
    write(context, "Dockerfile", "FROM busybox AS tools\nFROM scratch\nARG WHO=nobody\n"
          "COPY --from=tools /bin/busybox /bin/sh\nCOPY hello.txt /\nLABEL who=$WHO\n"
          "CMD [\"/bin/sh\", \"-c\", \"read line < /hello.txt; echo $line\"]\n")
    write(context, "hello.txt", "hi from scratch\n")
    _, out, _ = build(d, context, "-q", "--build-arg", "WHO=tester", "--label", "built-by=test",
                      "-t", "tiny")
    assert out.strip().startswith("sha256:") and "Step" not in out
    assert d.docker("run", "--rm", "tiny").stdout.decode() == "hi from scratch\n"
    config = json.loads(d.docker("inspect", "tiny").stdout)[0]
    assert config["Config"]["Labels"] == {"who": "tester", "built-by": "test"}
    assert len(config["RootFS"]["Layers"]) == 2


def test_bad_dockerfile_and_missing_source(rootless, context):
    d = rootless
    write(context, "Dockerfile", "FROM busybox\nBOGUS thing\n")
    code, _, err = build(d, context, check=False)
    assert code != 0 and "unknown instruction: bogus" in err.lower()
    write(context, "Dockerfile", "FROM busybox\nCOPY missing.txt /\n")
    code, _, err = build(d, context, check=False)
    assert code != 0 and "missing.txt" in err


def context_tar(files, mode="w"):
    """A build context as tar bytes ({name: text}); `mode` picks the compression."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_api_error_detail_and_compressed_context(rootless):
    client = rootless.client()
    body = context_tar({"Dockerfile": "FROM busybox\nRUN echo out; exit 7\n"}, "w:bz2")
    lines = list(client.stream("POST", "/build", {"t": "api-fail"}, body=body,
                               headers={"Content-Type": "application/x-tar"}))
    assert {"stream": "Step 2/2 : RUN echo out; exit 7\n"} in lines
    assert lines[-1] == {"errorDetail": {"code": 7, "message": "The command '/bin/sh -c echo out; "
                                         "exit 7' returned a non-zero code: 7"},
                         "error": "The command '/bin/sh -c echo out; exit 7' returned a non-zero code: 7"}
    # the failed container is kept (rm only removes after success); forcerm removes it
    lines = list(client.stream("POST", "/build", {"forcerm": True, "dockerfile": "sub/Build.df"},
                               body=context_tar({"sub/Build.df": "FROM busybox\nRUN exit 1\n"}, "w:xz")))
    assert any("Removing intermediate container" in line.get("stream", "") for line in lines)
    assert lines[-1]["errorDetail"]["code"] == 1


def test_remote_git_is_refused_clearly(rootless):
    from minidock.client import APIError
    with pytest.raises(APIError) as info:
        rootless.client().post("/build", {"remote": "https://example.invalid/team/repo.git"})
    assert info.value.status == 501 and "git build contexts are not supported" in info.value.message


def test_disconnect_cancels_the_build(rootless):
    import time
    client = rootless.client()
    body = context_tar({"Dockerfile": "FROM busybox\nRUN echo started; sleep 30\n"})
    response = client.request("POST", "/build", body=body)
    seen = b""
    while b'"started\\n"' not in seen:        # the RUN's own output line, not the Step line
        seen += response.read1(4096)
    response.connection_.close()
    # The RUN container shows up, then the cancelled build kills it and removes it (not only stops
    # it): nothing of the build is left, running or not.
    import re
    cid = re.search(rb"Running in ([0-9a-f]{12})", seen).group(1).decode()
    deadline = time.monotonic() + 10
    left = rootless.docker("ps", "-aq", "--filter", f"id={cid}").stdout.split()
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = rootless.docker("ps", "-aq", "--filter", f"id={cid}").stdout.split()
    assert left == []
    actions = [e["Action"] for e in rootless.client().stream("GET", "/events", {
        "since": f"{time.time() - 30:.3f}", "until": f"{time.time():.3f}",
        "filters": {"container": [cid], "event": ["start", "kill", "die", "destroy"]}})]
    distinct = [a for i, a in enumerate(actions) if i == 0 or a != actions[i - 1]]
    assert distinct == ["start", "kill", "die", "destroy"]   # killed, not left to run its 30 s


def test_cache_survives_a_daemon_restart(rootless, context):
    d = rootless
    write(context, "Dockerfile", "FROM busybox\nCOPY f /f\nRUN cat /f > /g\n")
    write(context, "f", "content\n")
    build(d, context, "-t", "persist")
    d.stop()
    d.start()
    _, out, _ = build(d, context, "-t", "persist")
    assert out.count("Using cache") == 2


def test_onbuild_shell_healthcheck_and_args(rootless, context):
    d = rootless
    write(context, "Dockerfile", "FROM busybox\nONBUILD RUN echo triggered > /trigger\n"
          "STOPSIGNAL SIGINT\nHEALTHCHECK --interval=5s --retries=2 CMD true\n")
    build(d, context, "-t", "parent-img")
    write(context, "Dockerfile", "FROM parent-img\nARG VERSION=1.0\nSHELL [\"/bin/sh\", \"-ec\"]\n"
          "RUN echo \"v=$VERSION\" > /version\nCMD cat /trigger /version\n")
    _, out, _ = build(d, context, "--build-arg", "VERSION=2.5", "-t", "child-img")
    assert "# Executing 1 build trigger" in out
    assert d.docker("run", "--rm", "child-img").stdout.decode() == "triggered\nv=2.5\n"
    info = json.loads(d.docker("inspect", "child-img").stdout)[0]["Config"]
    assert info["Cmd"] == ["/bin/sh", "-ec", "cat /trigger /version"]
    assert info["StopSignal"] == "SIGINT" and info["OnBuild"] in (None, [])
    assert info["Healthcheck"] == {"Test": ["CMD-SHELL", "true"], "Interval": 5_000_000_000, "Retries": 2}
    hist = d.docker("history", "--no-trunc", "--format", "{{.CreatedBy}}", "child-img").stdout.decode()
    assert "|1 VERSION=2.5 /bin/sh -ec echo \"v=$VERSION\" > /version" in hist


@pytest.fixture
def web(tmp_path):
    """A local HTTP server (the daemon shares the host's network namespace) serving tmp_path."""
    import functools
    import http.server
    import threading
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield tmp_path, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_add_url_remote_contexts_and_plain_dockerfile_body(rootless, context, web):
    d = rootless
    root, url = web
    (root / "remote.txt").write_text("fetched\n")
    (root / "Dockerfile").write_text(f"FROM busybox\nADD {url}/remote.txt /dl/\n"
                                     "CMD [\"cat\", \"/dl/remote.txt\"]\n")
    (root / "ctx.tar.gz").write_bytes(context_tar({"Dockerfile": "FROM busybox\nCOPY x /x\n"
                                                   "CMD [\"cat\", \"/x\"]\n", "x": "from tar\n"}, "w:gz"))
    client = d.client()
    lines = list(client.stream("POST", "/build", {"remote": f"{url}/Dockerfile", "t": "remote-df"}))
    assert lines[-1] == {"stream": "Successfully tagged remote-df:latest\n"}, lines
    assert d.docker("run", "--rm", "remote-df").stdout.decode() == "fetched\n"
    perms = d.docker("run", "--rm", "remote-df", "stat", "-c", "%a", "/dl/remote.txt").stdout
    assert perms.decode().strip() == "600"
    lines = list(client.stream("POST", "/build", {"remote": f"{url}/ctx.tar.gz", "t": "remote-tar"}))
    assert d.docker("run", "--rm", "remote-tar").stdout.decode() == "from tar\n"
    # a body that is not an archive is the Dockerfile itself
    lines = list(client.stream("POST", "/build", {"t": "plain-df"},
                               body=b"FROM busybox\nCMD [\"echo\", \"plain\"]\n"))
    assert d.docker("run", "--rm", "plain-df").stdout.decode() == "plain\n"


def test_build_network_and_add_host_reach_run_steps(rootless, context):
    """`docker build --network none --add-host` (networkmode 1.25, extrahosts 1.28): the RUN
    containers have only a loopback interface and the extra /etc/hosts line."""
    write(context, "Dockerfile", "FROM busybox\nRUN grep -q 'db.internal' /etc/hosts && ! grep -q eth /proc/net/dev\n")
    code, out, err = build(rootless, context, "--network", "none", "--add-host", "db.internal:10.1.2.3", "-t",
                           "netbuild")
    assert code == 0, out + err
    code, out, err = build(rootless, context, "--no-cache", "-t", "netbuild", check=False)
    assert code != 0 and "returned a non-zero code" in out + err
    rootless.docker("rmi", "netbuild")


CACHE_FROM = """\
FROM busybox
ENV GREETING=hi
COPY f /f
RUN cat /f > /g && echo ran-$GREETING
WORKDIR /w
CMD ["cat", "/g"]
"""


def test_cache_from_an_image_that_lost_its_build_chain(rootless, context):
    d = rootless
    write(context, "Dockerfile", CACHE_FROM)
    write(context, "f", "version one\n")
    build(d, context, "-t", "cf:1")
    first = d.docker("inspect", "-f", "{{.Id}}", "cf:1").stdout.decode().strip()
    # save, rmi, load: the same image, but the intermediate images of its build are gone.
    archive = os.path.join(d.base, "cf.tar")
    d.docker("save", "-o", archive, "cf:1")
    d.docker("rmi", "cf:1")
    d.docker("load", "-i", archive)
    # Without --cache-from nothing of its history is a cache: every step runs.
    _, out, _ = build(d, context, "-t", "cf:plain")
    assert out.count("Using cache") == 0 and "ran-hi" in out
    # With it, every step's history text matches the loaded image's: all five are cache hits
    # (the local images of the plain build are not: they are not on cf:1's chain), nothing
    # runs, and the last step's image is cf:1 itself.
    _, out, _ = build(d, context, "--cache-from", "cf:1", "-t", "cf:2")
    assert out.count(" ---> Using cache") == 5 and "ran-hi" not in out, out
    assert d.docker("inspect", "-f", "{{.Id}}", "cf:2").stdout.decode().strip() == first
    assert d.docker("run", "--rm", "cf:2").stdout == b"version one\n"
    # `docker history` follows the chain the cache hits built, down to busybox.
    rows = d.docker("history", "-q", "cf:2").stdout.decode().split()
    assert len(rows) == 6 and "<missing>" not in rows, rows
    # A changed file: ENV still comes from the cache, COPY and what follows run again.
    write(context, "f", "version two\n")
    _, out, _ = build(d, context, "--cache-from", "cf:1", "-t", "cf:3")
    assert out.count("Using cache") == 1 and "ran-hi" in out
    assert d.docker("run", "--rm", "cf:3").stdout == b"version two\n"
    # A name that is no image is skipped, as dockerd does; cache sources were asked for, so
    # the local cache (cf:3's steps) does not count either.
    code, out, _ = build(d, context, "--cache-from", "no-such:image", "-t", "cf:4", check=False)
    assert code == 0 and out.count("Using cache") == 0



@pytest.mark.parametrize("prefix,hits", [("/v1.24", 0), ("/v1.25", 2), ("/v1.47", 2)])
def test_cachefrom_parameter_since_1_25(rootless, prefix, hits):
    d, client = rootless, rootless.client()
    body = context_tar({"Dockerfile": f"FROM busybox\nLABEL v={prefix}\nRUN echo {prefix} > /v\n"})
    tag = "cfv:" + prefix.replace("/v1.", "")
    list(client.stream("POST", "/build", {"t": tag}, body=body))
    archive = os.path.join(d.base, tag.replace(":", "-") + ".tar")
    d.docker("save", "-o", archive, tag)
    d.docker("rmi", tag)                         # its build chain goes with it
    d.docker("load", "-i", archive)
    lines = list(d.client(version=prefix[2:]).stream("POST", "/build",
                               {"t": tag + "-again", "cachefrom": json.dumps([tag])}, body=body))
    text = "".join(line.get("stream", "") for line in lines)
    # A v1.24 daemon had no cachefrom: the parameter is ignored and both steps run.
    assert text.count("Using cache") == hits, text
