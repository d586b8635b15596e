"""Fetch, format, start, probe and stop a local single-node KRaft broker.

State lives under ``$STREAM_LEARNER_HOME`` (default ``~/.cache/stream-learner``):
``kafka-<version>/libs`` holds the jars (fetched once, reused offline), and
``broker-<port>/`` the data, log, pid file and generated ``server.properties``.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from stream_learner.errors import BrokerError, LocalBrokerError
from stream_learner.kafka.client import LOCAL_HOST, check_reachable, local_port

HOME_ENV = "STREAM_LEARNER_HOME"
# Brokers started by this process, kept so their exit status can be collected
# (and so Popen does not warn that a child outlived its object).
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}
_HERE = Path(__file__).resolve().parent
POM = _HERE / "pom.xml"
LOG4J = _HERE / "log4j2.properties"

# Sized for one node on a small machine: replication 1, few partitions for the
# internal topics, no rebalance delay (tests start consumers constantly) and a
# small dedupe buffer so the log cleaner does not claim 128 MiB of heap.
_SERVER_PROPERTIES = """\
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@{host}:{controller_port}
listeners=PLAINTEXT://{host}:{port},CONTROLLER://{host}:{controller_port}
advertised.listeners=PLAINTEXT://{host}:{port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs={data}
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.cleaner.dedupe.buffer.size=8388608
log.cleaner.backoff.ms=5000
auto.create.topics.enable=false
delete.topic.enable=true
"""


def _home() -> Path:
    return Path(os.environ.get(HOME_ENV) or Path.home() / ".cache" / "stream-learner")


def kafka_version() -> str:
    match = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", POM.read_text())
    if not match:  # pragma: no cover - the pom ships with the package
        raise LocalBrokerError(f"{POM} does not declare <kafka.version>")
    return match.group(1).strip()


_JAVA_HINT = "a Java 17+ runtime (e.g. 'apt-get install openjdk-17-jre-headless')"


def _require_tool(name: str, what: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise LocalBrokerError(f"'{name}' not found on PATH: install {what} to run the local Kafka")
    return path


@dataclass(frozen=True)
class BrokerStatus:
    running: bool
    answering: bool
    pid: int | None
    bootstrap: str
    log: Path

    def describe(self) -> str:
        if self.running and self.answering:
            return f"up: {self.bootstrap} (pid {self.pid}, log {self.log})"
        if self.running:
            return (
                f"starting or unhealthy: pid {self.pid} not answering at {self.bootstrap} "
                f"(log {self.log})"
            )
        return f"down: nothing running for {self.bootstrap}"


class LocalBroker:
    """One local broker, identified by its port. Safe to call ``up`` twice."""

    def __init__(self, port: int | None = None, home: Path | None = None) -> None:
        self.port = port or local_port()
        self.controller_port = self.port + 1
        self.home = home or _home()
        self.version = kafka_version()
        self.libs = self.home / f"kafka-{self.version}" / "libs"
        self.dir = self.home / f"broker-{self.port}"
        self.data = self.dir / "data"
        self.log = self.dir / "broker.log"
        self.pid_file = self.dir / "broker.pid"
        self.properties = self.dir / "server.properties"

    @property
    def bootstrap(self) -> str:
        return f"{LOCAL_HOST}:{self.port}"

    # -- jars ---------------------------------------------------------------
    def ensure_jars(self) -> Path:
        """Resolve the broker jars with Maven once; later calls need no network."""
        marker = self.libs / ".complete"
        if marker.exists():
            return self.libs
        _require_tool("java", _JAVA_HINT)
        mvn = _require_tool("mvn", "Apache Maven (e.g. 'apt-get install maven')")
        staging = self.libs.with_name("libs.partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        cmd = [
            mvn, "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
            f"-DoutputDirectory={staging}", "-DincludeScope=runtime",
        ]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-1:] or ["no output"]
            raise LocalBrokerError(
                f"Maven could not fetch the Kafka {self.version} jars: {tail[0]}"
            )
        shutil.rmtree(self.libs, ignore_errors=True)
        staging.rename(self.libs)
        marker.write_text(self.version + "\n")
        return self.libs

    # -- process ------------------------------------------------------------
    def _pid(self) -> int | None:
        """The pid from the pid file, if that process is alive and is our broker."""
        try:
            pid = int(self.pid_file.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return None
        if b"kafka.Kafka" in cmdline and str(self.properties).encode() in cmdline:
            return pid
        return None

    def _answering(self, timeout: float = 3.0) -> bool:
        try:
            return check_reachable(self.bootstrap, timeout=timeout) > 0
        except BrokerError:
            return False

    def status(self) -> BrokerStatus:
        pid = self._pid()
        answering = pid is not None and self._answering()
        return BrokerStatus(pid is not None, answering, pid, self.bootstrap, self.log)

    def _port_in_use(self, port: int) -> bool:
        with socket.socket() as sock:
            sock.settimeout(0.5)
            return sock.connect_ex((LOCAL_HOST, port)) == 0

    def _format(self, java: str) -> None:
        if (self.data / "meta.properties").exists():
            return
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        cmd = [
            java, "-cp", f"{self.libs}/*", "kafka.tools.StorageTool",
            "format", "-t", cluster_id, "-c", str(self.properties),
        ]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            msg = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise LocalBrokerError(f"formatting Kafka storage in {self.data} failed: {msg[0]}")

    def up(self, timeout: float = 90.0) -> tuple[BrokerStatus, bool]:
        """Start the broker unless it already runs; returns (status, started_now)."""
        current = self.status()
        if current.running and current.answering:
            return current, False
        if current.running:
            # A broker of ours that is still starting: wait for it rather than start another.
            return self._wait_ready(current.pid, timeout), False
        java = _require_tool("java", _JAVA_HINT)
        for port in (self.port, self.controller_port):
            if self._port_in_use(port):
                raise LocalBrokerError(
                    f"port {port} on {LOCAL_HOST} is taken by another process; "
                    "choose other ports with STREAM_LEARNER_KAFKA_PORT"
                )
        self.ensure_jars()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.properties.write_text(
            _SERVER_PROPERTIES.format(
                host=LOCAL_HOST,
                port=self.port,
                controller_port=self.controller_port,
                data=self.data,
            )
        )
        self._format(java)
        cmd = [
            java, "-Xms256m", "-Xmx768m", "-XX:+UseG1GC", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={LOG4J}", f"-Dstream_learner.log={self.log}",
            "-cp", f"{self.libs}/*", "kafka.Kafka", str(self.properties),
        ]  # fmt: skip
        with open(self.dir / "broker.out", "ab") as out:
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        _CHILDREN[proc.pid] = proc
        self.pid_file.write_text(f"{proc.pid}\n")
        return self._wait_ready(proc.pid, timeout, proc), True

    def _wait_ready(
        self, pid: int | None, timeout: float, proc: subprocess.Popen[bytes] | None = None
    ) -> BrokerStatus:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                self.pid_file.unlink(missing_ok=True)
                raise LocalBrokerError(
                    f"Kafka exited with code {proc.returncode} while starting; see {self.log} "
                    f"and {self.dir / 'broker.out'}"
                )
            if self._port_in_use(self.port) and self._answering(timeout=2.0):
                return BrokerStatus(True, True, pid, self.bootstrap, self.log)
            time.sleep(0.5)
        if proc is not None:
            self._stop_pid(proc.pid, grace=10.0)
        raise LocalBrokerError(
            f"Kafka did not answer at {self.bootstrap} within {timeout:g}s; see {self.log}"
        )

    def _stop_pid(self, pid: int, grace: float) -> None:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if not Path(f"/proc/{pid}").exists() or _is_zombie(pid):
                break
            time.sleep(0.2)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _reap(pid)
        self.pid_file.unlink(missing_ok=True)

    def down(self, *, purge: bool = False, grace: float = 30.0) -> bool:
        """Stop the broker (controlled shutdown, then SIGKILL after ``grace``).

        Returns whether a broker was running. ``purge`` also deletes its data.
        """
        pid = self._pid()
        if pid is not None:
            self._stop_pid(pid, grace)
        else:
            self.pid_file.unlink(missing_ok=True)
        if purge:
            shutil.rmtree(self.dir, ignore_errors=True)
        return pid is not None


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except (OSError, IndexError):
        return False


def _reap(pid: int) -> None:
    """Collect the exit status when the broker is our own child (tests start it)."""
    child = _CHILDREN.pop(pid, None)
    if child is not None:
        child.wait(timeout=10)
