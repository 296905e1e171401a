"""A fresh machine: the system-packages script, and what the wheel installs."""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
SCRIPT = ROOT / ".ci" / "system-packages"
PACKAGES = ["chromium", "chromium-driver", "tmux", "redis-server"]


def bare_path(tmp_path: Path, *extra: str) -> Path:
    """A PATH folder with only the tools the script itself uses, plus `extra` fake commands:
    on it, every package the tests need looks missing."""
    folder = tmp_path / "bin"
    folder.mkdir(mode=0o755)
    for tool in ("id", "dirname", "basename"):
        real = shutil.which(tool)
        assert real is not None
        (folder / tool).symlink_to(real)
    for name in extra:
        (folder / name).write_text("#!/bin/sh\n")
        (folder / name).chmod(0o755)
    return folder


def run_script(
    path: Path, *, as_nobody: bool, script: Path = SCRIPT
) -> subprocess.CompletedProcess[str]:
    bash = shutil.which("bash")
    assert bash is not None
    command = [bash, str(script)]
    if as_nobody:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("needs setpriv to run the script as another user")
        command = [setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups", *command]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=30, env={"PATH": str(path)}
    )


def shared_copy(shared_tmp: Path) -> Path:
    """The script copied where another user can read it (the checkout may be owner-only)."""
    folder = shared_tmp / "ci"
    folder.mkdir(mode=0o755)
    copy = folder / SCRIPT.name
    shutil.copy(SCRIPT, copy)
    copy.chmod(0o755)
    return copy


def test_not_root_names_the_missing_packages_and_the_one_command(shared_tmp: Path) -> None:
    path = bare_path(shared_tmp, "tmux")
    script = shared_copy(shared_tmp)
    result = run_script(path, as_nobody=os.getuid() == 0, script=script)
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[0] == (
        "system-packages: the tests need these system packages, which are missing:"
        " chromium chromium-driver redis-server"
    )
    assert lines[-1].strip() == f"sudo {script}"


@pytest.mark.skipif(os.getuid() != 0, reason="the root path needs root")
def test_root_without_apt_says_so_and_installs_nothing(tmp_path: Path) -> None:
    result = run_script(bare_path(tmp_path), as_nobody=False)
    assert result.returncode == 1
    assert "missing chromium chromium-driver tmux redis-server, and there is no apt-get" in (
        result.stderr
    )


def test_everything_present_is_a_silent_success(shared_tmp: Path) -> None:
    commands = ["chromium", "chromedriver", "tmux", "redis-server"]
    script = shared_copy(shared_tmp)
    result = run_script(bare_path(shared_tmp, *commands), as_nobody=os.getuid() == 0, script=script)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_make_test_and_ci_use_the_script() -> None:
    assert "\t.ci/system-packages\n" in (ROOT / "Makefile").read_text()
    assert "\n.ci/system-packages\n" in (ROOT / ".ci" / "run").read_text()


def test_the_wheel_installs_only_the_projects_names(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(tmp_path), ROOT],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("papaya_trio-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        scripts = configparser.ConfigParser()
        scripts.read_string(archive.read(entry_points).decode())
    tops = {name.split("/", 1)[0] for name in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"papaya_trio", "papaya_clients"}
    assert "papaya_clients/web/index.html" in names
    assert "papaya_clients/terminal/app.py" in names
    assert dict(scripts["console_scripts"]) == {
        "papaya-trio": "papaya_trio.cli:main",
        "papaya-chat": "papaya_clients.terminal.app:main",
    }


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in (ROOT / "contrib" / "papaya-trio.service").read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def test_the_unit_leaves_every_setting_to_the_config_file() -> None:
    (exec_start,) = unit_settings()["ExecStart"]
    argv = exec_start.split()
    assert argv[1:] == ["serve", "--config", "/etc/papaya-trio/config.toml"]
    (state,) = unit_settings()["StateDirectory"]
    assert unit_settings()["WorkingDirectory"] == [f"/var/lib/{state}"]


def test_the_units_documentation_is_installed_by_its_own_steps() -> None:
    (url,) = unit_settings()["Documentation"]
    path = url.removeprefix("file://")
    text = (ROOT / "contrib" / "papaya-trio.service").read_text()
    assert f"install -D -m 0644 /path/to/papaya-trio/README.md {path}" in text
