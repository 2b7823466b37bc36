"""`python -m dispatcher_gateway.console NAME`: the operators file's line for NAME, with the
password typed twice (not echoed), or read from standard input's first line."""

from __future__ import annotations

import getpass
import sys

from .operators import NAME, hash_password


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not NAME.fullmatch(argv[0]):
        print("usage: python -m dispatcher_gateway.console NAME", file=sys.stderr)
        return 2
    if sys.stdin.isatty():
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            print("the two differ", file=sys.stderr)
            return 1
    else:
        password = sys.stdin.readline().rstrip("\n")
    if not password:
        print("an empty password is refused", file=sys.stderr)
        return 1
    print(f"{argv[0]} {hash_password(password)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
