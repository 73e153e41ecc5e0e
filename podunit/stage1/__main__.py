"""Entry point systemd runs: `python3 -m podunit.stage1 COMMAND POD [APP]`.

Thin on purpose: argv handling plus one call. Imports happen per command so
that each start of a unit pays only for what it uses.
"""

from __future__ import annotations

import sys

USAGE = "usage: python3 -m podunit.stage1 {pod-up POD | pod-down POD | app POD APP} [--debug]"


def main(argv: list[str]) -> int:
    debug = "--debug" in argv
    args = [a for a in argv if a != "--debug"]
    if len(args) == 2 and args[0] == "pod-up":
        from podunit.stage1.sandbox import pod_up

        return pod_up(args[1])
    if len(args) == 2 and args[0] == "pod-down":
        from podunit.stage1.sandbox import pod_down

        return pod_down(args[1])
    if len(args) == 3 and args[0] == "app":
        from podunit.stage1.app import start_app

        return start_app(args[1], args[2], debug=debug)
    print(USAGE, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
