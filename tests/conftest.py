"""Shared fixtures. ``kafka_bootstrap`` gives integration tests a REAL Apache Kafka broker.

Where it comes from, in order (pytest's header line names the one a session uses):

1. ``KAFKA_BOOTSTRAP_SERVERS`` if set (an external broker);
2. a container of the project's Kafka image (``make images``) through testcontainers, when a
   Docker engine answers on ``$DOCKER_HOST`` and the image is there;
3. else the project's local broker (:class:`cyberstream.broker.LocalBroker`), started here
   and stopped at the end of the session.

``local_kafka_bootstrap`` is always the local broker, so its path keeps tests of its own
when the session runs on a container. With ``CYBERSTREAM_EXPECT_DOCKER=1`` (set by .ci/run
once it has provisioned an engine) a missing engine or image fails the tests instead of
falling back. When no broker can be had the tests FAIL with the reason: they never skip.
"""

from __future__ import annotations

import base64
import os
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache

import pytest

from cyberstream import images
from cyberstream.broker import KAFKA_VERSION

EXTERNAL, CONTAINER, LOCAL, MISSING = "external", "container", "local", "missing"
CONTAINER_START_TIMEOUT = 180
EXPECT_DOCKER = "CYBERSTREAM_EXPECT_DOCKER"


@dataclass(frozen=True)
class BrokerPlan:
    kind: str  # EXTERNAL, CONTAINER, LOCAL or MISSING
    description: str


def expect_docker() -> bool:
    """Whether CI provisioned a Docker engine and the images (.ci/run): their absence is a failure."""
    return os.environ.get(EXPECT_DOCKER) == "1"


def docker_problem() -> str | None:
    """None when the engine answers and the project's Kafka image is there, else why not."""
    problem = images.engine_problem()
    if problem is None and not images.image_present(images.KAFKA_IMAGE):
        problem = f"the Docker engine has no {images.KAFKA_IMAGE} image (build it: make images)"
    return problem


@cache
def broker_plan() -> BrokerPlan:
    given = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if given:
        return BrokerPlan(EXTERNAL, f"external, KAFKA_BOOTSTRAP_SERVERS={given}")
    problem = docker_problem()
    engine = os.environ.get("DOCKER_HOST", "the default Docker socket")
    if problem is None:
        return BrokerPlan(CONTAINER, f"container {images.KAFKA_IMAGE} (testcontainers, engine {engine})")
    if expect_docker():
        return BrokerPlan(MISSING, f"NONE: CYBERSTREAM_EXPECT_DOCKER=1 but {problem}")
    return BrokerPlan(LOCAL, f"local broker (Apache Kafka {KAFKA_VERSION} from Maven jars; no container: {problem})")


def pytest_report_header(config: pytest.Config) -> str:
    return f"kafka broker: {broker_plan().description}"


# --------------------------------------------------------------------------------------
# The brokers
# --------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_kafka(bootstrap: str, container, timeout: float) -> None:
    """Until a client lists topics; fails with the container's log if it exits or never answers."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    host, port = bootstrap.rsplit(":", 1)
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        container.get_wrapped_container().reload()
        if container.get_wrapped_container().status == "exited":
            break
        try:  # TCP first: kafka-python backs off for seconds on a refused connection
            socket.create_connection((host, int(port)), timeout=1).close()
            admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
            try:
                admin.list_topics()
                return
            finally:
                admin.close()
        except (KafkaError, OSError) as exc:
            last = exc
            time.sleep(0.5)
    out, err = container.get_logs()
    logs = (out + err).decode(errors="replace")[-3000:]
    pytest.fail(f"the {images.KAFKA_IMAGE} container did not answer within {timeout:.0f} s ({last}):\n{logs}")


def _container_broker() -> Iterator[str]:
    # Ryuk (testcontainers' reaper) is an image from a registry; without it the fixture stops
    # its own container.
    if not images.image_present(os.environ.get("RYUK_CONTAINER_IMAGE", "testcontainers/ryuk:0.8.1")):
        os.environ["TESTCONTAINERS_RYUK_DISABLED"] = "true"
    from testcontainers.core.container import DockerContainer

    port = _free_port()
    cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
    container = DockerContainer(images.KAFKA_IMAGE).with_bind_ports(port, port)
    for name, value in images.kafka_container_env(port, cluster_id).items():
        container.with_env(name, value)
    try:
        container.start()
    except Exception as exc:
        pytest.fail(f"a Docker engine answers but the {images.KAFKA_IMAGE} container did not start: {exc}")
    try:
        bootstrap = f"127.0.0.1:{port}"
        _wait_for_kafka(bootstrap, container, CONTAINER_START_TIMEOUT)
        yield bootstrap
    finally:
        container.stop()


@pytest.fixture(scope="session")
def local_kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``host:port`` of the project's local broker (started once per session, on first use)."""
    from cyberstream.broker import BrokerError, LocalBroker

    broker = LocalBroker(tmp_path_factory.mktemp("kafka"))
    try:
        st = broker.start(timeout=180)
    except BrokerError as exc:
        pytest.fail(f"the local Kafka broker did not start: {exc}")
    try:
        yield st.bootstrap
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(request: pytest.FixtureRequest) -> Iterator[str]:
    """``host:port`` of the session's real Kafka broker (see the module docstring)."""
    plan = broker_plan()
    if plan.kind == MISSING:
        pytest.fail(f"no Kafka broker for the integration tests: {plan.description}")
    if plan.kind == EXTERNAL:
        yield os.environ["KAFKA_BOOTSTRAP_SERVERS"]
    elif plan.kind == CONTAINER:
        yield from _container_broker()
    else:
        yield request.getfixturevalue("local_kafka_bootstrap")


@pytest.fixture
def topic_name(request: pytest.FixtureRequest) -> str:
    """A topic name unique to this test, so tests sharing a broker never see each other's data."""
    return f"test-{request.node.name[:40].replace('[', '-').replace(']', '')}-{uuid.uuid4().hex[:8]}"
