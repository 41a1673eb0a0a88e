"""The Docker recipe stays in step with the Makefile, and compose runs valid `pibench` parties.

Docker does not run on this machine, so these tests read the files: versions and
install order in docker/Dockerfile against the Makefile, and each compose service's
command parsed by pibench's own argument parser.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

import pytest
import yaml

from pibench import cli

ROOT = Path(__file__).resolve().parents[1]
MODEL = "demo_model"


def makefile_var(pattern: str) -> str:
    match = re.search(pattern, (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert match, f"Makefile has no match for {pattern}"
    return match.group(1)


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    text = (ROOT / "docker" / "Dockerfile").read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    return [tuple(line.split(None, 1)) for line in joined.splitlines() if line.strip()]


def pip_installs() -> list[str]:
    """Every `pip install ...` step of the RUN instructions, in build order."""
    steps = [step.strip() for op, args in dockerfile_instructions() if op == "RUN" for step in args.split("&&")]
    return [step for step in steps if step.startswith("pip install") and "--upgrade pip" not in step]


def test_dockerfile_installs_like_the_makefile():
    instructions = dockerfile_instructions()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    torch_spec = makefile_var(r"^TORCH_SPEC \?= (\S+)$")
    crypten_pin = makefile_var(r"--no-deps (crypten==\S+)")
    assert ("ARG", f"TORCH_SPEC={torch_spec}") in instructions
    torch_step, crypten_step, pibench_step = pip_installs()
    # torch first, CPU wheels only, at the Makefile's version
    assert '"${TORCH_SPEC}"' in torch_step.split()
    assert "--index-url https://download.pytorch.org/whl/cpu" in torch_step
    # then crypten without its broken metadata deps, at the Makefile's version
    assert crypten_step.split() == ["pip", "install", "--no-deps", crypten_pin]
    # then pibench with the test extra, from the copied sources
    assert pibench_step == 'pip install ".[test]"'
    copied = {src for op, args in instructions if op == "COPY" for src in args.split()[:-1]}
    assert {"pyproject.toml", "README.md", "pibench"} <= copied


def interpolate(value, env: dict[str, str]):
    """Compose's `${VAR}`, `${VAR:-default}` and `${VAR:?error}` substitution."""
    if isinstance(value, str):
        return re.sub(r"\$\{(\w+)(?::[-?][^}]*)?\}", lambda m: env[m.group(1)], value)
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    return value


@pytest.fixture(scope="module")
def services() -> dict:
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    return interpolate(compose, {"MODEL": MODEL})["services"]


def mounts(service: dict) -> dict[str, tuple[str, str]]:
    """Container path -> (host path, mode) of a service's bind mounts."""
    out = {}
    for volume in service.get("volumes", []):
        host, container, *mode = volume.split(":")
        out[container] = (host, mode[0] if mode else "rw")
    return out


def test_compose_services_share_one_network_and_image(services):
    assert set(services) == {"client", "server", "dealer"}
    assert len({s["image"] for s in services.values()}) == 1
    assert all(s["build"]["dockerfile"] == "docker/Dockerfile" for s in services.values())
    assert len({tuple(s["networks"]) for s in services.values()}) == 1
    assert not any("ports" in s for s in services.values())  # nothing published on the host


def test_compose_commands_are_pibench_party_invocations(services):
    parser = cli.build_parser()
    parsed = {}
    for name, service in services.items():
        argv = service["command"]
        assert argv[:2] == ["pibench", "party"], name
        try:
            parsed[name] = parser.parse_args(argv[1:])
        except SystemExit:
            pytest.fail(f"service {name}: `{' '.join(argv)}` is not a valid pibench invocation")
    assert {name: args.role for name, args in parsed.items()} == {n: n for n in services}
    rendezvous = {args.rendezvous for args in parsed.values()}
    assert len(rendezvous) == 1, f"parties disagree on the rendezvous: {rendezvous}"
    url = urlparse(rendezvous.pop())
    assert url.scheme == "tcp" and url.hostname == "client" and url.port  # rank 0 hosts the store
    assert parsed["client"].model == parsed["server"].model == [f"/models/{MODEL}"]
    assert len({args.protocol for args in parsed.values()}) == 1
    # the client writes the results, to ./results on the host
    assert parsed["client"].out == "/results" and mounts(services["client"])["/results"] == ("../results", "rw")


def test_only_the_server_can_read_the_weights(services):
    model_dir = PurePosixPath("/models") / MODEL
    model_mounts = {
        name: {c: m for c, m in mounts(service).items() if c.startswith("/models")}
        for name, service in services.items()
    }
    assert all(mode == "ro" for found in model_mounts.values() for _, mode in found.values())
    assert set(model_mounts["server"]) == {str(model_dir)}  # the whole folder, weights included
    # the client gets the public part only, file by file; the dealer no model at all
    assert set(model_mounts["client"]) == {str(model_dir / "model.json"), str(model_dir / "masks.safetensors")}
    assert not any("weights" in host for host, _ in model_mounts["client"].values())
    assert model_mounts["dealer"] == {}
