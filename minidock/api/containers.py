"""Container routes: create, start, stop, kill, wait, attach, logs, list, inspect, ..."""

import json
import queue

from minidock import errors, http, websocket
from minidock.containers import DEFAULT_DETACH_KEYS, PAUSED, RUNNING


def _backend(req):
    return req.daemon.containers


# -- create / inspect / list -------------------------------------------------------------------

def post_containers_create(req):
    body = req.json(required=True)
    if not isinstance(body, dict):
        raise errors.InvalidParameter("container config must be a JSON object")
    cid, warnings = _backend(req).create(body, req.q("name"))
    return http.Response.json({"Id": cid, "Warnings": warnings or None}, status=201)


def get_containers_json(req):
    backend = _backend(req)
    containers = backend.list(all_=req.qbool("all"), limit=req.qint("limit", -1), since=req.q("since"),
                              before=req.q("before"), filters=req.filters(), size=req.qbool("size"))
    want_size = req.qbool("size")
    rows = []
    for c in containers:
        rows.append(summary(req, c, want_size))
    return req.render("container_list", rows)


def summary(req, c, want_size=False):
    backend = _backend(req)
    cfg = c.config
    command = " ".join([c.record["Path"]] + c.record["Args"])
    row = {
        "Id": c.id,
        "Names": ["/" + c.name],
        "Image": cfg.get("Image", ""),
        "ImageID": c.record["Image"],
        "Command": command,
        "Created": int(_created_ts(c)),
        "Ports": [],
        "Labels": cfg.get("Labels") or {},
        "State": c.status,
        "Status": backend.status_text(c),
        "HostConfig": {"NetworkMode": c.host_config.get("NetworkMode", "default")},
        "NetworkSettings": {"Networks": {}},
        "Mounts": [_mount_point(m) for m in c.record.get("Mounts") or []],
    }
    if want_size:
        row["SizeRw"], row["SizeRootFs"] = backend.size(c)
    return row


def _created_ts(c):
    from minidock.containers import parse_time
    return parse_time(c.record["Created"])


def _mount_point(m):
    return {k: m.get(k) for k in ("Type", "Name", "Source", "Destination", "Driver", "Mode", "RW", "Propagation")
            if k in m}


def get_containers_inspect(req):
    backend = _backend(req)
    c = backend.get(req.params["id"])
    record = {k: v for k, v in c.record.items() if k != "HasBeenManuallyStopped"}
    record = json.loads(json.dumps(record))
    record["Name"] = "/" + c.name
    record["ExecIDs"] = req.daemon.execs.ids_for(c.id) if req.daemon.execs else None
    record["Mounts"] = [_mount_point(m) for m in record.get("Mounts") or []]
    record["GraphDriver"] = {"Name": req.daemon.layers.driver_name(), "Data": None}
    record["NetworkSettings"] = network_settings(c)
    if req.qbool("size"):
        record["SizeRw"], record["SizeRootFs"] = backend.size(c)
    return req.render("container", record)


def network_settings(c):
    mode = c.host_config.get("NetworkMode") or "default"
    networks = {}
    if mode in ("host", "default", "bridge"):
        networks["host"] = {"IPAMConfig": None, "Links": None, "Aliases": None, "NetworkID": "host",
                            "EndpointID": "", "Gateway": "", "IPAddress": "", "IPPrefixLen": 0,
                            "IPv6Gateway": "", "GlobalIPv6Address": "", "GlobalIPv6PrefixLen": 0,
                            "MacAddress": ""}
    elif mode == "none":
        networks["none"] = {"IPAMConfig": None, "Links": None, "Aliases": None, "NetworkID": "none",
                            "EndpointID": "", "Gateway": "", "IPAddress": "", "IPPrefixLen": 0,
                            "IPv6Gateway": "", "GlobalIPv6Address": "", "GlobalIPv6PrefixLen": 0,
                            "MacAddress": ""}
    return {"Bridge": "", "SandboxID": "", "HairpinMode": False, "LinkLocalIPv6Address": "",
            "LinkLocalIPv6PrefixLen": 0, "Ports": {}, "SandboxKey": f"/proc/{c.pid}/ns/net" if c.pid else "",
            "SecondaryIPAddresses": None, "SecondaryIPv6Addresses": None, "EndpointID": "", "Gateway": "",
            "GlobalIPv6Address": "", "GlobalIPv6PrefixLen": 0, "IPAddress": "", "IPPrefixLen": 0,
            "IPv6Gateway": "", "MacAddress": "", "Networks": networks}


# -- lifecycle ---------------------------------------------------------------------------------

def post_containers_start(req):
    host_config = req.json()
    if host_config is not None and not isinstance(host_config, dict):
        raise errors.InvalidParameter("start body must be a HostConfig JSON object")
    _backend(req).start(req.params["id"], host_config or None)
    return http.Response.empty(204)


def post_containers_stop(req):
    _backend(req).stop(req.params["id"], req.qint("t"))
    return http.Response.empty(204)


def post_containers_restart(req):
    _backend(req).restart(req.params["id"], req.qint("t"))
    return http.Response.empty(204)


def post_containers_kill(req):
    _backend(req).kill(req.params["id"], req.q("signal") or "KILL")
    return http.Response.empty(204)


def post_containers_pause(req):
    _backend(req).pause(req.params["id"])
    return http.Response.empty(204)


def post_containers_unpause(req):
    _backend(req).unpause(req.params["id"])
    return http.Response.empty(204)


def post_containers_wait(req):
    backend = _backend(req)
    c = backend.get(req.params["id"])
    condition = req.q("condition") or "not-running"
    if condition not in ("not-running", "next-exit", "removed"):
        raise errors.InvalidParameter(f"invalid condition: {condition}")
    code = backend.wait(c.id, condition, stop=req.disconnected)
    return http.Response.json({"StatusCode": code})


def delete_containers(req):
    _backend(req).remove(req.params["id"], force=req.qbool("force"), volumes=req.qbool("v"))
    return http.Response.empty(204)


def post_containers_rename(req):
    _backend(req).rename(req.params["id"], req.q("name"))
    return http.Response.empty(204)


def post_containers_update(req):
    warnings = _backend(req).update(req.params["id"], req.json(required=True))
    return http.Response.json({"Warnings": warnings or None})


def post_containers_resize(req):
    _backend(req).resize(req.params["id"], req.qint("h", 0), req.qint("w", 0))
    return http.Response(200, b"", content_type="text/plain")


def get_containers_top(req):
    result = _backend(req).top(req.params["id"], req.q("ps_args"))
    return http.Response.json(result)


# -- logs --------------------------------------------------------------------------------------

def get_containers_logs(req):
    backend = _backend(req)
    c = backend.get(req.params["id"])
    stdout, stderr = req.qbool("stdout"), req.qbool("stderr")
    if not (stdout or stderr):
        raise errors.InvalidParameter("Bad parameters: you must choose at least one stream")
    follow, timestamps = req.qbool("follow"), req.qbool("timestamps")
    tail_text = req.q("tail", "all")
    tail = None if tail_text in ("all", "") else _int(tail_text, "tail")
    since = float(req.q("since") or 0)
    until = float(req.q("until") or 0) or None
    tty = c.config.get("Tty")
    wanted = {"stdout"} if stdout and not stderr else {"stderr"} if stderr and not stdout else {"stdout", "stderr"}

    def render(stream, data, stamp):
        if timestamps:
            data = stamp.encode() + b" " + data
        if tty:
            return data
        return http.frame(http.STDOUT if stream == "stdout" else http.STDERR, data)

    def produce():
        q = backend.subscribe(c) if follow and c.status in (RUNNING, PAUSED) else None
        try:
            for stream, data, stamp in backend.read_logs(c, since=since, until=until, tail=tail):
                if stream in wanted:
                    yield render(stream, data, stamp)
            if q is None:
                return
            while True:
                try:
                    item = q.get(timeout=0.5)
                except queue.Empty:
                    if req.disconnected() or c.status not in (RUNNING, PAUSED):
                        if c.status not in (RUNNING, PAUSED) and q.empty():
                            return
                        if req.disconnected():
                            return
                    continue
                if item is None:
                    return
                stream, data = item
                if stream in wanted:
                    from minidock.containers import now_rfc3339
                    yield render(stream, data, now_rfc3339())
        finally:
            if q is not None:
                backend.unsubscribe(c, q)

    return http.StreamResponse(produce(), content_type="application/vnd.docker.raw-stream")


def _int(text, name):
    try:
        return int(text)
    except ValueError:
        raise errors.InvalidParameter(f"invalid value for {name}: {text!r}")


# -- attach ------------------------------------------------------------------------------------

def parse_detach_keys(text):
    """Docker's detach key syntax: comma-separated `ctrl-<x>` or single characters."""
    if not text:
        return DEFAULT_DETACH_KEYS
    keys = b""
    for part in text.split(","):
        part = part.strip()
        if part.startswith("ctrl-") and len(part) == 6:
            ch = part[5]
            if ch.isalpha():
                keys += bytes([ord(ch.lower()) - ord("a") + 1])
            elif ch in "@[\\]^_":
                keys += bytes([{"@": 0, "[": 27, "\\": 28, "]": 29, "^": 30, "_": 31}[ch]])
            else:
                raise errors.InvalidParameter(f"Invalid detach keys ({text}) provided")
        elif len(part) == 1:
            keys += part.encode()
        else:
            raise errors.InvalidParameter(f"Invalid detach keys ({text}) provided")
    return keys


def post_containers_attach(req):
    backend = _backend(req)
    c = backend.get(req.params["id"])
    if req.adapt("container_attach", {"refuse_stopped": False})["refuse_stopped"] \
            and c.status not in (RUNNING, PAUSED) and not req.qbool("logs"):
        raise errors.NotAcceptable("impossible to attach (container not running)")
    want_stdin, want_stdout, want_stderr = req.qbool("stdin"), req.qbool("stdout"), req.qbool("stderr")
    want_logs, want_stream = req.qbool("logs"), req.qbool("stream")
    detach_keys = parse_detach_keys(req.q("detachKeys"))
    tty = c.config.get("Tty")
    # Subscribe before the hijack reply goes out: `docker run` attaches, then starts, and the
    # first output of a fast command must not slip between the two.
    q = backend.subscribe(c) if want_stream else None
    backend.emit(c, "attach")

    def run(conn):
        try:
            attach_session(backend, c, conn, q, tty, want_stdin, want_stdout, want_stderr,
                           want_logs, want_stream, detach_keys)
        finally:
            if q is not None:
                backend.unsubscribe(c, q)

    return http.Hijack(run)


def attach_session(backend, c, conn, q, tty, want_stdin, want_stdout, want_stderr, want_logs,
                   want_stream, detach_keys):
    import threading
    wanted = set()
    if want_stdout:
        wanted.add("stdout")
    if want_stderr:
        wanted.add("stderr")

    def send(stream, data):
        if stream not in wanted:
            return
        conn.send(data if tty else http.frame(http.STDOUT if stream == "stdout" else http.STDERR, data))

    if want_logs:
        for stream, data, _ in backend.read_logs(c):
            send(stream, data)
    if not want_stream:
        return
    detached = threading.Event()

    generation = c.exit_generation

    def pump_stdin():
        matched = 0
        while not detached.is_set():
            data = conn.recv(65536)
            if not backend.stdin_ready(c, generation):
                return
            if not data:
                if c.config.get("StdinOnce") and not tty:
                    backend.close_stdin(c)
                elif c.config.get("StdinOnce") and tty:
                    backend.close_stdin(c)
                return
            if tty and detach_keys:
                out = b""
                for byte in data:
                    if byte == detach_keys[matched]:
                        matched += 1
                        if matched == len(detach_keys):
                            detached.set()
                            q.put(None)
                            backend.engine.events.emit("container", "detach", c.id, {"name": c.name})
                            return
                        continue
                    if matched:
                        out += detach_keys[:matched]
                        matched = 0
                    out += bytes([byte])
                data = out
            if data:
                backend.write_stdin(c, data)

    if want_stdin and c.config.get("OpenStdin"):
        threading.Thread(target=pump_stdin, daemon=True, name=f"stdin-{c.id[:12]}").start()
    # Output until this run's streams end (the pumps send None), the client detaches, or it
    # goes away. A container that is not running yet (`docker run` attaches before it starts)
    # simply has no output yet. A client half-closes its side when its stdin ends, and the
    # CLI does so at once when it sends no stdin at all, so a readable EOF does not mean it
    # left: only a failed write tells us (as in Docker).
    while True:
        try:
            item = q.get(timeout=0.5)
        except queue.Empty:
            if c.id not in backend.by_id:
                return
            continue
        if item is None:
            return
        try:
            send(*item)
        except OSError:
            return


def get_containers_attach_ws(req):
    """The same attach over a WebSocket (minidock/websocket.py): output goes out as text
    frames of raw bytes (never multiplexed, as Docker does), data frames from the client are
    the container's stdin."""
    backend = _backend(req)
    c = backend.get(req.params["id"])
    try:
        key = websocket.check_handshake(req.head.header)
    except websocket.ProtocolError as exc:
        raise errors.InvalidParameter(str(exc))
    want_stdin, want_stdout, want_stderr = req.qbool("stdin"), req.qbool("stdout"), req.qbool("stderr")
    want_logs, want_stream = req.qbool("logs"), req.qbool("stream")
    detach_keys = parse_detach_keys(req.q("detachKeys"))
    q = backend.subscribe(c) if want_stream else None
    backend.emit(c, "attach")

    def run(conn):
        try:
            ws_session(backend, c, conn, q, want_stdin, want_stdout, want_stderr, want_logs,
                       want_stream, detach_keys)
        finally:
            if q is not None:
                backend.unsubscribe(c, q)

    return http.Hijack(run, switch_headers=websocket.handshake_headers(key))


def ws_session(backend, c, conn, q, want_stdin, want_stdout, want_stderr, want_logs, want_stream,
               detach_keys):
    import threading
    wanted = {s for s, on in (("stdout", want_stdout), ("stderr", want_stderr)) if on}
    tty = c.config.get("Tty")
    send_lock = threading.Lock()
    closed = threading.Event()           # a close frame went out: send nothing more

    def send(opcode, payload=b""):
        with send_lock:
            if closed.is_set():
                return
            if opcode == websocket.CLOSE:
                closed.set()
            conn.send(websocket.encode_frame(opcode, payload))

    def close(code=websocket.NORMAL_CLOSURE, reason=""):
        try:
            send(websocket.CLOSE, websocket.close_payload(code, reason))
        except OSError:
            pass

    if want_logs:
        for stream, data, _ in backend.read_logs(c):
            if stream in wanted:
                send(websocket.TEXT, data)
    if not want_stream:
        close()
        return
    generation = c.exit_generation
    use_stdin = want_stdin and c.config.get("OpenStdin")

    def read_client():
        """Frames from the client: stdin, pings, and its close (which ends the session)."""
        buffer, assembler, matched = b"", websocket.MessageAssembler(), 0
        detached = False
        try:
            while not closed.is_set():
                data = conn.recv(65536)
                if not data:
                    break
                buffer += data
                while True:
                    frame, buffer = websocket.decode_frame(buffer, require_mask=True)
                    if frame is None:
                        break
                    for event in assembler.feed(frame):
                        if event[0] == "ping":
                            send(websocket.PONG, event[1])
                        elif event[0] == "close":
                            close()
                            return
                        elif event[0] == "message" and use_stdin and event[2]:
                            data, matched, detached = scan_detach_keys(event[2], detach_keys, matched) \
                                if tty and detach_keys else (event[2], 0, False)
                            if data and backend.stdin_ready(c, generation):
                                backend.write_stdin(c, data)
                            if detached:
                                backend.engine.events.emit("container", "detach", c.id, {"name": c.name})
                                close()
                                return
        except websocket.ProtocolError as exc:
            close(exc.code, str(exc)[:100])
        except OSError:
            pass
        finally:
            # StdinOnce: the client's end of input (its close) is the container's; a detach
            # leaves the container's stdin open for the next attach.
            if use_stdin and c.config.get("StdinOnce") and not detached:
                backend.close_stdin(c)
            q.put(None)

    threading.Thread(target=read_client, daemon=True, name=f"ws-{c.id[:12]}").start()
    while True:
        try:
            item = q.get(timeout=0.5)
        except queue.Empty:
            if c.id not in backend.by_id:
                break
            continue
        if item is None:
            break
        stream, data = item
        if stream in wanted:
            try:
                send(websocket.TEXT, data)
            except OSError:
                break
    close()


def scan_detach_keys(data, keys, matched):
    """Remove a detach sequence from stdin bytes: returns (bytes to pass on, how much of the
    sequence is matched so far, whether it completed). Bytes after a completed sequence are
    dropped; a partial match that breaks off is passed on."""
    out = b""
    for byte in data:
        if byte == keys[matched]:
            matched += 1
            if matched == len(keys):
                return out, 0, True
            continue
        if matched:
            out += keys[:matched]
            matched = 0
        if byte == keys[0]:
            matched = 1
            continue
        out += bytes([byte])
    return out, matched, False


ROUTES = [
    ("GET", "/containers/json", get_containers_json),
    ("GET", "/containers/ps", get_containers_json),          # v1.0's name for the list
    ("POST", "/containers/create", post_containers_create),
    ("GET", "/containers/{id}/json", get_containers_inspect),
    ("GET", "/containers/{id}/top", get_containers_top),
    ("GET", "/containers/{id}/logs", get_containers_logs),
    ("POST", "/containers/{id}/start", post_containers_start),
    ("POST", "/containers/{id}/stop", post_containers_stop),
    ("POST", "/containers/{id}/restart", post_containers_restart),
    ("POST", "/containers/{id}/kill", post_containers_kill),
    ("POST", "/containers/{id}/pause", post_containers_pause),
    ("POST", "/containers/{id}/unpause", post_containers_unpause),
    ("POST", "/containers/{id}/wait", post_containers_wait),
    ("POST", "/containers/{id}/rename", post_containers_rename),
    ("POST", "/containers/{id}/update", post_containers_update),
    ("POST", "/containers/{id}/resize", post_containers_resize),
    ("POST", "/containers/{id}/attach", post_containers_attach),
    ("GET", "/containers/{id}/attach/ws", get_containers_attach_ws),
    ("DELETE", "/containers/{id}", delete_containers),
]
