import os

import pytest


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="also run tests marked slow")
    parser.addoption(
        "--runslurm",
        action="store_true",
        default=False,
        help="also run tests marked slurm (root: they install slurm-wlm and munge and start a one-node cluster)",
    )


# Test tiers, by marker (registered in pyproject.toml):
# - parties: starts MPC party processes (bench runs, or CLI runs that measure). Whole modules are listed in
#   PARTY_MODULES; a single test elsewhere is marked `@pytest.mark.parties`. A test without the marker that
#   starts a party session in its own process fails (`parties_only_when_marked` below), so a module that
#   does cannot be left off the list unnoticed.
# - integration: runs for seconds to minutes because it starts other processes (CLI runs through
#   helpers.run_cli, submitit jobs, pip), trains or linearizes a model, renders a run's figures, runs a docs
#   example, or builds every full-size model of a family. Marked per test (`@pytest.mark.integration`) or per
#   module (`pytestmark`).
# - slow: long runs (the digits pipeline), skipped unless --runslow.
# `make test-fast` runs the rest (-m "not parties and not slow and not integration"): under a second each,
# under a minute in all; `make test` runs every tier but slow, `make test-all` (--runslow) all of them.
PARTY_MODULES = {
    "test_adversary", "test_adversary_gc", "test_cli_errors", "test_docker", "test_export_mpc", "test_mpc_costs",
    "test_mpc_fss", "test_mpc_gc", "test_mpc_parties", "test_multihost", "test_netns", "test_protocols", "test_spu",
    "test_sweep", "test_sweep_slurm",
}


@pytest.fixture(autouse=True)
def parties_only_when_marked(request, monkeypatch):
    """A test not marked `parties` may not start a party session: it fails, naming the marker it needs."""
    if request.node.get_closest_marker("parties"):
        return
    from pibench.mpc.parties.launch import Session

    def refuse(session):
        pytest.fail(f"{request.node.nodeid} starts MPC party processes: mark it `parties` (tests/conftest.py)")

    monkeypatch.setattr(Session, "start", refuse)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.module.__name__.rpartition(".")[2] in PARTY_MODULES:
            item.add_marker(pytest.mark.parties)
    for marker, option in (("slow", "--runslow"), ("slurm", "--runslurm")):
        if config.getoption(option):
            continue
        skip = pytest.mark.skip(reason=f"{marker}: run with {option}")
        for item in items:
            if marker in item.keywords:
                item.add_marker(skip)
    # Network-namespace tests need root and iproute2 (`ip`, `tc`): skipped without them, except
    # in CI (CI=true), where .ci/run installs iproute2 and runs as root, so a skip would hide a failure.
    from pibench.mpc.net.netns import unavailable_reason

    reason = unavailable_reason()
    if reason is not None and os.environ.get("CI") != "true":
        skip = pytest.mark.skip(reason=f"root: {reason}")
        for item in items:
            if "root" in item.keywords:
                item.add_marker(skip)
