import pytest

from pibench.mpc.parties.launch import free_port


@pytest.fixture(scope="session")
def pair():
    """A plain CrypTen client (this process) / server (subprocess) pair for the whole run."""
    from crypten_pair import Pair

    p = Pair(free_port())
    yield p
    p.close()
