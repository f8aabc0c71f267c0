"""`python -m service.server`: waitress with the settings that suit streaming (SPEC §2)."""
from __future__ import annotations

import logging

from waitress import serve

from service import create_app


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    app = create_app()
    conf = app.config
    # channel_request_lookahead lets waitress notice a client that hung up mid-stream at once,
    # so the upstream call is closed and billing stops at what was delivered
    serve(app, host=conf["HOST"], port=conf["PORT"], threads=conf["WAITRESS_THREADS"],
          channel_request_lookahead=1, ident="tollgate", clear_untrusted_proxy_headers=True)


if __name__ == "__main__":
    main()
