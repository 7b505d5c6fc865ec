# SPDX-License-Identifier: GPL-2.0
"""scripts/overlay.sh on a small fake kernel tree: new files copied, patches
applied from pristine copies, nothing rewritten when nothing changed, and
removals undone."""

import os
import subprocess
import textwrap

import pytest

from guest import TOP


def sh(cmd, cwd, env=None):
    return subprocess.run(cmd, cwd=cwd, env=env, shell=True, check=True,
                          capture_output=True, text=True).stdout


@pytest.fixture
def trees(tmp_path):
    ksrc = tmp_path / "linux"
    (ksrc / "rust/kernel").mkdir(parents=True)
    (ksrc / "Makefile").write_text("VERSION = 7\nPATCHLEVEL = 3\nSUBLEVEL = 9\n")
    (ksrc / "rust/kernel/lib.rs").write_text("pub mod a;\npub mod c;\n")
    repo = tmp_path / "repo"
    (repo / "rust/kernel").mkdir(parents=True)
    (repo / "patches").mkdir()
    sh("git init -q", repo)
    env = dict(os.environ, KDIR=str(ksrc), OVERLAY_FROM=str(repo),
               RUST_BALLOON_CACHE=str(tmp_path / "cache"))
    return ksrc, repo, env


def overlay(env):
    return sh(f"bash {TOP}/scripts/overlay.sh", TOP, env)


def patch(name, old, new):
    return textwrap.dedent(f"""\
        --- a/{name}
        +++ b/{name}
        @@ -1,2 +1,3 @@
         {old[0]}
        +{new}
         {old[1]}
        """)


def test_overlay_install_update_remove(trees):
    ksrc, repo, env = trees
    (repo / "rust/kernel/balloon.rs").write_text("// v1\n")
    (repo / "patches/0001-lib.patch").write_text(
        patch("rust/kernel/lib.rs", ["pub mod a;", "pub mod c;"], "pub mod balloon;"))
    out = overlay(env)
    assert "updated rust/kernel/balloon.rs" in out
    assert (ksrc / "rust/kernel/balloon.rs").read_text() == "// v1\n"
    assert (ksrc / "rust/kernel/lib.rs").read_text() == \
        "pub mod a;\npub mod balloon;\npub mod c;\n"

    # Nothing changed: nothing is written (mtimes stay, Kbuild rebuilds nothing).
    mtimes = {p: p.stat().st_mtime_ns for p in ksrc.rglob("*") if p.is_file()}
    out = overlay(env)
    assert "updated" not in out
    assert mtimes == {p: p.stat().st_mtime_ns for p in ksrc.rglob("*") if p.is_file()}

    # A changed patch is applied to the pristine file, not on top of the
    # old result; a removed file and a removed patch are undone.
    (repo / "patches/0001-lib.patch").write_text(
        patch("rust/kernel/lib.rs", ["pub mod a;", "pub mod c;"], "pub mod virtio;"))
    overlay(env)
    assert (ksrc / "rust/kernel/lib.rs").read_text() == \
        "pub mod a;\npub mod virtio;\npub mod c;\n"
    (repo / "rust/kernel/balloon.rs").unlink()
    (repo / "patches/0001-lib.patch").unlink()
    out = overlay(env)
    assert "removed rust/kernel/balloon.rs" in out
    assert not (ksrc / "rust/kernel/balloon.rs").exists()
    assert (ksrc / "rust/kernel/lib.rs").read_text() == "pub mod a;\npub mod c;\n"


def test_overlay_refuses_to_overwrite_upstream(trees):
    ksrc, repo, env = trees
    (repo / "rust/kernel/lib.rs").write_text("// mine\n")
    with pytest.raises(subprocess.CalledProcessError) as e:
        overlay(env)
    assert "exists upstream" in e.value.stderr
    assert (ksrc / "rust/kernel/lib.rs").read_text() == "pub mod a;\npub mod c;\n"


def test_patch_that_does_not_apply_is_named(trees):
    ksrc, repo, env = trees
    (repo / "patches/0001-bad.patch").write_text(
        patch("rust/kernel/lib.rs", ["pub mod x;", "pub mod y;"], "pub mod z;"))
    with pytest.raises(subprocess.CalledProcessError) as e:
        overlay(env)
    assert "0001-bad.patch does not apply" in e.value.stderr


def test_kdir_must_be_7_3(tmp_path):
    (tmp_path / "rust/kernel").mkdir(parents=True)
    (tmp_path / "Makefile").write_text("VERSION = 6\nPATCHLEVEL = 18\nSUBLEVEL = 1\n")
    r = subprocess.run(["bash", TOP / "scripts/fetch-kernel.sh"], capture_output=True,
                       text=True, env=dict(os.environ, KDIR=str(tmp_path)))
    assert r.returncode != 0 and "is Linux 6.18.1, this project needs 7.3.x" in r.stderr
