"""Shared fixtures. ``kafka_bootstrap`` gives integration tests a REAL Apache Kafka broker.

Where it comes from, in order: ``KAFKA_BOOTSTRAP_SERVERS`` if set; else a testcontainers
``KafkaContainer`` if a Docker engine answers; else the project's local broker
(:class:`cyberstream.broker.LocalBroker`), started here and stopped at the end of the
session. When none can be had the tests FAIL with the reason: they never skip.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

#: Confluent Platform 8.1 ships Apache Kafka 4.1, the version of the local broker.
TESTCONTAINERS_IMAGE = "confluentinc/cp-kafka:8.1.1"


def _docker_engine_answers() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=3)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``host:port`` of a real Kafka broker for this test session."""
    given = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if given:
        yield given
        return
    if _docker_engine_answers():
        from testcontainers.kafka import KafkaContainer

        try:
            container = KafkaContainer(image=TESTCONTAINERS_IMAGE).with_kraft()
            container.start()
        except Exception as exc:
            pytest.fail(f"a Docker engine answers but the Kafka container did not start: {exc}")
        try:
            yield container.get_bootstrap_server()
        finally:
            container.stop()
        return
    from cyberstream.broker import BrokerError, LocalBroker

    broker = LocalBroker(tmp_path_factory.mktemp("kafka"))
    try:
        st = broker.start(timeout=180)
    except BrokerError as exc:
        pytest.fail(f"no Kafka broker for the integration tests (no KAFKA_BOOTSTRAP_SERVERS, no Docker): {exc}")
    try:
        yield st.bootstrap
    finally:
        broker.stop()


@pytest.fixture
def topic_name(request: pytest.FixtureRequest) -> str:
    """A topic name unique to this test, so tests sharing a broker never see each other's data."""
    return f"test-{request.node.name[:40].replace('[', '-').replace(']', '')}-{uuid.uuid4().hex[:8]}"
