"""A local Apache Kafka broker without Docker: jars from Maven Central, the machine's Java.

``LocalBroker(state_dir)`` fetches Kafka's jars once with Maven (the pom beside this file,
cached under ``state_dir``), formats a fresh KRaft log directory, starts one combined
broker+controller bound to 127.0.0.1 on free ports, and waits until a client can list
topics. A JSON state file in ``state_dir`` records the process and the bootstrap address,
so ``status`` and ``stop`` work from another process.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
POM = HERE / "pom.xml"
LOG4J_CONFIG = HERE / "log4j2.properties"
#: The Kafka version of the pom, docker-compose.yml and the testcontainers image.
KAFKA_VERSION = "4.1.1"
STATE_FILE = "broker.json"


def default_jars_dir() -> Path:
    """Kafka's jars, shared by every checkout of the user (``$XDG_CACHE_HOME/cyberstream``)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "cyberstream" / f"kafka-{KAFKA_VERSION}-jars"


class BrokerError(RuntimeError):
    """The local broker cannot be fetched, started or stopped; the message says what to do."""


@dataclass
class BrokerState:
    pid: int
    bootstrap: str
    controller_port: int
    run_dir: str
    started_at: float


def _require(tool: str, what: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise BrokerError(
            f"'{tool}' was not found on PATH. The local Kafka broker needs {what}. "
            "Install it (e.g. Debian: apt-get install openjdk-17-jre-headless maven), "
            "or point KAFKA_BOOTSTRAP_SERVERS at a running broker."
        )
    return path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours still "exists"; reap it if we can.
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return _not_zombie(pid)


def _not_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def _is_broker(st: BrokerState) -> bool:
    """Whether process ``st.pid`` is the broker ``st`` records (Kafka on this state's
    server.properties), not another process that was given the pid after the broker ended."""
    import psutil

    try:
        args = psutil.Process(st.pid).cmdline()
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # not ours to read, so not the broker we started either
        return False
    return "kafka.Kafka" in args and str(Path(st.run_dir) / "server.properties") in args


def _server_properties(port: int, controller_port: int, log_dir: Path) -> str:
    # Single-node settings: the defaults (replication 3, min ISR 2, 50 offsets partitions,
    # 3 s rebalance delay) make consumer groups hang or crawl on one node.
    # Retention is unlimited because record timestamps are event time (base epoch + secs),
    # which time-based retention would otherwise delete at once.
    return "\n".join(
        [
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@127.0.0.1:{controller_port}",
            f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
            "inter.broker.listener.name=PLAINTEXT",
            "controller.listener.names=CONTROLLER",
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            f"log.dirs={log_dir}",
            "num.partitions=1",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=1",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
            "log.retention.ms=-1",
            "",
        ]
    )


class LocalBroker:
    """One local Kafka broker whose jars, logs and state live under ``state_dir``."""

    def __init__(self, state_dir: Path, heap: str = "512m", jars_dir: Path | None = None):
        self.state_dir = Path(state_dir).resolve()
        self.heap = heap
        self.jars_dir = Path(jars_dir) if jars_dir else default_jars_dir()
        self.state_path = self.state_dir / STATE_FILE

    # -- jars -----------------------------------------------------------------------------
    def fetch_jars(self) -> Path:
        """Copy Kafka's runtime jars from Maven Central (cached by ~/.m2 and ``jars_dir``)."""
        marker = self.jars_dir / ".complete"
        if marker.exists():
            return self.jars_dir
        mvn = _require("mvn", "Apache Maven (to fetch Kafka's jars from Maven Central)")
        tmp = self.jars_dir.with_name(self.jars_dir.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        log.info("fetching Apache Kafka %s jars from Maven Central (first run only)", KAFKA_VERSION)
        cmd = [
            mvn, "-B", "-q", "-f", str(POM), "dependency:copy-dependencies",
            "-DincludeScope=runtime", f"-DoutputDirectory={tmp}",
        ]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)  # what it fetched before failing is not a set of jars
            raise BrokerError(
                "Maven could not fetch Kafka's jars (is Maven Central reachable?):\n"
                + (proc.stdout + proc.stderr)[-2000:]
            )
        shutil.rmtree(self.jars_dir, ignore_errors=True)
        self.jars_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(self.jars_dir)
        marker.touch()
        return self.jars_dir

    # -- state ----------------------------------------------------------------------------
    def state(self) -> BrokerState | None:
        """The recorded broker if its process is still alive, else None (stale state removed)."""
        try:
            st = BrokerState(**json.loads(self.state_path.read_text()))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError):
            self.state_path.unlink(missing_ok=True)
            return None
        if not _alive(st.pid) or not _is_broker(st):
            self.state_path.unlink(missing_ok=True)
            return None
        return st

    # -- lifecycle ------------------------------------------------------------------------
    def start(self, timeout: float = 120.0) -> BrokerState:
        """Start the broker and return once a client can list topics."""
        running = self.state()
        if running is not None:
            raise BrokerError(
                f"a local broker is already running at {running.bootstrap} (pid {running.pid}); "
                "use `cyberstream broker stop` first"
            )
        java = _require("java", "Java 17 or newer (a JRE)")
        jars = self.fetch_jars()
        classpath = f"{jars}/*"
        run_dir = self.state_dir / "broker-run"
        shutil.rmtree(run_dir, ignore_errors=True)
        (run_dir / "logs").mkdir(parents=True)  # a fresh KRaft log directory every start
        port, controller_port = _free_port(), _free_port()
        while controller_port == port:
            controller_port = _free_port()
        props = run_dir / "server.properties"
        props.write_text(_server_properties(port, controller_port, run_dir / "data"))
        cluster_id = self._java_tool(java, classpath, ["random-uuid"]).strip().splitlines()[-1]
        self._java_tool(java, classpath, ["format", "-t", cluster_id, "-c", str(props)])
        cmd = [
            java, f"-Xmx{self.heap}", "-Xms128m", "-XX:+UseG1GC", "-Djava.awt.headless=true",
            f"-Dkafka.logs.dir={run_dir / 'logs'}", f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
            "-cp", classpath, "kafka.Kafka", str(props),
        ]  # fmt: skip
        out = open(run_dir / "logs" / "stdout.log", "wb")
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)  # fmt: skip
        out.close()
        st = BrokerState(proc.pid, f"127.0.0.1:{port}", controller_port, str(run_dir), time.time())
        self.state_path.write_text(json.dumps(asdict(st)))
        try:
            self._wait_ready(st, proc, timeout)
        except BaseException:
            self.stop()
            raise
        return st

    def _java_tool(self, java: str, classpath: str, args: list[str]) -> str:
        proc = subprocess.run(
            [java, "-cp", classpath, f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
             "-Dkafka.logs.dir=" + str(self.state_dir), "kafka.tools.StorageTool", *args],
            capture_output=True, text=True,
        )  # fmt: skip
        if proc.returncode != 0:
            raise BrokerError(f"kafka StorageTool {args[0]} failed:\n{(proc.stdout + proc.stderr)[-2000:]}")
        return proc.stdout

    def _wait_ready(self, st: BrokerState, proc: subprocess.Popen, timeout: float) -> None:
        from kafka import KafkaAdminClient
        from kafka.errors import KafkaError

        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise BrokerError(
                    f"the Kafka broker exited with code {proc.returncode} while starting:\n{self.log_tail(st)}"
                )
            host, port = st.bootstrap.rsplit(":", 1)
            try:  # cheap TCP probe first: kafka-python backs off for seconds on refused connections
                socket.create_connection((host, int(port)), timeout=1).close()
            except OSError as exc:
                last_error = exc
                time.sleep(0.2)
                continue
            try:
                admin = KafkaAdminClient(bootstrap_servers=st.bootstrap, request_timeout_ms=5000,
                                         client_id="cyberstream-broker-check")  # fmt: skip
                try:
                    admin.list_topics()
                    return
                finally:
                    admin.close()
            except (KafkaError, OSError) as exc:
                last_error = exc
                time.sleep(0.5)
        raise BrokerError(f"the broker did not answer within {timeout:.0f} s ({last_error}):\n{self.log_tail(st)}")

    def log_tail(self, st: BrokerState, lines: int = 30) -> str:
        logs = Path(st.run_dir) / "logs"
        text = []
        for name in ("stdout.log", "server.log"):
            try:
                text += (logs / name).read_text(errors="replace").splitlines()[-lines:]
            except FileNotFoundError:
                pass
        return "\n".join(text[-lines:])

    def stop(self, timeout: float = 60.0) -> bool:
        """Stop the broker cleanly (SIGTERM, then SIGKILL after ``timeout``); True if one ran."""
        try:
            st = BrokerState(**json.loads(self.state_path.read_text()))
        except (FileNotFoundError, ValueError, TypeError):
            return False
        stopped = False
        if _alive(st.pid) and not _is_broker(st):
            # The broker is gone and its pid was reused: signalling that group could kill
            # anything. Only the stale state is removed.
            log.warning("pid %d is no longer the broker recorded in %s: not signalled", st.pid, self.state_path)
        elif _alive(st.pid):
            _signal_group(st.pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and _alive(st.pid):
                time.sleep(0.2)
            if _alive(st.pid):
                log.warning("broker pid %d did not stop in %.0f s; killing it", st.pid, timeout)
                _signal_group(st.pid, signal.SIGKILL)
                while _alive(st.pid):
                    time.sleep(0.1)
            stopped = True
        self.state_path.unlink(missing_ok=True)
        shutil.rmtree(Path(st.run_dir) / "data", ignore_errors=True)
        return stopped


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # the broker runs in its own session: its group id is its pid
    except ProcessLookupError:
        pass
    except PermissionError:
        os.kill(pid, sig)


@contextlib.contextmanager
def running_broker(bootstrap: str | None = None) -> Iterator[str]:
    """A broker address for the duration of a ``with`` block (benchmarks, scripts).

    ``bootstrap``, else ``KAFKA_BOOTSTRAP_SERVERS``, else the running local broker; when none
    is found a temporary local broker is started and stopped at the end of the block.
    """
    from cyberstream.kafka_io import BrokerUnavailable, resolve_bootstrap

    try:
        yield resolve_bootstrap(bootstrap)
        return
    except BrokerUnavailable:
        pass
    with tempfile.TemporaryDirectory(prefix="cyberstream-kafka-") as tmp:
        broker = LocalBroker(Path(tmp))
        st = broker.start(timeout=180)
        try:
            yield st.bootstrap
        finally:
            broker.stop()
