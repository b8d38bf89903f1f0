"""Published ports: a userspace proxy from a host port to a container port (`-p 8080:80`).

Rootful Docker publishes a port with iptables DNAT rules (and docker-proxy for the host's own
loopback). A rootless daemon can do neither in the host's namespace, so RootlessKit's
"builtin" port driver -- the model here -- relays in user space:

    host namespace                                   daemon network namespace
    client --TCP--> listen(HostIp:HostPort)          socket() made by the keeper (network.py),
                    in the daemon  --accept()-->     connect(172.17.0.2:80) by the daemon
                                   <-- splice both ways, half-close -->

  - The listener is an ordinary socket of the daemon, in the host namespace: it exists while
    the container runs (created at start, closed at stop; a restart binds again).
  - For each accepted connection the daemon gets a fresh socket from the keeper (born in the
    daemon's network namespace, passed back over SCM_RIGHTS) and connects it to the
    container's address. Only then is the client's connection served; if the connect fails
    the client's connection is closed (a real server would refuse; we accepted already).
  - Bytes are copied with os.splice(2) through a pipe, one thread per direction: the data
    never enters Python's heap. EOF in one direction becomes shutdown(SHUT_WR) on the other
    socket (half-close: `nc -q`, HTTP/1.0 clients that close their side first), and the pair
    is closed when both directions ended.
  - UDP: one host socket; each client address gets its own socket into the namespace,
    connected to the container, so replies find their way back; a flow idle for
    UDP_IDLE seconds is forgotten.

Errors are Docker's: a host port somebody else holds fails the container's start with
"Bind for 0.0.0.0:8080 failed: port is already allocated"; a port below
net.ipv4.ip_unprivileged_port_start (1024 by default) cannot be bound without privileges
and the message names that sysctl, as rootless Docker's does.
"""

import errno
import fcntl
import os
import selectors
import socket
import threading
import time

from . import errors

UDP_IDLE = 60.0
SPLICE_CHUNK = 1 << 20


def unprivileged_port_start():
    try:
        with open("/proc/sys/net/ipv4/ip_unprivileged_port_start") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 1024


def expand_bindings(port_bindings, exposed=None, publish_all=False):
    """HostConfig.PortBindings (+ every ExposedPort when PublishAllPorts) as a list of
    (proto, container_port, host_ip, host_port) with host_port 0 meaning "pick one".

    The CLI has already expanded ranges (`-p 8000-8001:80-81`) into one key per port; a
    HostPort range left in a binding ("8000-8010") takes the first port of the range that
    is free, as dockerd does."""
    out = []
    keys = dict(port_bindings or {})
    if publish_all:
        for key in exposed or {}:
            keys.setdefault(key, [{"HostIp": "", "HostPort": ""}])
    for key, binds in keys.items():
        port, _, proto = key.partition("/")
        proto = proto or "tcp"
        if proto not in ("tcp", "udp"):
            raise errors.InvalidParameter(f"invalid proto: {proto}")
        try:
            cport = int(port)
        except ValueError:
            raise errors.InvalidParameter(f"invalid containerPort: {port}")
        for b in binds or [{}]:
            b = b or {}
            hp = str(b.get("HostPort") or "")
            try:
                if "-" in hp:
                    lo, hi = (int(x) for x in hp.split("-", 1))
                    host_ports = list(range(lo, hi + 1))
                else:
                    host_ports = [int(hp)] if hp else [0]
            except ValueError:
                raise errors.InvalidParameter(f"invalid hostPort: {hp}")
            if not all(0 <= p <= 65535 for p in host_ports) or not 0 < cport <= 65535:
                raise errors.InvalidParameter(f"invalid port specification: {key}")
            out.append((proto, cport, b.get("HostIp") or "", host_ports))
    return out


def _bind_error(e, host_ip, port, proto):
    where = f"{host_ip or '0.0.0.0'}:{port}"
    if e.errno == errno.EADDRINUSE:
        return errors.System(f"driver failed programming external connectivity on endpoint: "
                             f"Bind for {where} failed: port is already allocated")
    if e.errno == errno.EACCES:
        start = unprivileged_port_start()
        return errors.System(
            f"cannot expose privileged port {port}, you can add "
            f"'net.ipv4.ip_unprivileged_port_start={port}' to /etc/sysctl.conf (currently "
            f"{start}), or choose a larger port number (>= {start})")
    return errors.System(f"cannot bind {proto} {where}: {e.strerror}")


class Published:
    """The listeners of one container. `ports` lists what was bound:
    [(proto, container_port, host_ip, host_port)]."""

    def __init__(self, target_ip, bindings, dial):
        """Bind every binding (all or nothing) and start serving. `dial(type)` returns an
        unconnected socket in the daemon's network namespace."""
        self.target_ip = target_ip
        self.dial = dial
        self.ports = []
        self._socks = []
        self._closed = False
        try:
            for proto, cport, host_ip, host_ports in bindings:
                self._bind_one(proto, cport, host_ip, host_ports)
        except BaseException:
            self.close()
            raise
        for sock, proto, cport in self._socks:
            target = self._serve_tcp if proto == "tcp" else self._serve_udp
            threading.Thread(target=target, args=(sock, cport), daemon=True,
                             name=f"port-{proto}-{cport}").start()

    def _bind_one(self, proto, cport, host_ip, host_ports):
        kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
        last = None
        for port in host_ports:
            s = socket.socket(socket.AF_INET, kind | socket.SOCK_CLOEXEC)
            try:
                if kind == socket.SOCK_STREAM:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((host_ip or "0.0.0.0", port))
                if kind == socket.SOCK_STREAM:
                    s.listen(128)
            except OSError as e:
                s.close()
                last = _bind_error(e, host_ip, port, proto)
                continue
            self._socks.append((s, proto, cport))
            self.ports.append((proto, cport, host_ip or "0.0.0.0", s.getsockname()[1]))
            return
        raise last

    def close(self):
        """Stop listening; connections already relayed finish on their own."""
        self._closed = True
        for s, _, _ in self._socks:
            try:
                s.shutdown(socket.SHUT_RDWR)    # wakes a thread blocked in accept()
            except OSError:
                pass
            s.close()
        self._socks = []

    # -- TCP --

    def _serve_tcp(self, listener, cport):
        while not self._closed:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(client, cport), daemon=True,
                             name="port-relay").start()

    def _relay(self, client, cport):
        try:
            upstream = self.dial(socket.SOCK_STREAM)
            upstream.settimeout(10)
            upstream.connect((self.target_ip, cport))
            upstream.settimeout(None)
        except (OSError, errors.MinidockError):
            client.close()
            return
        for s in (client, upstream):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        done = threading.Semaphore(0)
        back = threading.Thread(target=_pipe_one_way, args=(upstream, client, done), daemon=True)
        back.start()
        _pipe_one_way(client, upstream, done)
        done.acquire()
        done.acquire()
        client.close()
        upstream.close()

    # -- UDP --

    def _serve_udp(self, sock, cport):
        sel = selectors.DefaultSelector()
        sel.register(sock, selectors.EVENT_READ, None)
        flows = {}                      # client addr -> [socket, last used]
        while not self._closed:
            try:
                events = sel.select(timeout=5)
            except (OSError, ValueError):
                break
            now = time.monotonic()
            for key, _ in events:
                if key.data is None:
                    try:
                        data, addr = sock.recvfrom(65535)
                    except OSError:
                        continue
                    flow = flows.get(addr)
                    if flow is None:
                        try:
                            up = self.dial(socket.SOCK_DGRAM)
                            up.connect((self.target_ip, cport))
                        except (OSError, errors.MinidockError):
                            continue
                        up.setblocking(False)
                        flow = flows[addr] = [up, now]
                        sel.register(up, selectors.EVENT_READ, addr)
                    flow[1] = now
                    try:
                        flow[0].send(data)
                    except OSError:
                        pass
                else:
                    addr = key.data
                    flow = flows.get(addr)
                    try:
                        data = key.fileobj.recv(65535)
                        sock.sendto(data, addr)
                        flow[1] = now
                    except OSError:
                        pass
            for addr, (up, last) in list(flows.items()):
                if now - last > UDP_IDLE:
                    sel.unregister(up)
                    up.close()
                    del flows[addr]
        for up, _ in flows.values():
            up.close()
        sel.close()


def _pipe_one_way(src, dst, done):
    """Move bytes src -> dst with splice(2) until EOF, then half-close dst."""
    r, w = os.pipe2(os.O_CLOEXEC)
    try:
        # A pipe holds 64 KiB by default, so each splice moved at most that: grown to the
        # chunk (fs.pipe-max-size allows 1 MiB unprivileged), a GIL round trip moves 16x more.
        fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, SPLICE_CHUNK)
    except OSError:
        pass                              # over the user's pipe quota: the default size works
    try:
        while True:
            n = os.splice(src.fileno(), w, SPLICE_CHUNK)
            if n == 0:
                break
            while n:
                n -= os.splice(r, dst.fileno(), n)
    except OSError:
        # A reset or a dead peer: end the other direction too (it may be blocked reading).
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
    finally:
        os.close(r)
        os.close(w)
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        done.release()
