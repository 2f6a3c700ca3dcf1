"""Real Redis topologies for the tests: a Redis Cluster and a Sentinel-watched master, on free 127.0.0.1 ports.

Both are Debian's ``redis-server``: ``--cluster-enabled yes`` nodes joined by ``redis-cli --cluster create``,
and ``redis-server sentinel.conf --sentinel``. Nothing is kept on disk beyond the test's own directory, and
:meth:`stop` ends every process, so the machine's shared Redis is never touched.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.servers import REDIS_SERVER, PrivateRedis, free_port, require_executable, stop_process

REDIS_CLI = "/usr/bin/redis-cli"
#: How long a silent node or master counts as alive: short, so a failover test takes seconds.
NODE_TIMEOUT_MS = 1000
#: The same for cluster nodes, which also vote: long enough that a node starved of CPU for a moment by a
#: parallel test run is not taken for failed beside the one a test kills (two masters down of three leave
#: no majority to elect a replica).
CLUSTER_NODE_TIMEOUT_MS = 2000


def command(port: int, *args: str, timeout: float = 5.0) -> str:
    """One command to the server on ``port`` through redis-cli; its reply as text."""
    result = subprocess.run(
        [REDIS_CLI, "-h", "127.0.0.1", "-p", str(port), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return result.stdout.strip()


def _wait(condition: str, check: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {condition}")


def _offset(info: str, field: str) -> int:
    for line in info.splitlines():
        if line.startswith(field + ":"):
            return int(line.split(":", 1)[1])
    raise RuntimeError(f"no {field} in INFO replication")


def _replica_offsets(info: str) -> list[int]:
    """The offsets a master's replicas acknowledged, from its ``slaveN:ip=...,offset=...`` lines."""
    offsets = []
    for line in info.splitlines():
        if line.startswith("slave") and ":" in line and "offset=" in line:
            fields = dict(part.split("=", 1) for part in line.split(":", 1)[1].split(","))
            offsets.append(int(fields["offset"]))
    return offsets


def wait_replicated(port: int, timeout: float = 10.0) -> None:
    """Wait until the replicas of the master on ``port`` have every write it has taken so far.

    Compares replication offsets (``INFO replication``) rather than sending ``WAIT``: ``WAIT`` counts the
    writes of its own connection, and redis-cli's has made none, so it answers at once whatever the replicas
    lag. A replica promoted without the last writes would lose them.
    """
    target = _offset(command(port, "INFO", "replication"), "master_repl_offset")
    _wait(f"the replicas of {port} to reach offset {target}", lambda: _caught_up(port, target), timeout)


def _caught_up(port: int, offset: int) -> bool:
    """Whether the master on ``port`` has replicas and each acknowledged ``offset``."""
    offsets = _replica_offsets(command(port, "INFO", "replication"))
    return bool(offsets) and min(offsets) >= offset


class RedisCluster:
    """``masters`` masters with ``replicas`` replicas each, formed by ``redis-cli --cluster create``."""

    def __init__(self, directory: Path, masters: int = 3, replicas: int = 1) -> None:
        self.directory = directory
        self.replicas = replicas
        self.nodes: list[PrivateRedis] = []
        for index in range(masters * (1 + replicas)):
            node_dir = directory / f"node-{index}"
            node_dir.mkdir(parents=True)
            self.nodes.append(
                PrivateRedis(
                    node_dir,
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    str(node_dir / "nodes.conf"),
                    "--cluster-node-timeout",
                    str(CLUSTER_NODE_TIMEOUT_MS),
                    # The bus port, chosen free, rather than port + 10000 (which may be taken or above 65535).
                    "--cluster-port",
                    str(free_port()),
                    # A replica's first sync starts at once, not after the 5 s Redis waits by default to
                    # gather more replicas: until it ends, the replica holds no data and will never fail over.
                    "--repl-diskless-sync-delay",
                    "0",
                )
            )

    @property
    def url(self) -> str:
        """A ``redis+cluster://`` URL naming two of the nodes as seeds."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{node.port}" for node in self.nodes[:2])

    def start(self) -> None:
        try:
            for node in self.nodes:
                node.start()
            addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
            created = subprocess.run(
                [
                    REDIS_CLI,
                    "--cluster",
                    "create",
                    *addresses,
                    "--cluster-replicas",
                    str(self.replicas),
                    "--cluster-yes",
                ],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            if created.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed:\n{created.stdout}\n{created.stderr}")
            _wait("the cluster to be ready", self.ready)
        except BaseException:
            self.stop()
            raise

    def ready(self) -> bool:
        """Every node sees the cluster as ok, every master has its replicas, and every replica has synced.

        A replica that has not finished its first sync holds no data: were its master lost then, Redis would
        refuse to promote it ("Disconnected from master for longer than allowed") and the slots would stay
        down for good.
        """
        if not all("cluster_state:ok" in command(node.port, "CLUSTER", "INFO") for node in self.nodes):
            return False
        masters = self.masters()
        if not all(self.replica_count(node) >= self.replicas for node in masters):
            return False
        replicas = [node for node in self.nodes if node not in masters]
        return all("master_link_status:up" in command(node.port, "INFO", "replication") for node in replicas)

    def replicated(self) -> None:
        """Wait until every replica has every write its master has taken so far (:func:`wait_replicated`)."""
        for node in self.masters():
            wait_replicated(node.port)

    def role(self, node: PrivateRedis) -> str:
        reply = command(node.port, "ROLE")
        return reply.splitlines()[0] if reply else ""

    def replica_count(self, node: PrivateRedis) -> int:
        info = command(node.port, "INFO", "replication")
        for line in info.splitlines():
            if line.startswith("connected_slaves:"):
                return int(line.split(":", 1)[1])
        return 0

    def failed_over(self, lost: PrivateRedis) -> bool:
        """Redis' failover after ``lost`` (a master) died is over: a replica serves its slots, and every node
        left sees the cluster as ok again."""
        left = [node for node in self.nodes if node is not lost]
        if not all("cluster_state:ok" in command(node.port, "CLUSTER", "INFO") for node in left):
            return False
        return sum(self.role(node) == "master" for node in left) == len(self.nodes) // (1 + self.replicas)

    def masters(self) -> list[PrivateRedis]:
        return [node for node in self.nodes if node.process is not None and self.role(node) == "master"]

    def flush(self) -> None:
        """Empty every master (the run's own servers): what one test stored is gone for the next."""
        for node in self.masters():
            command(node.port, "FLUSHALL")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


class RedisSentinel:
    """A master, one replica and one sentinel (quorum 1) watching them as ``mymaster``."""

    service = "mymaster"

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        (directory / "master").mkdir(parents=True)
        (directory / "replica").mkdir()
        self.master = PrivateRedis(directory / "master")
        self.replica = PrivateRedis(directory / "replica", "--replicaof", "127.0.0.1", str(self.master.port))
        self.sentinel_port = free_port()
        self.sentinel: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.sentinel_port}/{self.service}"

    def start(self) -> None:
        try:
            self.master.start()
            self.replica.start()
            _wait("the replica to sync", lambda: "master_link_status:up" in command(self.replica.port, "INFO"))
            config = self.directory / "sentinel.conf"
            config.write_text(
                f"port {self.sentinel_port}\n"
                "bind 127.0.0.1\n"
                f"dir {self.directory}\n"
                f"sentinel monitor {self.service} 127.0.0.1 {self.master.port} 1\n"
                f"sentinel down-after-milliseconds {self.service} {NODE_TIMEOUT_MS}\n"
                f"sentinel failover-timeout {self.service} 10000\n"
            )
            self.sentinel = subprocess.Popen(
                [REDIS_SERVER, str(config), "--sentinel", "--logfile", str(self.directory / "sentinel.log")],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            _wait("the sentinel to see the replica", lambda: self.sentinel_sees_replica())
        except BaseException:
            self.stop()
            raise

    def sentinel_sees_replica(self) -> bool:
        with contextlib.suppress(OSError):
            with socket.create_connection(("127.0.0.1", self.sentinel_port), timeout=0.5):
                pass
            return str(self.replica.port) in command(self.sentinel_port, "SENTINEL", "REPLICAS", self.service)
        return False

    def master_port(self) -> int:
        """The master's port as the sentinel names it now."""
        reply = command(self.sentinel_port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service).splitlines()
        return int(reply[1])

    def failover(self) -> int:
        """``SENTINEL FAILOVER`` once the replica has every write; the new master's port once it serves."""
        old = self.master_port()
        current = self.master if old == self.master.port else self.replica
        wait_replicated(current.port)
        reply = command(self.sentinel_port, "SENTINEL", "FAILOVER", self.service)
        if reply != "OK":
            raise RuntimeError(f"SENTINEL FAILOVER answered {reply!r}")
        _wait("the failover", lambda: self.master_port() != old)
        new = self.master_port()
        _wait("the new master to accept writes", lambda: command(new, "ROLE").startswith("master"))
        return new

    def stop(self) -> None:
        process, self.sentinel = self.sentinel, None
        stop_process(process)
        self.replica.stop()
        self.master.stop()


@contextlib.contextmanager
def _running(topology: RedisCluster | RedisSentinel) -> Iterator[Any]:
    require_executable(REDIS_SERVER, REDIS_SERVER)
    require_executable(REDIS_CLI, REDIS_CLI)
    topology.start()
    try:
        yield topology
    finally:
        topology.stop()


def running_cluster(directory: Path) -> contextlib.AbstractContextManager[RedisCluster]:
    """A started :class:`RedisCluster` in ``directory``, stopped on exit."""
    return _running(RedisCluster(directory))


def running_sentinel(directory: Path) -> contextlib.AbstractContextManager[RedisSentinel]:
    """A started :class:`RedisSentinel` in ``directory``, stopped on exit."""
    return _running(RedisSentinel(directory))
