"""Build step of the `lorakit` Python package: bundle the native library, the CLI and the Swift runtime.

`pip install ./bindings/python` (or `make wheel`) puts into the package, under lorakit/_native/:

    lib/liblorakit.so            the C ABI the binding loads with ctypes
    lib/lorakit-swift/*.so       the Swift runtime libraries it needs (found through its RUNPATH
                                 $ORIGIN/lorakit-swift), so no Swift toolchain is needed at run time
    bin/lorakit                  the CLI (`python -m lorakit …`, or the `lorakit` console script)

— the layout of `make install`'s prefix. The native files come from, in order:
  1. $LORAKIT_BUILD_DIR (a folder holding liblorakit.so and lorakit-cli, e.g. .build/release);
  2. the checkout this package sits in (bindings/python/../..): its release build, brought up to date now
     with `swift build -c release -Xswiftc -enable-testing` (the Makefile's configuration, so `make
     build`'s output is reused; a no-op when it is current).
An editable install (`pip install -e`) bundles nothing: it loads the checkout's build, as before.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

try:
    from setuptools.command.bdist_wheel import bdist_wheel
except ImportError:  # setuptools < 70.1: the wheel package provides it
    from wheel.bdist_wheel import bdist_wheel

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SWIFT_FLAGS = ["-c", "release", "-Xswiftc", "-enable-testing"]
RUNTIME_PREFIXES = ("libswift", "libdispatch", "libBlocksRuntime", "libFoundation", "lib_FoundationICU")


def log(msg: str) -> None:
    print(f"lorakit build: {msg}", file=sys.stderr, flush=True)


def native_build_dir() -> Path:
    env = os.environ.get("LORAKIT_BUILD_DIR")
    if env:
        d = Path(env).resolve()
        if not (d / "liblorakit.so").is_file():
            sys.exit(f"lorakit build: LORAKIT_BUILD_DIR={env} has no liblorakit.so")
        return d
    if not (REPO / "Package.swift").is_file():
        sys.exit("lorakit build: no LoRAKit checkout around this package and LORAKIT_BUILD_DIR is not set: "
                 "set it to a folder with liblorakit.so and lorakit-cli (e.g. .build/release after `make build`)")
    swift = shutil.which("swift")
    if swift is None:
        prebuilt = REPO / ".build" / "release"
        if (prebuilt / "liblorakit.so").is_file():
            log(f"swift is not on PATH; using the existing build in {prebuilt}")
            return prebuilt
        sys.exit("lorakit build: building liblorakit.so needs Swift 6 on PATH (https://swift.org/install), "
                 "or LORAKIT_BUILD_DIR pointing at a build")
    # Incremental: a no-op when `make build` is up to date.
    log(f"building liblorakit.so and lorakit-cli in {REPO} (swift build {' '.join(SWIFT_FLAGS)})")
    subprocess.run([swift, "build", *SWIFT_FLAGS], cwd=REPO, check=True, stdout=sys.stderr)
    bin_path = Path(subprocess.run([swift, "build", *SWIFT_FLAGS, "--show-bin-path"], cwd=REPO, check=True,
                                   capture_output=True, text=True).stdout.strip())
    return bin_path


def runtime_libraries(binaries: list[Path]) -> list[Path]:
    """The Swift runtime libraries the binaries load (ldd), to bundle beside them."""
    found: dict[str, Path] = {}
    for b in binaries:
        out = subprocess.run(["ldd", str(b)], check=True, capture_output=True, text=True).stdout
        for line in out.splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[1] == "=>" and parts[0].startswith(RUNTIME_PREFIXES):
                if parts[2] == "not":
                    sys.exit(f"lorakit build: {b} needs {parts[0]}, which the loader cannot find")
                found[parts[0]] = Path(parts[2])
    return sorted(found.values())


def bundle(dest: Path) -> None:
    src = native_build_dir()
    lib, cli = src / "liblorakit.so", src / "lorakit-cli"
    native = dest / "_native"
    if native.exists():
        shutil.rmtree(native)
    (native / "lib" / "lorakit-swift").mkdir(parents=True)
    (native / "bin").mkdir()
    shutil.copy2(lib, native / "lib" / "liblorakit.so")
    binaries = [lib]
    if cli.is_file():
        shutil.copy2(cli, native / "bin" / "lorakit")
        binaries.append(cli)
    else:
        log(f"{cli} is missing: the package will have no CLI (python -m lorakit)")
    runtime = runtime_libraries(binaries)
    for f in runtime:
        shutil.copy2(f, native / "lib" / "lorakit-swift" / f.name)
    log(f"bundled {lib} and {len(runtime)} Swift runtime libraries from {src}")


class BuildPy(build_py):
    def run(self):
        super().run()
        if not getattr(self, "editable_mode", False):
            bundle(Path(self.build_lib) / "lorakit")


class BdistWheel(bdist_wheel):
    """The wheel holds native code for one platform but no Python extension: any Python 3 loads it."""

    def finalize_options(self):
        super().finalize_options()
        self.root_is_pure = False

    def get_tag(self):
        _, _, plat = super().get_tag()
        return "py3", "none", plat


setup(cmdclass={"build_py": BuildPy, "bdist_wheel": BdistWheel})
