"""Run a pibench party whose client reports wrong logits (the class order reversed), so that a test can show
that the launcher's agreement and logit error come from its own plaintext model, not from the client.

    python wrong_logits.py python -m pibench.cli party --role client ...   (the launcher's command prefix)
"""

import sys

from pibench.mpc.crypten import backend

reveal = backend.CryptenBackend.reveal_to_client


def reversed_classes(self, y):
    out = reveal(self, y)
    return None if out is None else out.flip(1)


backend.CryptenBackend.reveal_to_client = reversed_classes

if __name__ == "__main__":
    from pibench.cli import main

    sys.exit(main(sys.argv[sys.argv.index("pibench.cli") + 1:]))
