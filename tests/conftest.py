import pytest


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="also run tests marked slow")
    parser.addoption(
        "--runslurm",
        action="store_true",
        default=False,
        help="also run tests marked slurm (root: they install slurm-wlm and munge and start a one-node cluster)",
    )


def pytest_collection_modifyitems(config, items):
    for marker, option in (("slow", "--runslow"), ("slurm", "--runslurm")):
        if config.getoption(option):
            continue
        skip = pytest.mark.skip(reason=f"{marker}: run with {option}")
        for item in items:
            if marker in item.keywords:
                item.add_marker(skip)
