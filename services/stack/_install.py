"""Installs what the local stack needs: Debian packages and the Kafka jars.

Debian packages are installed only as root (as CI and a fresh development machine
run); otherwise the exact command is printed and `stack up` stops. Kafka comes from
Maven Central: `mvn dependency:copy-dependencies` resolves the broker and a log4j2
binding into a cache folder outside the repo, once per Kafka version."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path

from services.stack._errors import StackError

__all__ = ["DEPLOY_DIR", "TOOLS", "ensure_commands", "ensure_kafka_jars", "java_major"]

DEPLOY_DIR = Path(__file__).resolve().parents[2] / "deploy" / "local"

# command the stack runs -> Debian package that provides it
PACKAGES: dict[str, str] = {
    "redis-server": "redis-server",
    "memcached": "memcached",
    "/usr/lib/rabbitmq/bin/rabbitmq-server": "rabbitmq-server",
    "java": "openjdk-17-jre-headless",
    "mvn": "maven",
    "kcat": "kcat",
    "amqp-publish": "amqp-tools",
}

# Installed beside the services: kcat and amqp-tools read and write topics and queues
# from the shell (the dead letters, say), and write what Python clients cannot, such as
# a header whose name is not UTF-8; the tests use them as the non-Python producers they
# are.
TOOLS = ("kcat", "amqp-publish")

_POLICY_RC = Path("/usr/sbin/policy-rc.d")

Say = Callable[[str], None]


def _have(command: str) -> bool:
    return Path(command).is_file() if command.startswith("/") else shutil.which(command) is not None


def ensure_commands(commands: Iterable[str], say: Say) -> None:
    """Installs the Debian packages providing `commands` that are missing."""
    missing = sorted({PACKAGES[c] for c in commands if not _have(c)})
    if not missing:
        return
    install = ["apt-get", "install", "-y", "--no-install-recommends", *missing]
    if os.geteuid() != 0:
        raise StackError(
            f"missing Debian packages {', '.join(missing)}; install them, then run "
            f"`agentflux stack up` again:\n  sudo apt-get update && sudo {' '.join(install)}"
        )
    say(f"installing {', '.join(missing)} (apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # Debian starts a daemon on install (on the default ports) unless policy-rc.d says
    # no; the stack runs its own instances, so keep the packaged ones from starting.
    guard = not _POLICY_RC.exists()
    if guard:
        _POLICY_RC.write_text(
            "#!/bin/sh\n# written by agentflux stack up during apt-get\nexit 101\n"
        )
        _POLICY_RC.chmod(0o755)
    try:
        for argv in (["apt-get", "update", "-q"], install):
            done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise StackError(
                    f"`{' '.join(argv)}` failed (exit {done.returncode}):\n"
                    + "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
                )
    finally:
        if guard:
            _POLICY_RC.unlink(missing_ok=True)
    still = [c for c in commands if not _have(c)]
    if still:
        raise StackError(f"installed {', '.join(missing)} but still cannot find {still}")


def java_major() -> int | None:
    """Major version of the `java` on PATH, or None when there is none."""
    if not _have("java"):
        return None
    out = subprocess.run(["java", "-version"], capture_output=True, text=True, check=False).stderr
    m = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if not m:
        return None
    major = int(m.group(1))
    return int(m.group(2) or 0) if major == 1 else major


def ensure_kafka_jars(version: str, cache_dir: Path, say: Say) -> Path:
    """The folder of jars for Kafka `version`, resolved with Maven on first use."""
    libs = cache_dir / f"kafka-{version}" / "libs"
    marker = libs / ".complete"
    if marker.is_file():
        return libs
    pom = DEPLOY_DIR / "kafka" / "pom.xml"
    if not pom.is_file():
        raise StackError(f"{pom} is missing: run `agentflux stack` from an agentflux checkout")
    say(f"resolving Apache Kafka {version} jars from Maven Central into {libs}")
    partial = libs.with_name("libs.partial")
    shutil.rmtree(partial, ignore_errors=True)
    argv = [
        "mvn", "-q", "-B", "-f", str(pom), "dependency:copy-dependencies",
        f"-DoutputDirectory={partial}", f"-Dkafka.version={version}",
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0 or not any(partial.glob(f"kafka_2.13-{version}.jar")):
        raise StackError(
            f"could not resolve Kafka {version} with Maven (exit {done.returncode}); "
            f"is AGENTFLUX_KAFKA_VERSION a released 4.x version?\n"
            + "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        )
    shutil.rmtree(libs, ignore_errors=True)
    partial.rename(libs)
    marker.write_text(version + "\n")
    return libs
