"""The `flashfit-server` executable. `probe`, which Docker runs in every replica every second,
takes the socket-only fast path (flashfit_server.probe); every other command, and a probe with
options that path does not handle, goes to the argparse CLI (flashfit_server.cli)."""

from __future__ import annotations

import sys


def main() -> int:
    argv = sys.argv[1:]
    if argv[:1] == ["probe"]:
        from flashfit_server.probe import fast_probe

        code = fast_probe(argv[1:])
        if code is not None:
            return code
    from flashfit_server.cli import main as cli_main

    return cli_main(argv)
