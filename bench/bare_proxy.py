"""The floor our stack allows: Flask + waitress passing the body through with a pooled
requests.Session, no auth, no billing, no limits (same worker/thread layout as the gateway)."""
from __future__ import annotations

import os
import socket
import sys

import requests
from flask import Flask, Response, request
from waitress import create_server

UPSTREAM = os.environ["BARE_UPSTREAM"]


def make_app() -> Flask:
    app = Flask(__name__)
    session = requests.Session()
    session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=64))

    @app.post("/v1/chat/completions")
    def relay():
        upstream = session.post(UPSTREAM, data=request.get_data(),
                                headers={"Content-Type": "application/json"}, timeout=30)
        return Response(upstream.content, upstream.status_code, content_type="application/json")

    return app


def main() -> None:
    port, workers, threads = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(1024)
    for _ in range(workers - 1):
        if os.fork() == 0:
            break
    create_server(make_app(), sockets=[sock], threads=threads).run()


if __name__ == "__main__":
    main()
