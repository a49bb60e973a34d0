"""The free_inodes check: a plug-in module (homelab_ops/health/plugins/free_inodes.py) and nothing else.

Judged on a real filesystem whose inodes run out while its space does not: a tmpfs with a
fixed inode count (needs root, as CI runs the tests).
"""

from __future__ import annotations

import os
import subprocess

import pytest

from homelab_ops.health import evaluate as ev
from homelab_ops.health.checks import FAIL, FREE_DISK, OK, WARN
from homelab_ops.health.config import HealthConfig
from homelab_ops.health.plugins import free_inodes
from homelab_ops.settings import SettingsError, parse


def test_judged_against_its_own_thresholds_and_filesystems_without_a_count_pass():
    got = free_inodes.judge({"/": (1000, 500), "/data": (1000, 50), "/sd": (1000, 20), "/btrfs": (0, 0)}, 10, 3)
    assert [(r.name, r.state) for r in got] == [
        ("free_inodes:/", OK), ("free_inodes:/btrfs", OK), ("free_inodes:/data", WARN), ("free_inodes:/sd", FAIL)]
    assert got[3].reason == "/sd: 2.0% of 1,000 inodes free (below 3%)" and got[3].remedy == FREE_DISK
    assert "no fixed inode count" in got[1].reason


def test_its_thresholds_and_remedy_switch_join_the_one_settings_vocabulary():
    s = parse({"thresholds": {"free_inodes_warn_pct": 25}, "health": {"remedies": {"free_inodes:/data": False}}}, "t")
    th = ev.Thresholds.from_settings(s)
    assert (th.get("free_inodes_warn_pct"), th.get("free_inodes_fail_pct")) == (25, 3.0)
    with pytest.raises(SettingsError, match="unknown threshold free_inode_warn_pct"):
        parse({"thresholds": {"free_inode_warn_pct": 25}}, "t")


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root (CI runs as root)")
def test_a_filesystem_out_of_inodes_fails_with_space_left(tmp_path, write_settings):
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m,nr_inodes=200,mode=0700", "tmpfs", str(disk)], check=True)
    try:
        _, s = write_settings({"metrics": {"mounts": [str(disk)], "textfile_dir": str(tmp_path / "tf")}})
        mine = [g for g in ev.GROUPS if g[1] == free_inodes.CHECKS]  # found by the registry, not listed by hand
        assert [r.state for r in ev.run_checks(HealthConfig.of(s), groups=mine)] == [OK]
        states = []
        for upto in (185, 196):  # the root directory holds one of the 200: 14, then 3 left
            for i in range(upto):
                (disk / f"f{i}").touch()
            (result,) = ev.run_checks(HealthConfig.of(s), groups=mine)
            states.append((result.name, result.state))
        assert states == [(f"free_inodes:{disk}", WARN), (f"free_inodes:{disk}", FAIL)], result
        st = os.statvfs(disk)
        assert st.f_bavail * st.f_frsize > 60 << 20  # the space is all there
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
