"""`--backend` and `--protocol` name one security mode; a mismatch names the fix."""

import pytest

from pibench import cli
from pibench.commands.bench import resolve_protocol
from pibench.mpc.protocols import protocol_key


@pytest.mark.parametrize("argv, key", [
    ([], "crypten:dealer"),
    (["--protocol", "tfp"], "crypten:tfp"),
    (["--backend", "spu"], "spu:cheetah"),
    (["--backend", "spu", "--protocol", "semi2k"], "spu:semi2k"),
    (["--protocol", "spu:semi2k"], "spu:semi2k"),
    (["--backend", "crypten", "--protocol", "crypten:dealer"], "crypten:dealer"),
])
def test_backend_and_protocol_name_one_mode(argv, key):
    args = cli.build_parser().parse_args(["bench", "cnn_digits", *argv])
    resolve_protocol(args)
    assert args.protocol == key


@pytest.mark.parametrize("protocol, backend, message", [
    ("cheetah", None, "unknown protocol 'crypten:cheetah'"),
    ("crypten:tfp", "spu", "--protocol crypten:tfp is not a spu protocol; with --backend spu use one of cheetah, "
                           "semi2k, or drop --backend"),
    (None, "mpspdz", "unknown backend 'mpspdz'"),
])
def test_a_mismatch_is_a_clear_error(protocol, backend, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        protocol_key(protocol, backend)


def test_help_flags_the_insecure_modes(capsys):
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["bench", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "crypten:tfp: INSECURE: the client generates the randomness" in text
    assert "spu:semi2k: INSECURE" in text and "--backend {crypten,spu}" in text
