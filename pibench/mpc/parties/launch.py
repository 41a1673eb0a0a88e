"""Start the parties of a secure-inference session as separate OS processes and drive them.

    client  rank 0  `pibench party --role client`   (hosts the rendezvous)
    server  rank 1  `pibench party --role server`
    dealer  rank 2  `pibench party --role dealer`   (only with a dealer protocol: crypten:dealer, crypten:fss, crypten:gc)

They talk over TCP through torch.distributed/gloo. The launcher only hands out jobs
(JSON lines on the parties' stdin) and reads their events (stdout); it never sees
shares. Each rank may get a command prefix (e.g. `ip netns exec pibench-client`) and
the rendezvous host may be any address, so the same session runs across network
namespaces. Every wait is bounded: a party that never connects, dies or stalls makes
the session fail with a message naming it, and all party processes are killed (each
runs in its own process group, so nothing is left behind).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from pibench.errors import PibenchError
from pibench.mpc.parties.party import EVENT_PREFIX, PEER_FAILED, ROLES
from pibench.mpc.protocols import DEFAULT_PROTOCOL, get_protocol

log = logging.getLogger(__name__)

_STDERR_TAIL = 15
CLIENT_ONLY = ("seed", "data_dir")  # job fields that fix the client's inputs: never sent to the server
_POLL_S = 0.2
_EXIT_WAIT_S = 20.0


class PartyError(PibenchError, RuntimeError):
    """A party died, never connected or stalled; the session is over."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class _Proc:
    role: str
    popen: subprocess.Popen
    stderr_tail: deque = field(default_factory=lambda: deque(maxlen=_STDERR_TAIL))

    def tail(self) -> str:
        return "\n".join(f"    {line}" for line in self.stderr_tail) or "    (no output)"


@dataclass
class SessionConfig:
    """How to start the parties; everything the parties must agree on is here."""

    protocol: str = DEFAULT_PROTOCOL  # a key of pibench.mpc.protocols.PROTOCOLS
    threads: int = 1
    rendezvous_host: str = "127.0.0.1"  # the client's address as the other parties reach it
    port: int | None = None  # rendezvous port (default: a free local port)
    prefixes: dict[str, list[str]] = field(default_factory=dict)  # role -> command prefix
    env: dict[str, dict[str, str]] = field(default_factory=dict)  # role -> extra environment
    connect_timeout: float = 120.0  # seconds for all parties to start and connect
    job_timeout: float = 3600.0  # seconds one model may take

    @property
    def roles(self) -> list[str]:
        return ["client", "server", "dealer"] if get_protocol(self.protocol).dealer else ["client", "server"]


def party_command(role: str, rendezvous: str, cfg: SessionConfig) -> list[str]:
    return [sys.executable, "-m", "pibench.cli", "party", "--role", role, "--rendezvous", rendezvous,
            "--protocol", cfg.protocol, "--threads", str(cfg.threads), "--events"]


class Session:
    """A running set of parties that measures one job (model) after another.

    Use as a context manager; `run(job)` returns the client's event for the job
    ("result" or "error"). Raises `PartyError` when the session itself breaks.
    """

    def __init__(self, cfg: SessionConfig | None = None) -> None:
        self.cfg = cfg or SessionConfig()
        self.procs: dict[str, _Proc] = {}
        self.events: queue.Queue[tuple[str, dict[str, Any] | None]] = queue.Queue()
        self._next_id = 0
        self.ready: dict[str, dict[str, Any]] = {}

    # -- lifecycle ------------------------------------------------------------------------
    def __enter__(self) -> "Session":
        self.start()
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close(graceful=exc_type is None)

    def start(self) -> None:
        cfg = self.cfg
        port = cfg.port or free_port()
        rendezvous = f"tcp://{cfg.rendezvous_host}:{port}"
        env = dict(os.environ, OMP_NUM_THREADS=str(cfg.threads), MKL_NUM_THREADS=str(cfg.threads),
                   PYTHONUNBUFFERED="1")
        try:
            for role in cfg.roles:
                argv = list(cfg.prefixes.get(role, [])) + party_command(role, rendezvous, cfg)
                popen = subprocess.Popen(
                    argv, stdin=subprocess.PIPE if role != "dealer" else subprocess.DEVNULL,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
                    env={**env, **cfg.env.get(role, {})}, start_new_session=True,
                )
                proc = _Proc(role, popen)
                self.procs[role] = proc
                threading.Thread(target=self._read_stdout, args=(proc,), daemon=True).start()
                threading.Thread(target=self._read_stderr, args=(proc,), daemon=True).start()
            log.info("started %s (rendezvous %s, protocol %s, %d thread(s) per party)",
                     ", ".join(f"{r} pid {p.popen.pid}" for r, p in self.procs.items()),
                     rendezvous, cfg.protocol, cfg.threads)
            self._wait_ready(rendezvous)
        except BaseException:
            self.close(graceful=False)
            raise

    def close(self, graceful: bool = True) -> None:
        """End the session: parties finish on EOF (graceful) or are killed; none survives."""
        if graceful:
            for proc in self.procs.values():
                if proc.popen.stdin:
                    try:
                        proc.popen.stdin.close()
                    except OSError:
                        pass
            deadline = time.monotonic() + _EXIT_WAIT_S
            for proc in self.procs.values():
                try:
                    proc.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    log.warning("%s did not exit within %.0f s; killing it", proc.role, _EXIT_WAIT_S)
        for proc in self.procs.values():
            self._kill(proc)
        self.procs.clear()

    @staticmethod
    def _kill(proc: _Proc) -> None:
        try:
            os.killpg(proc.popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            log.error("%s (pid %d) survived SIGKILL", proc.role, proc.popen.pid)
        for stream in (proc.popen.stdin, proc.popen.stdout, proc.popen.stderr):
            if stream:
                try:
                    stream.close()
                except OSError:
                    pass

    def pids(self) -> dict[str, int]:
        return {role: p.popen.pid for role, p in self.procs.items()}

    # -- jobs -----------------------------------------------------------------------------
    def run(self, job: dict[str, Any]) -> dict[str, Any]:
        """Hand one job to the client and the server; the client's event for it.

        Each party gets only its own part: the client the public copy (`client_model`)
        and where its inputs come from (`CLIENT_ONLY`), the server its model folder and
        no input seed, so it cannot recompute the client's inputs. A load error of the
        server reaches the evaluator (this process) through the server's event, never the client.
        """
        job = {**job, "id": self._next_id}
        self._next_id += 1
        client_job = {k: v for k, v in job.items() if k != "client_model"}
        client_job["model"] = job.get("client_model") or job["model"]
        server_job = {k: v for k, v in job.items() if k not in ("client_model", *CLIENT_ONLY)}
        for role, payload in (("client", client_job), ("server", server_job)):
            try:
                self.procs[role].popen.stdin.write(json.dumps(payload) + "\n")
                self.procs[role].popen.stdin.flush()
            except (BrokenPipeError, OSError):
                self._fail(f"cannot send the job to the {role}: it has exited")
        client_event: dict[str, Any] | None = None
        server_done, server_error = False, None
        deadline = time.monotonic() + self.cfg.job_timeout
        while client_event is None or not server_done:
            role, event = self._next_event(deadline, f"measuring {job['model']}")
            if event.get("job") != job["id"]:
                continue
            if role == "client":
                client_event = event
            elif role == "server":
                server_done = True
                server_error = event.get("error")
        if server_error and client_event.get("error", "").startswith(PEER_FAILED.format(peer="server")):
            client_event = {**client_event, "error": f"server: {server_error}"}
        return client_event

    # -- events ---------------------------------------------------------------------------
    def _read_stdout(self, proc: _Proc) -> None:
        for line in proc.popen.stdout:
            if not line.startswith(EVENT_PREFIX):
                log.debug("%s: %s", proc.role, line.rstrip())
                continue
            try:
                self.events.put((proc.role, json.loads(line[len(EVENT_PREFIX):])))
            except json.JSONDecodeError:  # keep reading: a dead reader would stall the session until job_timeout
                log.error("%s printed a malformed event line: %s", proc.role, line.rstrip()[:200])

    def _read_stderr(self, proc: _Proc) -> None:
        for line in proc.popen.stderr:
            proc.stderr_tail.append(line.rstrip())
            log.debug("%s: %s", proc.role, line.rstrip())

    def _check_alive(self, doing: str) -> None:
        for proc in self.procs.values():
            code = proc.popen.poll()
            if code is not None:
                rank = ROLES[proc.role]
                self._fail(f"the {proc.role} party (rank {rank}, pid {proc.popen.pid}) exited with code {code} "
                           f"while {doing}; its last output:\n{proc.tail()}")

    def _next_event(self, deadline: float, doing: str) -> tuple[str, dict[str, Any]]:
        while True:
            try:
                return self.events.get(timeout=_POLL_S)
            except queue.Empty:
                pass
            self._check_alive(doing)
            if time.monotonic() > deadline:
                self._fail(f"timed out while {doing}; parties still running: {', '.join(self.procs)}")

    def _wait_ready(self, rendezvous: str) -> None:
        deadline = time.monotonic() + self.cfg.connect_timeout
        while set(self.ready) != set(self.cfg.roles):
            try:
                role, event = self._next_event(deadline, f"connecting at {rendezvous}")
            except PartyError as e:
                missing = sorted(set(self.cfg.roles) - set(self.ready))
                raise PartyError(f"{e} (not connected: {', '.join(missing)}; connect timeout "
                                 f"{self.cfg.connect_timeout:.0f} s)") from None
            if event.get("event") == "ready":
                self.ready[role] = event

    def _fail(self, message: str) -> None:
        self.close(graceful=False)
        raise PartyError(message)

