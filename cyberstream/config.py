"""Settings shared by every command: topic names, broker address, event-time base.

Every setting is a CLI flag whose default comes from an environment variable, falling
back to the value here. The environment variable names are listed in ``ENV`` and in the
README's configuration table.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_EVENTS_TOPIC = "auth-events"
DEFAULT_LABELS_TOPIC = "auth-labels"
DEFAULT_ALERTS_TOPIC = "alerts"
DEFAULT_DLQ_TOPIC = "auth-events-dlq"
DEFAULT_PARTITIONS = 4
DEFAULT_DATA_PATH = Path("data") / "CyberFLTenDays.csv"
DEFAULT_MODEL_DIR = Path("models")
#: Kafka record timestamps and featuretools' datetime time index are this epoch plus
#: ``secs`` (LANL's ``secs`` count from an undisclosed start; any fixed base works).
DEFAULT_BASE_EPOCH = 1_577_836_800  # 2020-01-01T00:00:00Z, in seconds

#: docker-compose.yml publishes its Kafka's HOST listener on this port of the host.
DEFAULT_COMPOSE_KAFKA_PORT = 29092

#: environment variable -> what it sets
ENV: dict[str, str] = {
    "KAFKA_BOOTSTRAP_SERVERS": "broker address host:port[,host:port] (default: the local broker's state file)",
    "CYBERSTREAM_EVENTS_TOPIC": f"event topic (default {DEFAULT_EVENTS_TOPIC})",
    "CYBERSTREAM_LABELS_TOPIC": f"label topic (default {DEFAULT_LABELS_TOPIC})",
    "CYBERSTREAM_ALERTS_TOPIC": f"alert topic (default {DEFAULT_ALERTS_TOPIC})",
    "CYBERSTREAM_DLQ_TOPIC": f"dead-letter topic (default {DEFAULT_DLQ_TOPIC})",
    "CYBERSTREAM_PARTITIONS": f"partitions of topics the project creates (default {DEFAULT_PARTITIONS})",
    "CYBERSTREAM_BASE_EPOCH": f"epoch seconds that secs=0 maps to (default {DEFAULT_BASE_EPOCH})",
    "CYBERSTREAM_DATA": f"the CSV to replay or train on (default {DEFAULT_DATA_PATH})",
    "CYBERSTREAM_MODEL_DIR": f"model directory (default {DEFAULT_MODEL_DIR})",
    "CYBERSTREAM_HOME": "run-time state directory (default ./var)",
    "CYBERSTREAM_KAFKA_PORT": f"host port of docker-compose.yml's Kafka (default {DEFAULT_COMPOSE_KAFKA_PORT})",
}


def env(name: str, default: str | None = None) -> str | None:
    """The value of environment variable ``name`` (a documented one) or ``default``."""
    assert name in ENV, f"undocumented environment variable {name}"
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def env_int(name: str, default: int) -> int:
    value = env(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise SystemExit(f"environment variable {name} must be an integer, got {value!r}") from None


def events_topic() -> str:
    return env("CYBERSTREAM_EVENTS_TOPIC", DEFAULT_EVENTS_TOPIC)


def labels_topic() -> str:
    return env("CYBERSTREAM_LABELS_TOPIC", DEFAULT_LABELS_TOPIC)


def alerts_topic() -> str:
    return env("CYBERSTREAM_ALERTS_TOPIC", DEFAULT_ALERTS_TOPIC)


def dlq_topic() -> str:
    return env("CYBERSTREAM_DLQ_TOPIC", DEFAULT_DLQ_TOPIC)


def partitions() -> int:
    return env_int("CYBERSTREAM_PARTITIONS", DEFAULT_PARTITIONS)


def base_epoch() -> int:
    return env_int("CYBERSTREAM_BASE_EPOCH", DEFAULT_BASE_EPOCH)


def data_path() -> Path:
    return Path(env("CYBERSTREAM_DATA", str(DEFAULT_DATA_PATH)))


def model_dir() -> Path:
    return Path(env("CYBERSTREAM_MODEL_DIR", str(DEFAULT_MODEL_DIR)))


def state_dir() -> Path:
    """Where the local broker and other run-time state live (``./var``, ignored by git)."""
    return Path(env("CYBERSTREAM_HOME", str(Path.cwd() / "var")))


def replay_lateness_secs(speed: str | float) -> int:
    """``detect --allowed-lateness-secs`` for a detector that runs beside a replay at ``speed``
    (X times real time, or "max").

    The producer's partitions lie apart by up to a batch of records each; at replay speeds that
    spans far more event time than the detector's default minute, and a caught-up partition
    would have its seconds closed while its next records are still on their way (they would
    be dead-lettered as late). Half a second of wall time at X times real time, and no bound
    at "max": a caught-up partition then waits for its own next record or a pause.
    """
    if str(speed) == "max":
        return 100 * 365 * 86_400
    return max(60, int(float(speed) / 2))

#: the alert budget training sets the threshold by: false alerts per day on its validation period
DEFAULT_FALSE_ALERTS_PER_DAY = 10.0
#: the detector alerts a connection at most once per this many seconds of event time
DEFAULT_COOLDOWN_SECS = 3600
