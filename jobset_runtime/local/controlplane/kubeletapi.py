"""The one kubelet endpoint `kubectl logs` needs: GET /containerLogs/<ns>/<pod>/<container>.

The API server proxies `pods/<name>/log` to the node's kubelet at its InternalIP and
daemonEndpoints port (pkg/kubelet/server/server.go getContainerLogs), over TLS with its
kubelet client certificate.  Here: HTTPS on 127.0.0.1, only for clients holding a
certificate of the cluster CA (the API server's, or the admin's), serving the log
file the node agent writes for each container.  Query: `tailLines`, `limitBytes`,
`follow` (until the container has ended and the file is read to its end); `previous`
is answered 400: a restarted container's earlier output is in the same file.
"""

from __future__ import annotations

import os
import ssl
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FOLLOW_POLL = 0.2


def tail_lines(data: bytes, n: int) -> bytes:
    lines = data.splitlines(keepends=True)
    return b"".join(lines[-n:]) if n >= 0 else data


class KubeletServer:
    """`find(namespace, pod, container)` -> (log path, running?) or None."""

    def __init__(self, find, cert: str, key: str, client_ca: str, host: str = "127.0.0.1", port: int = 0):
        self.find = find
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        ctx.load_verify_locations(client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED  # no certificate of the cluster CA, no answer
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server._get(self)

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self) -> KubeletServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _get(self, req: BaseHTTPRequestHandler) -> None:
        url = urllib.parse.urlsplit(req.path)
        parts = [urllib.parse.unquote(p) for p in url.path.strip("/").split("/")]
        q = dict(urllib.parse.parse_qsl(url.query))
        if len(parts) != 4 or parts[0] != "containerLogs":
            return self._error(req, 404, "only /containerLogs/<namespace>/<pod>/<container> is served here")
        if q.get("previous") == "true":
            return self._error(req, 400, "previous: a restarted container's earlier output is in the same log")
        found = self.find(*parts[1:])
        if found is None:
            return self._error(req, 404, f"no container {parts[3]!r} in pod {parts[1]}/{parts[2]} on this node")
        path, running = found
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            data = b""
        if "tailLines" in q:
            data = tail_lines(data, int(q["tailLines"]))
        limit = int(q["limitBytes"]) if q.get("limitBytes", "").isdigit() else None
        if limit is not None:
            data = data[:limit]
        follow = q.get("follow") == "true" and limit is None
        req.send_response(200)
        req.send_header("Content-Type", "text/plain")
        if not follow:
            req.send_header("Content-Length", str(len(data)))
            req.end_headers()
            req.wfile.write(data)
            return
        # HTTP/1.0 (BaseHTTPRequestHandler's): no length, the body ends when the connection closes.
        req.end_headers()
        try:
            req.wfile.write(data)
            req.wfile.flush()
            pos = os.path.getsize(path) if os.path.exists(path) else 0
            while True:
                more = b""
                if os.path.exists(path):
                    with open(path, "rb") as f:
                        f.seek(pos)
                        more = f.read()
                        pos = f.tell()
                if more:
                    req.wfile.write(more)
                    req.wfile.flush()
                elif not running():
                    break
                else:
                    time.sleep(FOLLOW_POLL)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            pass
        req.close_connection = True

    @staticmethod
    def _error(req, code: int, message: str) -> None:
        body = message.encode()
        req.send_response(code)
        req.send_header("Content-Type", "text/plain")
        req.send_header("Content-Length", str(len(body)))
        req.end_headers()
        req.wfile.write(body)
