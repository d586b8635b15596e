"""Fetch, format, start, probe and stop a local KRaft broker, or a cluster of them.

State lives under ``$STREAM_LEARNER_HOME`` (default ``~/.cache/stream-learner``):
``kafka-<version>/libs`` holds the jars (fetched once, reused offline), ``broker-<port>/``
a single node's data, log, pid file and generated ``server.properties``, and
``cluster-<port>/node-<id>/`` the same for each node of a :class:`LocalCluster`.
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
from collections.abc import Mapping
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

# One node of a local cluster: every node is broker and controller (combined mode), so
# N JVMs make an N-voter quorum that survives the loss of any minority, controller or not.
# Replication 3 / min ISR 2 for the internal topics as for the declared ones (capped at
# the node count); few threads, short failure detection, so a killed node's partitions
# move within seconds and three nodes fit on a small machine.
_CLUSTER_PROPERTIES = """\
process.roles=broker,controller
node.id={node_id}
controller.quorum.voters={voters}
listeners=PLAINTEXT://{host}:{port},CONTROLLER://{host}:{controller_port}
advertised.listeners=PLAINTEXT://{host}:{port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs={data}
num.partitions=1
default.replication.factor={replication}
min.insync.replicas={min_isr}
offsets.topic.replication.factor={replication}
offsets.topic.num.partitions=4
transaction.state.log.replication.factor={replication}
transaction.state.log.min.isr={min_isr}
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor={replication}
share.coordinator.state.topic.min.isr={min_isr}
group.initial.rebalance.delay.ms=0
log.cleaner.dedupe.buffer.size=8388608
log.cleaner.backoff.ms=5000
auto.create.topics.enable=false
delete.topic.enable=true
num.network.threads=2
num.io.threads=2
num.replica.fetchers=1
background.threads=2
log.cleaner.threads=1
broker.heartbeat.interval.ms=1000
broker.session.timeout.ms=6000
replica.lag.time.max.ms=10000
"""

# The single node's JVM, unchanged since the first release; a cluster node gets less:
# three of them share the machine with the tests and the service.
_SINGLE_JVM = ("-Xms256m", "-Xmx768m", "-XX:+UseG1GC")
_NODE_JVM = ("-Xms96m", "-Xmx320m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1")


def _home() -> Path:
    return Path(os.environ.get(HOME_ENV) or Path.home() / ".cache" / "stream-learner")


def kafka_version() -> str:
    match = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", POM.read_text())
    if not match:  # pragma: no cover - the pom ships with the package
        raise LocalBrokerError(f"{POM} does not declare <kafka.version>")
    return match.group(1).strip()


_JAVA_HINT = "a Java 17+ runtime (e.g. 'apt-get install openjdk-17-jre-headless')"


def new_cluster_id() -> str:
    """A random KRaft cluster id. Like Kafka's own ``Uuid.randomUuid``, never one that
    starts with '-': ``kafka-storage format -t -abc`` reads it as an option and fails."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


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

    jvm_options: tuple[str, ...] = _SINGLE_JVM

    def __init__(
        self,
        port: int | None = None,
        home: Path | None = None,
        *,
        overrides: Mapping[str, str] | None = None,
    ) -> None:
        """``overrides``: extra server properties (tests: e.g. a short retention check);
        without them the broker's configuration is the one documented above."""
        self.overrides = dict(overrides or {})
        self.port = port or local_port()
        self.controller_port = self.port + 1
        self.home = home or _home()
        self.version = kafka_version()
        self.libs = self.home / f"kafka-{self.version}" / "libs"
        self.dir = self._state_dir()
        self.data = self.dir / "data"
        self.log = self.dir / "broker.log"
        self.pid_file = self.dir / "broker.pid"
        self.properties = self.dir / "server.properties"

    def _state_dir(self) -> Path:
        return self.home / f"broker-{self.port}"

    def _server_properties(self) -> str:
        return _SERVER_PROPERTIES.format(
            host=LOCAL_HOST, port=self.port, controller_port=self.controller_port, data=self.data
        )

    def _cluster_id(self) -> str:
        return new_cluster_id()

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
        cluster_id = self._cluster_id()
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
        proc = self._launch()
        return self._wait_ready(proc.pid, timeout, proc), True

    def _launch(self) -> subprocess.Popen[bytes]:
        """Write the config, format the storage once and start the JVM; do not wait."""
        java = _require_tool("java", _JAVA_HINT)
        for port in (self.port, self.controller_port):
            if self._port_in_use(port):
                raise LocalBrokerError(
                    f"port {port} on {LOCAL_HOST} is taken by another process; "
                    "choose other ports with STREAM_LEARNER_KAFKA_PORT"
                )
        self.ensure_jars()
        self.dir.mkdir(parents=True, exist_ok=True)
        extra = "".join(f"{key}={value}\n" for key, value in sorted(self.overrides.items()))
        self.properties.write_text(self._server_properties() + extra)
        self._format(java)
        cmd = [
            java, *self.jvm_options, "-Djava.awt.headless=true",
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
        return proc

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


class ClusterNode(LocalBroker):
    """One node of a :class:`LocalCluster`: broker and controller, in ``cluster-<port>/``."""

    jvm_options = _NODE_JVM

    def __init__(self, cluster: LocalCluster, node_id: int) -> None:
        self.cluster = cluster
        self.node_id = node_id
        super().__init__(port=cluster.base_port + 2 * (node_id - 1), home=cluster.home)

    def _state_dir(self) -> Path:
        return self.cluster.dir / f"node-{self.node_id}"

    def _server_properties(self) -> str:
        replication = min(3, self.cluster.nodes)
        return _CLUSTER_PROPERTIES.format(
            node_id=self.node_id,
            voters=self.cluster.voters,
            host=LOCAL_HOST,
            port=self.port,
            controller_port=self.controller_port,
            data=self.data,
            replication=replication,
            min_isr=min(2, replication),
        )

    def _cluster_id(self) -> str:
        return self.cluster.cluster_id()


class LocalCluster:
    """``nodes`` local brokers from the same jars, identified by the first node's port.

    Node ``i`` (1-based) listens on ``base_port + 2(i-1)`` and runs its controller on the
    port after it, the single broker's layout repeated. Every node is broker and
    controller, so a majority of the nodes keeps the cluster running.
    """

    def __init__(self, nodes: int, base_port: int | None = None, home: Path | None = None):
        if not 2 <= nodes <= 9:
            raise LocalBrokerError(f"a local cluster has 2 to 9 nodes, not {nodes}")
        self.nodes = nodes
        self.base_port = base_port or default_cluster_port()
        if self.base_port + 2 * nodes - 1 > 65535:
            raise LocalBrokerError(f"port {self.base_port} leaves no room for {nodes} nodes")
        self.home = home or _home()
        self.dir = self.home / f"cluster-{self.base_port}"
        self.members = [ClusterNode(self, i) for i in range(1, nodes + 1)]

    @property
    def voters(self) -> str:
        return ",".join(f"{n.node_id}@{LOCAL_HOST}:{n.controller_port}" for n in self.members)

    @property
    def bootstrap(self) -> str:
        return ",".join(node.bootstrap for node in self.members)

    def cluster_id(self) -> str:
        """One id for every node's storage, kept so a node formatted later joins the same."""
        path = self.dir / "cluster.id"
        if not path.exists():
            self.dir.mkdir(parents=True, exist_ok=True)
            path.write_text(new_cluster_id())
        return path.read_text().strip()

    def node(self, node_id: int) -> ClusterNode:
        return self.members[node_id - 1]

    def status(self) -> list[BrokerStatus]:
        return [node.status() for node in self.members]

    def up(self, timeout: float = 120.0) -> tuple[list[BrokerStatus], bool]:
        """Start every node that is not running, together (a quorum needs a majority
        before any node answers), and wait until the metadata shows every broker."""
        launched: dict[int, subprocess.Popen[bytes]] = {}
        for node in self.members:
            if node.status().running:
                continue
            try:
                launched[node.node_id] = node._launch()
            except LocalBrokerError:
                for node_id, proc in launched.items():
                    self.node(node_id)._stop_pid(proc.pid, grace=10.0)
                raise
        deadline = time.monotonic() + timeout
        try:
            for node in self.members:
                proc = launched.get(node.node_id)
                pid = proc.pid if proc else node.status().pid
                node._wait_ready(pid, max(deadline - time.monotonic(), 1.0), proc)
        except LocalBrokerError:
            self.down(grace=10.0)
            raise
        while time.monotonic() < deadline:
            try:
                if check_reachable(self.bootstrap, timeout=5.0) >= self.nodes:
                    return self.status(), bool(launched)
            except BrokerError:
                pass
            time.sleep(0.5)
        self.down(grace=10.0)
        raise LocalBrokerError(
            f"the {self.nodes}-node cluster at {self.bootstrap} did not show all its brokers "
            f"within {timeout:g}s; see the logs under {self.dir}"
        )

    def down(self, *, purge: bool = False, grace: float = 30.0) -> int:
        """Stop every node (controlled shutdown, then SIGKILL after ``grace``).

        Returns how many were running. ``purge`` also deletes the cluster's data.
        """
        running = [(node, pid) for node in self.members if (pid := node._pid()) is not None]
        # SIGTERM to all first: a node's controlled shutdown needs the others' quorum, so
        # stopping them one by one would leave the last waiting for a quorum that is gone.
        for _, pid in running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        for node, pid in running:
            node._stop_pid(pid, grace)
        for node in self.members:
            node.pid_file.unlink(missing_ok=True)
        if purge:
            shutil.rmtree(self.dir, ignore_errors=True)
        return len(running)


def default_cluster_port() -> int:
    """Where a cluster listens unless told: 100 ports above the single broker, so both
    can run side by side (39192, 39194, 39196 by default)."""
    return local_port() + 100


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
