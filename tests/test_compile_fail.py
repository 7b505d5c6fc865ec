# SPDX-License-Identifier: GPL-2.0
"""Misuse of the safe abstractions that must not compile.

The kernel's doctests cannot say so themselves: Linux 7.3 builds them with
scripts/rustdoc_test_builder, which only saves each test's source for
KUnit, so rustdoc sees every `compile_fail` example "compile" and the build
fails. The examples stay in the documentation, as `ignore` blocks whose
first line is `// compile_fail: E0xxx`, each next to a compiling example
that is an ordinary doctest; this test finds every such block in rust/ and
builds it, wrapped as rustdoc would wrap it, as an external module (M=)
against the debug kernel. It must fail with exactly that error.
"""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from guest import TOP

KSRC = Path(os.environ.get("RB_KSRC", ""))
KBUILD = Path(os.environ.get("RB_KBUILD", ""))
LLVM = os.environ.get("LLVM_SUFFIX", "-19")
WORK = TOP / "build" / "compile-fail"

needs_tree = pytest.mark.skipif(not (KBUILD / "Module.symvers").exists(),
                                reason="RB_KBUILD not set: run through make check")

MARK = re.compile(r"^// compile_fail: (E\d{4})")

SKELETON = """\
// SPDX-License-Identifier: GPL-2.0
//! Built by tests/test_compile_fail.py.
#![allow(dead_code, unused_imports)]
use kernel::prelude::*;

module! {{
    type: Case,
    name: "{name}",
    authors: ["tests/test_compile_fail.py"],
    description: "a use that must not compile",
    license: "GPL",
}}

struct Case;

impl kernel::Module for Case {{
    fn init(_module: &'static ThisModule) -> Result<Self> {{
        Ok(Case)
    }}
}}

{body}
"""


def doc_text(line):
    """A doc comment line without its `///` or `//!`."""
    return re.sub(r"^\s*(///|//!) ?", "", line)


def examples():
    """(where, error code, code) of every compile_fail block in rust/."""
    found = []
    for path in sorted((TOP / "rust").rglob("*.rs")):
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines[:-1]):
            m = MARK.match(doc_text(lines[i + 1]))
            if doc_text(line) != "```ignore" or not m:
                continue
            code = []
            for l in lines[i + 2:]:
                text = doc_text(l)
                if text == "```":
                    break
                # Hidden lines are code too, as in rustdoc.
                code.append(text[2:] if text.startswith("# ") else text)
            found.append((f"{path.relative_to(TOP)}:{i + 1}", m.group(1), "\n".join(code)))
    return found


def wrap(code):
    """As rustdoc does: the example is the body of a function, which
    returns a Result when the example ends with `Ok::<...>`."""
    last = [l for l in code.splitlines() if l.strip()][-1].strip()
    ret = " -> Result<(), Error>" if last.startswith("Ok::<") else ""
    return f"fn doctest(){ret} {{\n{code}\n}}\n"


def build(name, body):
    d = WORK / name
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    (d / "Kbuild").write_text(f"obj-m := {name}.o\n")
    (d / f"{name}.rs").write_text(SKELETON.format(name=name, body=body))
    r = subprocess.run(
        ["make", "-C", KSRC, f"O={KBUILD}", f"M={d}", f"LLVM={LLVM}",
         f"CC=clang{LLVM}", "modules"],
        capture_output=True, text=True, timeout=600)
    (d / "build.log").write_text(r.stdout + r.stderr)
    return r.returncode, r.stdout + r.stderr


@needs_tree
def test_skeleton_builds():
    """The wrapping itself compiles: a failure below is the example's."""
    rc, out = build("cf_skeleton", wrap("let x = 1;\nlet _ = x;"))
    assert rc == 0, out[-3000:]


def test_examples_found():
    # has_feature() outside a binding, a borrowing balloon handler.
    assert len(examples()) >= 2, examples()


@needs_tree
@pytest.mark.parametrize("where,code,src", examples(), ids=[w for w, _, _ in examples()])
def test_does_not_compile(where, code, src):
    name = "cf_" + re.sub(r"\W", "_", where.split("/")[-1])
    rc, out = build(name, wrap(src))
    errors = set(re.findall(r"error\[(E\d{4})\]", out))
    print(f"{where}: {sorted(errors)}")
    assert rc != 0, f"{where} compiles:\n{src}"
    assert errors == {code}, f"{where}: expected {code} only, got {sorted(errors)}:\n{out[-3000:]}"
