"""`aqpim-sim explore`: a local web page to move the trade-offs (docs/explore.md); serves until interrupted."""

from __future__ import annotations

import argparse
import tempfile
import threading
import webbrowser

from sim.errors import ConfigError

HELP = "open the explorer: a local web page that recomputes the systems as you move the controls"
EXAMPLE = """examples:
  aqpim-sim explore                      (serves http://127.0.0.1:8765/ and opens it in a browser)
  aqpim-sim explore --port 9000 --no-browser
The server listens on 127.0.0.1 only; nothing leaves the machine, and it writes only into a temporary folder
that is removed when it stops (Ctrl-C)."""


def add_parser(sub) -> None:
    p = sub.add_parser("explore", help=HELP, description=HELP, epilog=EXAMPLE,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, default=8765, metavar="N", help="port on 127.0.0.1 (0: any free port; "
                                                                        "default 8765)")
    p.add_argument("--no-browser", action="store_true", help="print the address without opening a browser")
    p.add_argument("--log", action="store_true", help="print one line per request")


def run(args) -> int:
    from sim.explore.server import make_server

    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be from 0 to 65535, got {args.port}")
    with tempfile.TemporaryDirectory(prefix="aqpim-explore-") as folder:
        try:
            server = make_server(args.port, folder, quiet=not args.log)
        except OSError as e:
            raise ConfigError(f"cannot listen on 127.0.0.1:{args.port}: {e.strerror or e}; try --port 0") from None
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        print(f"aqpim-sim explore: serving {url} (Ctrl-C stops)", flush=True)
        if not args.no_browser:
            threading.Thread(target=webbrowser.open, args=(url,), daemon=True).start()
        try:
            server.serve_forever()
        finally:
            server.server_close()
    return 0
