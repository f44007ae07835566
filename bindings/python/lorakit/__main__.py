"""`python -m lorakit …` (and the `lorakit` console script): run the lorakit command-line tool.

The CLI is found at $LORAKIT_CLI, else bundled in this package (lorakit/_native/bin/lorakit, put there by
`pip install`), else the checkout's .build/release/lorakit-cli, else `lorakit` on PATH. It replaces this
process (exec), so a terminal, signals and the exit status behave as with the tool itself.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path


def cli_path() -> str | None:
    env = os.environ.get("LORAKIT_CLI")
    if env:
        return env
    here = Path(__file__).resolve().parent
    for cand in (here / "_native" / "bin" / "lorakit", here.parents[2] / ".build" / "release" / "lorakit-cli"):
        if cand.is_file() and os.access(cand, os.X_OK):
            return str(cand)
    found = shutil.which("lorakit")
    # The console script of this package is also called lorakit: do not exec ourselves.
    if found and Path(found).resolve() != Path(sys.argv[0]).resolve():
        return found
    return None


def main() -> int:
    cli = cli_path()
    if cli is None:
        print("lorakit: the command-line tool is not bundled with this package and not on PATH; "
              "install the package with `pip install ./bindings/python`, run `make install`, or set LORAKIT_CLI",
              file=sys.stderr)
        return 1
    sys.stdout.flush()
    os.execv(cli, [cli, *sys.argv[1:]])
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main())
