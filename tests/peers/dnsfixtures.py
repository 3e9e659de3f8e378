"""Real DNS servers for the peer-discovery tests: dnsmasq and the embedded server."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time

import dns.exception
import dns.message
import dns.query
import dns.rcode

from jobset_runtime.addresses import free_port


def find_dnsmasq() -> str | None:
    path = shutil.which("dnsmasq")
    if path is None and os.access("/usr/sbin/dnsmasq", os.X_OK):
        path = "/usr/sbin/dnsmasq"
    return path


def ask(server: tuple[str, int], name: str, rdtype: str = "A", *, tcp: bool = False, timeout: float = 2.0, **kw):
    """One query with dnspython, the reference client."""
    q = dns.message.make_query(name, rdtype, **kw)
    f = dns.query.tcp if tcp else dns.query.udp
    return f(q, server[0], port=server[1], timeout=timeout)


class Dnsmasq:
    """dnsmasq on loopback serving `hosts` from an addn-hosts file.

    Authoritative-style: `--local=/<zone>/` makes unknown names in `zone`
    NXDOMAIN instead of a forward; `--no-resolv` means no upstream at all.
    `update()` rewrites the file and sends SIGHUP, which makes dnsmasq re-read it.
    """

    def __init__(self, workdir, hosts: dict[str, list[str] | str] | None = None, *, zone: str = "cluster.local",
                 port: int = 0):
        """port: where to serve; 0, a free one (UDP and TCP)."""
        self.binary = find_dnsmasq()
        self.hosts_file = os.path.join(str(workdir), "dnsmasq.hosts")
        self.zone = zone
        self._port = port
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self._write(hosts or {})

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    @property
    def nameserver(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _write(self, hosts) -> None:
        lines = []
        for name, ips in hosts.items():
            for ip in [ips] if isinstance(ips, str) else ips:
                lines.append(f"{ip} {name.rstrip('.')}\n")
        tmp = self.hosts_file + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(lines)
        os.replace(tmp, self.hosts_file)

    def start(self) -> Dnsmasq:
        for _ in range(5):
            self.port = self._port or free_port("127.0.0.1", udp=True)  # dnsmasq serves both
            argv = [
                self.binary, "--keep-in-foreground", "--conf-file=/dev/null", "--pid-file=",
                "--no-resolv", "--no-hosts", f"--addn-hosts={self.hosts_file}",
                f"--port={self.port}", "--listen-address=127.0.0.1", "--bind-interfaces",
                f"--local=/{self.zone}/", "--local-ttl=0", "--neg-ttl=0", "--cache-size=0",
            ]
            if os.geteuid() == 0:
                argv.append("--user=root")  # so a SIGHUP re-read of a root-only tmp dir works
            self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            if self._wait_ready():
                return self
            self.stop()
        raise RuntimeError("dnsmasq did not start")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False  # e.g. the port was taken meanwhile
            try:
                ask(self.address, f"probe.{self.zone}", timeout=0.2)
                return True
            except (dns.exception.DNSException, OSError):
                time.sleep(0.05)
        return False

    def update(self, hosts) -> None:
        self._write(hosts)
        self.proc.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None and self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class SlowDns:
    """A UDP relay in front of a DNS server that passes each query on `delay` seconds late (a
    cluster DNS server slow to answer), and its answer straight back."""

    def __init__(self, upstream: tuple, delay: float):
        self.upstream, self.delay = tuple(upstream), delay
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.queries = 0
        self._timers: list[threading.Timer] = []
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def address(self) -> tuple[str, int]:
        return self.sock.getsockname()

    @property
    def nameserver(self) -> str:
        host, port = self.address
        return f"{host}:{port}"

    def _serve(self):
        while True:
            try:
                query, client = self.sock.recvfrom(65535)
            except OSError:
                return  # closed
            self.queries += 1
            timer = threading.Timer(self.delay, self._relay, (query, client))
            self._timers.append(timer)
            timer.start()

    def _relay(self, query, client):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as up:
            up.settimeout(5)
            try:
                up.sendto(query, self.upstream)
                self.sock.sendto(up.recv(65535), client)
            except OSError:
                pass  # the relay was closed meanwhile

    def close(self):
        """Every query received so far is passed on (and its answer back) before the relay closes."""
        for timer in list(self._timers):
            timer.join()
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
