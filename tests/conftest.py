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


# Modules whose tests start MPC party processes (or CLI runs that do): the `parties` marker, which
# `make test-fast` (-m "not parties and not slow") skips. A test elsewhere that starts parties is
# marked `@pytest.mark.parties` itself.
PARTY_MODULES = {
    "test_adversary", "test_cli_errors", "test_docker", "test_export_mpc", "test_mpc_costs", "test_mpc_fss",
    "test_mpc_parties", "test_multihost", "test_netns", "test_protocols", "test_spu", "test_sweep", "test_sweep_slurm",
}


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
