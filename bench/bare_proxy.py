"""The floor our stack allows: Flask + waitress passing the body through with a pooled
requests.Session, no auth, no billing, no limits (same worker/thread layout and server settings as
the gateway: its epoll loop (`BARE_LOOP=waitress`: waitress's own poll loop), the threads asked for,
the gateway's switch interval and CPU pinning, claimed in the bare proxy's own DATA_DIR). A streamed
call (`"stream": true`) is relayed piece by piece as each upstream chunk arrives."""
from __future__ import annotations

import json
import os
import socket
import sys

import requests
from flask import Flask, Response, request
from waitress import create_server

from config import settings
from service.server import cpus, eventloop, server

UPSTREAM = os.environ["BARE_UPSTREAM"]


def make_app(threads: int) -> Flask:
    app = Flask(__name__)
    session = requests.Session()
    session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=max(64, threads)))

    @app.post("/v1/chat/completions")
    def relay():
        body = request.get_data()
        streamed = json.loads(body).get("stream") is True
        upstream = session.post(UPSTREAM, data=body, headers={"Content-Type": "application/json"},
                                timeout=30, stream=streamed)
        if streamed:
            return Response(upstream.iter_content(None), upstream.status_code, content_type="text/event-stream")
        return Response(upstream.content, upstream.status_code, content_type="application/json")

    return app


def main() -> None:
    port, workers, threads = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    server.raise_descriptor_limit()  # two descriptors per open stream, as the gateway
    conf = settings.load()  # the gateway's server settings, default or set
    sys.setswitchinterval(conf["SWITCH_INTERVAL"])
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(4096)
    for _ in range(workers - 1):
        if os.fork() == 0:
            break
    if conf["PIN_WORKERS"]:
        cpus.pin(conf["DATA_DIR"])
    bare = create_server(make_app(threads), sockets=[sock], threads=threads, asyncore_use_poll=True,
                         connection_limit=10000, channel_request_lookahead=1)
    if os.environ.get("BARE_LOOP") != "waitress":  # the gateway's loop, unless asked for waitress's own
        eventloop.install(bare)
    bare.run()


if __name__ == "__main__":
    main()
