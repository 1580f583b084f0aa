"""docker-compose.yml and the Dockerfile, checked without a Docker engine.

Where the compose plugin exists, ``docker compose config`` must accept the file (it needs
no engine for that). Everywhere, the YAML is parsed (with compose's variable interpolation)
and checked against the project's own facts: the Kafka version and single-node settings of
the local broker, the environment variables of cyberstream/config.py, the CLI's flags, the
model's metadata file name, and the pinned dependencies of pyproject.toml.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from cyberstream import config, images
from cyberstream.broker import KAFKA_VERSION, POM, _server_properties
from cyberstream.cli import COMMANDS, build_parser

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
PYPROJECT = ROOT / "pyproject.toml"

PROJECT_SERVICES = ("topics", "generate", "train", "detector", "producer", "alerts")
ONE_SHOT = ("topics", "generate", "train")
HEALTHY, DONE, STARTED = "service_healthy", "service_completed_successfully", "service_started"
#: the start-up order: service -> {dependency: condition}
DEPENDENCIES = {
    "topics": {"kafka": HEALTHY},
    "generate": {},
    "train": {"generate": DONE},
    "detector": {"kafka": HEALTHY, "topics": DONE, "train": DONE},
    "producer": {"kafka": HEALTHY, "topics": DONE, "generate": DONE, "detector": STARTED},
    "alerts": {"kafka": HEALTHY, "topics": DONE, "generate": DONE, "detector": STARTED},
}


# --------------------------------------------------------------------------------------
# Reading the files
# --------------------------------------------------------------------------------------
def interpolate(value, env: dict[str, str]):
    """Compose's variable interpolation: ``$$`` -> ``$``, ``${VAR:-default}``, ``${VAR}``, ``$VAR``."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group("braced") or m.group("bare")
        default = m.group("default")
        got = env.get(name)
        if default is not None:
            return got if got else default
        return got or ""

    return re.sub(r"\$\$|\$\{(?P<braced>\w+)(?::-(?P<default>[^}]*))?\}|\$(?P<bare>[A-Za-z_]\w*)", sub, value)


def compose(env: dict[str, str] | None = None) -> dict:
    return interpolate(yaml.safe_load(COMPOSE.read_text()), env or {})


def services() -> dict:
    return compose()["services"]


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = DOCKERFILE.read_text()
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def pinned_dependencies() -> list[str]:
    return tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]


def cyberstream_argv(service: dict) -> list[str]:
    """The ``cyberstream`` arguments a service runs (entrypoint cyberstream, or ``exec cyberstream`` in sh -c)."""
    env = service["environment"]
    if "entrypoint" not in service:
        return list(service["command"])
    assert service["entrypoint"] == ["sh", "-c"], service["entrypoint"]
    script = service["command"][0]
    m = re.search(r"exec cyberstream ([^;]+);", script)
    assert m, f"no `exec cyberstream ...;` in {script!r}"
    # the shell expands "$VAR" from the service's environment
    return [re.sub(r"\$(\w+)", lambda v: env[v.group(1)], a) for a in shlex.split(m.group(1))]


# --------------------------------------------------------------------------------------
# Compose
# --------------------------------------------------------------------------------------
#: The Compose Specification's JSON schema (github.com/compose-spec/compose-spec, schema/compose-spec.json
#: at 170098ba07d9, Apache-2.0): what `docker compose` v2 validates against, here whatever is installed.
COMPOSE_SCHEMA = ROOT / "tests" / "data" / "compose-spec.json"


def test_compose_file_is_valid_compose(capsys):
    import jsonschema

    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in
              jsonschema.Draft7Validator(json.loads(COMPOSE_SCHEMA.read_text())).iter_errors(compose())]  # fmt: skip
    assert not errors, errors
    validators = [f"the Compose Specification schema ({COMPOSE_SCHEMA.name})"]
    # v2, or Debian's v1: the file is written for both (test_compose_stack runs it with either)
    cmd = images.compose_command()
    if cmd is not None:  # `config` also resolves what the schema cannot (files, variables); it needs no engine
        proc = subprocess.run([*cmd, "-f", str(COMPOSE), "config", "--quiet"], capture_output=True, text=True, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr
        validators.append(f"`{' '.join(cmd)} config`")
    with capsys.disabled():
        print(f"\n{COMPOSE.name} validated with {' and '.join(validators)}")
    doc = compose()
    # no top-level `name:`: Compose v1 (Debian's docker-compose) rejects it
    assert set(doc) <= {"services", "volumes", "networks"} | {k for k in doc if k.startswith("x-")}
    assert set(doc["services"]) == {"kafka", *PROJECT_SERVICES}
    for name, svc in doc["services"].items():
        assert "image" in svc, name


def test_kafka_is_the_local_brokers_version_in_kraft_mode_with_its_single_node_settings():
    assert f"<kafka.version>{KAFKA_VERSION}</kafka.version>" in POM.read_text()
    kafka = services()["kafka"]
    assert kafka["image"] == images.KAFKA_IMAGE == f"cyberstream-kafka:{KAFKA_VERSION}"
    # built by `make images`, or by `compose up --build` from the upstream image of that version
    assert kafka["build"]["context"] == "docker/kafka"
    upstream = (ROOT / "docker" / "kafka" / "Dockerfile").read_text()
    assert f"ARG BASE={images.KAFKA_BASE}\nFROM ${{BASE}}" in upstream and images.KAFKA_BASE == f"apache/kafka:{KAFKA_VERSION}"
    env = {k: str(v) for k, v in kafka["environment"].items()}
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{env['KAFKA_NODE_ID']}@kafka:9093"
    assert "CONTROLLER://:9093" in env["KAFKA_LISTENERS"].split(",")
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    assert len(base64.urlsafe_b64decode(env["CLUSTER_ID"] + "==")) == 16  # Kafka's Uuid format
    # every setting of the local broker's server.properties, except addresses and paths
    local = dict(
        line.split("=", 1) for line in _server_properties(9092, 9093, Path("/unused")).splitlines() if line
    )
    addresses = {"controller.quorum.voters", "listeners", "advertised.listeners", "log.dirs"}
    protocols = "listener.security.protocol.map"  # compose adds a HOST listener for clients on the host
    assert set(local[protocols].split(",")) <= set(env["KAFKA_" + protocols.upper().replace(".", "_")].split(","))
    for key, value in local.items():
        if key in addresses or key == protocols:
            continue
        var = images.kafka_env_name(key)
        assert env.get(var) == value, f"{var} should be {value!r} like the local broker's {key}"
    assert env["KAFKA_LOG_RETENTION_MS"] == "-1"
    # the host reaches the HOST listener on CYBERSTREAM_KAFKA_PORT (the demo's compose_bootstrap)
    for port in ("39999", None):
        got = compose({"CYBERSTREAM_KAFKA_PORT": port} if port else {})["services"]["kafka"]
        host_port = port or str(config.DEFAULT_COMPOSE_KAFKA_PORT)
        assert got["ports"] == [f"{host_port}:29092"] and "HOST://:29092" in got["environment"]["KAFKA_LISTENERS"]
        assert f"HOST://127.0.0.1:{host_port}" in got["environment"]["KAFKA_ADVERTISED_LISTENERS"].split(",")


def test_kafka_healthcheck_lists_topics_through_its_own_listener():
    hc = services()["kafka"]["healthcheck"]
    test = " ".join(hc["test"][1:]) if isinstance(hc["test"], list) else hc["test"]
    assert hc["test"][0] in ("CMD", "CMD-SHELL")
    args = shlex.split(test)
    assert args[0] == "/opt/kafka/bin/kafka-topics.sh"
    assert "--list" in args
    assert args[args.index("--bootstrap-server") + 1] == "localhost:9092"
    assert int(hc["retries"]) >= 10 and hc["interval"] and hc["start_period"]


def test_dependencies_wait_for_health_and_successful_one_shots():
    svcs = services()
    for name, wanted in DEPENDENCIES.items():
        got = {dep: spec["condition"] for dep, spec in (svcs[name].get("depends_on") or {}).items()}
        assert got == wanted, name
    for name in ONE_SHOT:
        assert svcs[name]["restart"] == "no", name
    # every service that talks to Kafka waits for it to be healthy
    for name in ("topics", "detector", "producer", "alerts"):
        assert svcs[name]["depends_on"]["kafka"]["condition"] == HEALTHY


def test_project_services_share_one_image_built_from_the_dockerfile_and_the_environment():
    svcs = services()
    assert {svcs[n]["image"] for n in PROJECT_SERVICES} == {images.APP_IMAGE}
    declared = set(compose()["volumes"])
    for name in PROJECT_SERVICES:
        svc = svcs[name]
        assert svc["build"]["context"] == "."
        assert (ROOT / svc["build"].get("dockerfile", "Dockerfile")).resolve() == DOCKERFILE
        env = svc["environment"]
        assert env["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
        for var in env:
            assert var in config.ENV, f"{name}: {var} is not an environment variable of cyberstream/config.py"
        assert env["CYBERSTREAM_EVENTS_TOPIC"] == config.DEFAULT_EVENTS_TOPIC
        assert env["CYBERSTREAM_LABELS_TOPIC"] == config.DEFAULT_LABELS_TOPIC
        assert env["CYBERSTREAM_ALERTS_TOPIC"] == config.DEFAULT_ALERTS_TOPIC
        assert env["CYBERSTREAM_DLQ_TOPIC"] == config.DEFAULT_DLQ_TOPIC
        assert int(env["CYBERSTREAM_PARTITIONS"]) >= 1
        mounts = dict(reversed(v.split(":")[:2]) for v in svc["volumes"])
        # data and models live on volumes (named, or a host directory for the real CSV)
        assert Path(env["CYBERSTREAM_DATA"]).parent.as_posix() in mounts
        assert env["CYBERSTREAM_MODEL_DIR"] in mounts and env["CYBERSTREAM_HOME"] in mounts
        for source in mounts.values():
            assert source in declared or source.startswith(("./", "/")), f"{name}: volume {source} not declared"
    # a host directory can replace the data volume (the real CyberFLTenDays.csv)
    bound = compose({"CYBERSTREAM_DATA_DIR": "./data"})["services"]["producer"]["volumes"]
    assert "./data:/app/data" in bound


def test_service_commands_are_valid_cyberstream_invocations():
    from training.model import METADATA_FILE

    svcs = services()
    parser = build_parser()
    expected = {"generate": "generate", "train": "train", "detector": "detect", "producer": "produce", "alerts": "alerts"}
    for name, sub in expected.items():
        argv = cyberstream_argv(svcs[name])
        assert argv[0] == sub and sub in COMMANDS, name
        try:
            args = parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"{name}: `cyberstream {' '.join(argv)}` is rejected by the CLI")
        env = svcs[name]["environment"]
        for attr in ("data", "truth"):
            if getattr(args, attr, None) is not None:
                assert str(getattr(args, attr)) == env["CYBERSTREAM_DATA"], name
        for attr in ("model_dir", "out"):
            if name in ("detector", "train") and getattr(args, attr, None) is not None:
                assert str(getattr(args, attr)) == env["CYBERSTREAM_MODEL_DIR"], name
    # the detector beside the producer's --speed max replay allows its lateness
    assert cyberstream_argv(svcs["producer"])[cyberstream_argv(svcs["producer"]).index("--speed") + 1] == "max"
    lateness = cyberstream_argv(svcs["detector"])
    assert int(lateness[lateness.index("--allowed-lateness-secs") + 1]) == config.replay_lateness_secs("max")
    # generate/train skip work that is done: the CSV exists, the model's metadata exists
    assert '[ -s "$CYBERSTREAM_DATA" ]' in svcs["generate"]["command"][0]
    assert f'[ -s "$CYBERSTREAM_MODEL_DIR/{METADATA_FILE}" ]' in svcs["train"]["command"][0]


def test_topics_service_code_compiles_and_creates_co_partitioned_topics_from_config():
    svc = services()["topics"]
    assert svc["entrypoint"] == ["python", "-c"]
    code = svc["command"][0]
    compile(code, "topics", "exec")
    for fn in ("events_topic()", "labels_topic()", "alerts_topic()", "dlq_topic()", "partitions()", "ensure_topics("):
        assert fn in code


@pytest.mark.integration
def test_topics_service_code_runs_against_a_real_broker(kafka_bootstrap, topic_name):
    from cyberstream.kafka_io import topic_partitions

    code = services()["topics"]["command"][0]
    names = {var: f"{topic_name}-{var.split('_')[1].lower()}" for var in (
        "CYBERSTREAM_EVENTS_TOPIC", "CYBERSTREAM_LABELS_TOPIC", "CYBERSTREAM_ALERTS_TOPIC", "CYBERSTREAM_DLQ_TOPIC")}  # fmt: skip
    env = {**os.environ, **names, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "CYBERSTREAM_PARTITIONS": "3"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    counts = {var: topic_partitions(kafka_bootstrap, t) for var, t in names.items()}
    assert counts == {"CYBERSTREAM_EVENTS_TOPIC": 3, "CYBERSTREAM_LABELS_TOPIC": 3,
                      "CYBERSTREAM_ALERTS_TOPIC": 3, "CYBERSTREAM_DLQ_TOPIC": 1}  # fmt: skip
    # run again: existing topics are kept, not an error
    again = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert again.returncode == 0, again.stderr


# --------------------------------------------------------------------------------------
# Dockerfile
# --------------------------------------------------------------------------------------
def test_dockerfile_slim_python_non_root_no_java_cyberstream_entrypoint():
    ins = dockerfile_instructions()
    # the base is python:3.11-slim unless `make images` builds offline (--build-arg BASE=...)
    assert ins[:2] == [("ARG", f"BASE={images.PYTHON_BASE}"), ("FROM", "${BASE} AS build")]
    assert images.PYTHON_BASE == "python:3.11-slim"
    assert [a for w, a in ins if w == "FROM"] == ["${BASE} AS build", "${BASE}"]
    users = [arg for word, arg in ins if word == "USER"]
    assert users and users[-1] not in ("root", "0")
    last_run = max(i for i, (w, _) in enumerate(ins) if w == "RUN")
    assert max(i for i, (w, _) in enumerate(ins) if w == "USER") > last_run  # nothing runs as root after
    assert any(w == "RUN" and "useradd" in a and users[-1] in a for w, a in ins)
    assert ("ENTRYPOINT", '["cyberstream"]') in ins
    runs = " ".join(a for w, a in ins if w == "RUN").lower()
    assert not re.search(r"\b(openjdk|jre|jdk|java|maven)\b", runs)


def test_dockerfile_installs_exactly_the_pinned_dependencies_of_pyproject(tmp_path):
    pins = pinned_dependencies()
    assert pins and all(re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[0-9][\w.]*", p) for p in pins), pins
    ins = dockerfile_instructions()
    copies = " ".join(a for w, a in ins if w == "COPY")
    for needed in ("pyproject.toml", "README.md"):
        assert needed in copies
    packages = tomllib.loads(PYPROJECT.read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    for pkg in packages:
        assert re.search(rf"\b{pkg.rstrip('*')}\b", copies), f"the Dockerfile does not copy {pkg}"
    ignored = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines() if not ln.startswith("#")]
    assert not {"pyproject.toml", "README.md", *(p.rstrip("*") for p in packages)} & set(ignored)

    runs = [a for w, a in ins if w == "RUN"]
    gen = next(a for a in runs if "tomllib" in a)
    m = re.search(r'python -c "(?P<code>[^"]+)" > (?P<out>\S+)', gen)
    assert m, gen
    # run the Dockerfile's own generator on a copy of pyproject.toml
    shutil.copy(PYPROJECT, tmp_path / "pyproject.toml")
    out = subprocess.run([sys.executable, "-c", m.group("code")], cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    assert out.split() == pins
    requirements = m.group("out")
    # the only pip installs: that requirements file, then the project without dependencies, then pip check
    installs = [seg.strip() for a in runs for seg in a.split("&&") if "pip install" in seg]
    assert installs == [f"pip install -r {requirements}", "pip install --no-deps ."]
    assert any("pip check" in a for a in runs)


# --------------------------------------------------------------------------------------
# The offline Kafka image's entrypoint
# --------------------------------------------------------------------------------------
def test_offline_kafka_entrypoint_turns_the_environment_into_the_local_brokers_properties(tmp_path):
    """docker/kafka/bin/run reads KAFKA_* as apache/kafka does (a fake `java` records the calls)."""
    home = tmp_path / "kafka"
    (home / "config").mkdir(parents=True)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "java-calls"
    fake_java = bin_dir / "java"
    fake_java.write_text(f'#!/bin/sh\necho "$*" >> {calls}\n')
    fake_java.chmod(0o755)
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "KAFKA_HOME": str(home),
        "KAFKA_SOME___ODD__NAME": "x",  # "___" -> "_", "__" -> "-"
        **images.kafka_container_env(39092, "6zmjYdxiTzSVTMPyn_yBuw"),
    }
    proc = subprocess.run(["bash", str(ROOT / "docker" / "kafka" / "bin" / "run")], env=env, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    props = dict(line.split("=", 1) for line in (home / "config" / "server.properties").read_text().splitlines())
    wanted = dict(ln.split("=", 1) for ln in _server_properties(39092, 9093, Path("/var/lib/kafka/data")).splitlines() if ln)
    wanted["listeners"] = "PLAINTEXT://:39092,CONTROLLER://127.0.0.1:9093"
    assert props == {**wanted, "some_odd-name": "x"}
    format_call, server_call = calls.read_text().splitlines()
    assert "kafka.tools.StorageTool format --ignore-formatted -t 6zmjYdxiTzSVTMPyn_yBuw" in format_call
    assert server_call.endswith(f"kafka.Kafka {home}/config/server.properties") and "-Xmx512m" in server_call


def test_offline_kafka_entrypoint_refuses_a_configuration_without_kraft_roles(tmp_path):
    (tmp_path / "config").mkdir()
    env = {"PATH": os.environ["PATH"], "KAFKA_HOME": str(tmp_path), "KAFKA_NODE_ID": "1"}
    proc = subprocess.run(["bash", str(ROOT / "docker" / "kafka" / "bin" / "run")], env=env, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 2 and "KAFKA_PROCESS_ROLES" in proc.stderr
