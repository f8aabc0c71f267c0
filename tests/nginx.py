"""nginx from Debian's packages, configured from deploy/nginx-tollgate.conf, in front of gateways."""
from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import requests

from tests.process import ROOT, free_port

MAIN = """worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 512; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    include {tmp}/site.conf;
}}
"""


class Nginx:
    def __init__(self, tmp: Path, backends: list[int]):
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        assert Path(binary).exists(), "nginx is not installed (make test installs it)"
        site = (ROOT / "deploy" / "nginx-tollgate.conf").read_text()
        servers = "\n".join(f"    server 127.0.0.1:{p} max_fails=1 fail_timeout=5s;" for p in backends)
        site = re.sub(r"(?m)^    server 127\.0\.0\.1:800\d.*\n", "", site)
        site = site.replace("    keepalive 64;", servers + "\n    keepalive 64;")
        self.port = free_port()
        site = site.replace("listen 80;", f"listen 127.0.0.1:{self.port};")
        (tmp / "site.conf").write_text(site)
        (tmp / "nginx.conf").write_text(MAIN.format(tmp=tmp))
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([binary, "-c", str(tmp / "nginx.conf"), "-p", str(tmp)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while True:
            assert self.proc.poll() is None, (tmp / "error.log").read_text()
            try:
                requests.get(f"{self.url}/healthz", timeout=1)
                return
            except requests.ConnectionError:
                assert time.monotonic() < deadline, "nginx did not start"
                time.sleep(0.05)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
