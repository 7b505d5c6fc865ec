# SPDX-License-Identifier: GPL-2.0
"""Kernel style over this project's files. (Clippy needs no test of its
own: the debug kernel is built with CLIPPY=1 and CONFIG_WERROR, so a
warning fails the build.)"""

import os
import subprocess
from pathlib import Path

import pytest

from guest import TOP

KSRC = Path(os.environ.get("RB_KSRC", ""))
KBUILD = Path(os.environ.get("RB_KBUILD", ""))
LLVM = os.environ.get("LLVM_SUFFIX", "-19")

needs_tree = pytest.mark.skipif(not (KSRC / "Makefile").exists(),
                                reason="RB_KSRC not set: run through make check")

KERNEL_STYLE = (".rs", ".c", ".h", ".rst")


def project_files():
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard",
         "drivers", "rust", "samples", "Documentation", "tools", "tests/guest"],
        cwd=TOP, check=True, capture_output=True, text=True).stdout.split()
    return [f for f in out if (TOP / f).is_file() and
            (f.endswith(KERNEL_STYLE) or Path(f).name.startswith("Kconfig"))]


@needs_tree
def test_checkpatch_files():
    files = project_files()
    assert files, "no project files found"
    r = subprocess.run(
        ["perl", KSRC / "scripts/checkpatch.pl", "--strict", "--no-tree",
         "--terse", "--show-types", "-f", *files],
        cwd=TOP, capture_output=True, text=True)
    problems = [l for l in r.stdout.splitlines()
                if ": ERROR:" in l or ": WARNING:" in l or ": CHECK:" in l]
    assert not problems, "\n".join(problems)


@needs_tree
def test_checkpatch_patches():
    patches = sorted((TOP / "patches").glob("*.patch"))
    if not patches:
        pytest.skip("no patches yet")
    r = subprocess.run(
        ["perl", KSRC / "scripts/checkpatch.pl", "--strict", "--no-tree",
         "--terse", "--show-types", "--no-signoff", *patches],
        cwd=TOP, capture_output=True, text=True)
    problems = [l for l in r.stdout.splitlines()
                if ": ERROR:" in l or ": WARNING:" in l or ": CHECK:" in l]
    assert not problems, "\n".join(problems)


@needs_tree
def test_rustfmt():
    r = subprocess.run(
        ["make", "-s", "-C", KSRC, f"O={KBUILD}", f"LLVM={LLVM}", "rustfmtcheck"],
        capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]


@needs_tree
def test_rustdoc():
    """`make rustdoc` of the project's kernel: the kernel's rustdoc flags turn
    every warning (an unresolved link, a public page linking a private item)
    into an error."""
    r = subprocess.run(
        ["make", "-s", "-C", KSRC, f"O={KBUILD}", f"LLVM={LLVM}", "rustdoc"],
        capture_output=True, text=True)
    out = r.stdout + r.stderr
    problems = [l for l in out.splitlines()
                if l.startswith(("warning", "error"))]
    assert r.returncode == 0 and not problems, out[-6000:]
