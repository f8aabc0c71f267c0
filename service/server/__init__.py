"""The process: waitress on an epoll loop, the guard, worker supervision and the log sink.

`python -m service.server` runs service/server/server.py's main() (service/server/__main__.py)."""
