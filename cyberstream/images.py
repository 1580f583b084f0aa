"""The project's two container images, and ``make images`` (``python -m cyberstream.images``).

* ``cyberstream:<version>`` (the root ``Dockerfile``): the ``cyberstream`` command.
* ``cyberstream-kafka:<Kafka version>`` (``docker/kafka/``): Apache Kafka, the version of the
  local broker, configured in KRaft mode by ``KAFKA_*`` variables.

Two ways to build them, chosen by what the machine can reach:

* **upstream**: ``FROM python:3.11-slim`` and ``FROM apache/kafka:<version>``, when both are
  present or can be pulled. pip in the build uses PyPI (through ``--extra-ca`` if a proxy
  re-signs TLS).
* **offline** (air-gapped, no registry): ``FROM`` Debian bases the project makes itself
  (``debootstrap`` from the host's apt mirror, then ``docker import``), the Python wheels
  fetched on the host (``pip download``) into ``docker/wheels/``, Kafka's jars from the
  project's Maven cache (:class:`cyberstream.broker.LocalBroker`). No build step needs the
  network inside a container.

Both variants give the same tags, paths and configuration, so docker-compose.yml and the
tests use either.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version
from pathlib import Path

from cyberstream.broker import KAFKA_VERSION, LocalBroker, _server_properties

log = logging.getLogger("cyberstream.images")

ROOT = Path(__file__).resolve().parent.parent
DOCKER_DIR = ROOT / "docker"
WHEELS_DIR = DOCKER_DIR / "wheels"
CA_DIR = DOCKER_DIR / "ca"
KAFKA_DIR = DOCKER_DIR / "kafka"

APP_IMAGE = f"cyberstream:{version('cyberstream')}"
KAFKA_IMAGE = f"cyberstream-kafka:{KAFKA_VERSION}"
PYTHON_BASE = "python:3.11-slim"
KAFKA_BASE = f"apache/kafka:{KAFKA_VERSION}"
#: The Debian bases of the offline variant, and the packages debootstrap puts in each.
DEBIAN_SUITE = "bookworm"  # its python3 is 3.11, the version of python:3.11-slim
OFFLINE_BASES = {
    f"cyberstream-base/python:{DEBIAN_SUITE}": ["python3", "python3-venv", "ca-certificates"],
    f"cyberstream-base/java:{DEBIAN_SUITE}": ["openjdk-17-jre-headless", "ca-certificates"],
}
OFFLINE_PYTHON_BASE, OFFLINE_JAVA_BASE = OFFLINE_BASES
PULL_TIMEOUT = 90


class ImageError(RuntimeError):
    """An image cannot be built; the message says why and what to do."""


def kafka_env_name(prop: str) -> str:
    """The ``KAFKA_*`` variable of a server property in the apache/kafka image's convention."""
    return "KAFKA_" + prop.replace("_", "___").replace("-", "__").replace(".", "_").upper()


def kafka_container_env(port: int, cluster_id: str, controller_port: int = 9093) -> dict[str, str]:
    """The project Kafka image's environment for one node serving clients on ``127.0.0.1:port``
    of the host, with the local broker's settings (one fact, two brokers). The container
    listens on ``port`` on all its interfaces (Docker forwards the host's ``port`` there) and
    advertises ``127.0.0.1:port``, which works on both sides.
    """
    props = dict(
        line.split("=", 1)
        for line in _server_properties(port, controller_port, Path("/var/lib/kafka/data")).splitlines()
        if line
    )
    props["listeners"] = f"PLAINTEXT://:{port},CONTROLLER://127.0.0.1:{controller_port}"
    return {"CLUSTER_ID": cluster_id, "KAFKA_HEAP_OPTS": "-Xmx512m -Xms128m",
            **{kafka_env_name(k): v for k, v in props.items()}}  # fmt: skip


# --------------------------------------------------------------------------------------
# The engine
# --------------------------------------------------------------------------------------
def docker(*args: str, timeout: float | None = None, **kwargs) -> subprocess.CompletedProcess:
    """Run the ``docker`` client (``$DOCKER_HOST`` chooses the engine), capturing its output."""
    if shutil.which("docker") is None:
        raise ImageError("no `docker` client on PATH (Debian: apt-get install docker.io)")
    kwargs.setdefault("capture_output", True)
    return subprocess.run(["docker", *args], text=True, timeout=timeout, **kwargs)


def engine_problem() -> str | None:
    """None when a Docker engine answers, else why not (one line)."""
    try:
        proc = docker("version", "--format", "{{.Server.Version}}", timeout=15)
    except ImageError as exc:
        return str(exc)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"the Docker engine did not answer ({exc})"
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        return f"the Docker engine did not answer: {lines[-1] if lines else f'exit {proc.returncode}'}"
    return None


def compose_command() -> list[str] | None:
    """``docker compose`` (v2) or ``docker-compose`` (v1, Debian's), whichever runs; else None."""
    for cmd in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(cmd[0]) is None:
            continue
        try:
            if subprocess.run([*cmd, "version"], capture_output=True, timeout=30).returncode == 0:
                return cmd
        except (OSError, subprocess.TimeoutExpired):
            continue
    return None


def image_present(name: str) -> bool:
    """Whether the engine has the image ``name`` (False when no engine answers)."""
    try:
        return docker("image", "inspect", name, timeout=15).returncode == 0
    except (ImageError, OSError, subprocess.TimeoutExpired):
        return False


def _pull_problem(name: str) -> str | None:
    """None when ``name`` is present or was pulled, else why it could not be pulled."""
    if image_present(name):
        return None
    log.info("pulling %s", name)
    try:
        proc = docker("pull", "--quiet", name, timeout=PULL_TIMEOUT)
    except subprocess.TimeoutExpired:
        return f"`docker pull {name}` did not finish in {PULL_TIMEOUT} s"
    if proc.returncode == 0:
        return None
    lines = proc.stderr.strip().splitlines()
    return f"`docker pull {name}` failed: {lines[-1] if lines else f'exit {proc.returncode}'}"


def choose_variant(requested: str = "auto") -> tuple[str, str]:
    """``("upstream" | "offline", why)``: upstream when both upstream bases can be had."""
    if requested == "offline":
        return "offline", "asked for (--variant offline)"
    for base in (PYTHON_BASE, KAFKA_BASE):  # one failed pull is enough to know
        problem = _pull_problem(base)
        if problem and requested == "upstream":
            raise ImageError(f"the upstream bases cannot be had: {problem}")
        if problem:
            return "offline", f"no registry: {problem}"
    return "upstream", f"{PYTHON_BASE} and {KAFKA_BASE} are available"


# --------------------------------------------------------------------------------------
# Offline inputs: Debian bases, wheels, jars
# --------------------------------------------------------------------------------------
def make_debian_base(tag: str, packages: list[str], mirror: str | None = None) -> None:
    """``tag``: Debian ``DEBIAN_SUITE`` (minbase plus ``packages``) from debootstrap, imported."""
    if image_present(tag):
        log.info("%s: present", tag)
        return
    debootstrap = shutil.which("debootstrap") or (
        "/usr/sbin/debootstrap" if Path("/usr/sbin/debootstrap").exists() else None
    )
    if debootstrap is None:
        raise ImageError("the offline images need `debootstrap` (Debian: apt-get install debootstrap)")
    if os.geteuid() != 0:
        raise ImageError("debootstrap needs root: run `make images` as root (or sudo) for the offline images")
    with tempfile.TemporaryDirectory(prefix="cyberstream-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        log.info("%s: debootstrap %s with %s", tag, DEBIAN_SUITE, ", ".join(packages))
        cmd = [debootstrap, "--variant=minbase", f"--include={','.join(packages)}", DEBIAN_SUITE, str(rootfs)]
        proc = subprocess.run([*cmd, *([mirror] if mirror else [])], capture_output=True, text=True)
        if proc.returncode != 0:
            raise ImageError(
                f"debootstrap failed (is the Debian mirror reachable?):\n{(proc.stdout + proc.stderr)[-2000:]}"
            )
        # apt's downloaded packages and lists are dead weight in a base image
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for p in (rootfs / junk).glob("*"):
                if p.is_file():
                    p.unlink()
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        imported = docker("import", "-", tag, stdin=tar.stdout)
        tar.wait()
        if imported.returncode != 0 or tar.returncode != 0:
            raise ImageError(f"docker import of the {tag} root filesystem failed: {imported.stderr.strip()}")


def fetch_wheels(dest: Path = WHEELS_DIR) -> int:
    """The app's pinned dependencies and build backend as wheels for CPython 3.11 on Linux."""
    import platform
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    wanted = project["project"]["dependencies"] + project["build-system"]["requires"]
    arch = platform.machine()
    platforms = [f"manylinux_2_{n}_{arch}" for n in (36, 28, 17, 5)] + [
        f"manylinux2014_{arch}",
        f"linux_{arch}",
    ]
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--dest", str(dest),
           "--only-binary=:all:", "--implementation", "cp", "--python-version", "3.11"]  # fmt: skip
    for p in platforms:
        cmd += ["--platform", p]
    log.info("wheels: pip download of %d requirements into %s", len(wanted), dest.relative_to(ROOT))
    proc = subprocess.run([*cmd, *wanted], capture_output=True, text=True)
    if proc.returncode != 0:
        raise ImageError(f"pip download failed (is PyPI or your index reachable?):\n{proc.stderr[-2000:]}")
    return len(list(dest.glob("*.whl")))


def kafka_context(dest: Path) -> Path:
    """The offline Kafka image's build context: jars, bin/ and config/ of docker/kafka/."""
    jars = LocalBroker(dest / "state").fetch_jars()  # the local broker's jars, from ~/.m2
    shutil.copytree(jars, dest / "jars", ignore=shutil.ignore_patterns(".complete"))
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ImageError("the offline Kafka image needs Apache Maven (Debian: apt-get install maven)")
    proc = subprocess.run(
        [mvn, "-B", "-q", "-f", str(KAFKA_DIR / "tools-pom.xml"), f"-Dkafka.version={KAFKA_VERSION}",
         "dependency:copy-dependencies", "-DincludeScope=runtime", f"-DoutputDirectory={dest / 'jars'}"],
        capture_output=True, text=True,
    )  # fmt: skip
    if proc.returncode != 0:
        raise ImageError(f"Maven could not fetch kafka-tools:\n{(proc.stdout + proc.stderr)[-2000:]}")
    shutil.copytree(KAFKA_DIR / "bin", dest / "bin")
    shutil.copytree(KAFKA_DIR / "config", dest / "config")
    shutil.copy(KAFKA_DIR / "offline.Dockerfile", dest / "Dockerfile")
    return dest


# --------------------------------------------------------------------------------------
# Builds
# --------------------------------------------------------------------------------------
def build(tag: str, context: Path, dockerfile: Path, base: str) -> None:
    """``docker build`` with the output shown (a build takes minutes; its progress matters)."""
    log.info("building %s from %s", tag, base)
    proc = docker("build", "--build-arg", f"BASE={base}", "-t", tag, "-f", str(dockerfile), str(context),
                  capture_output=False)  # fmt: skip
    if proc.returncode != 0:
        raise ImageError(f"docker build of {tag} failed (exit {proc.returncode}); its output is above")


def build_images(variant: str, extra_ca: Path | None = None) -> None:
    """Build both images as ``variant`` ("upstream" or "offline")."""
    added_ca = None
    if extra_ca is not None:
        if not extra_ca.is_file():
            raise ImageError(f"--extra-ca {extra_ca}: no such file")
        added_ca = CA_DIR / "extra-ca.crt"
        shutil.copy(extra_ca, added_ca)
    try:
        if variant == "offline":
            # the two debootstraps wait on the mirror and dpkg in turn: side by side they take
            # little more than the longer one
            mirror = os.environ.get("CYBERSTREAM_DEBIAN_MIRROR")
            with ThreadPoolExecutor(max_workers=len(OFFLINE_BASES)) as pool:
                for done in [pool.submit(make_debian_base, t, p, mirror) for t, p in OFFLINE_BASES.items()]:
                    done.result()
            log.info("wheels: %d in docker/wheels", fetch_wheels())
            build(APP_IMAGE, ROOT, ROOT / "Dockerfile", OFFLINE_PYTHON_BASE)
            with tempfile.TemporaryDirectory(prefix="cyberstream-kafka-context-") as tmp:
                ctx = kafka_context(Path(tmp))
                build(KAFKA_IMAGE, ctx, ctx / "Dockerfile", OFFLINE_JAVA_BASE)
        else:
            build(APP_IMAGE, ROOT, ROOT / "Dockerfile", PYTHON_BASE)
            build(KAFKA_IMAGE, KAFKA_DIR, KAFKA_DIR / "Dockerfile", KAFKA_BASE)
    finally:
        if added_ca is not None:
            added_ca.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="make images",
        description=f"Build {APP_IMAGE} and {KAFKA_IMAGE} with the Docker engine of $DOCKER_HOST: from the "
        f"upstream bases ({PYTHON_BASE}, {KAFKA_BASE}) when they can be pulled, else offline from Debian "
        "bases made here (debootstrap, root), wheels fetched on the host and Kafka's jars from Maven.",
    )
    parser.add_argument("--variant", choices=["auto", "upstream", "offline"],
                        default=os.environ.get("CYBERSTREAM_IMAGES", "auto"),
                        help="which bases (default: $CYBERSTREAM_IMAGES or auto: upstream if it can be had)")  # fmt: skip
    parser.add_argument("--extra-ca", type=Path, default=os.environ.get("EXTRA_CA") or None,
                        help="a PEM CA file the app image's build trusts, for a TLS-intercepting proxy "
                        "(default: $EXTRA_CA)")  # fmt: skip
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s images: %(message)s", datefmt="%H:%M:%S")
    started = time.monotonic()
    try:
        problem = engine_problem()
        if problem:
            raise ImageError(f"{problem} (start one: `make engine`, or set DOCKER_HOST)")
        variant, why = choose_variant(args.variant)
        log.info("variant: %s (%s)", variant, why)
        build_images(variant, args.extra_ca)
    except ImageError as exc:
        print(f"make images: {exc}", file=sys.stderr)
        return 1
    print(f"make images: built {APP_IMAGE} and {KAFKA_IMAGE} from the {variant} bases ({why}) "
          f"in {time.monotonic() - started:,.0f} s")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
