"""Secure execution of pibench models.

    program.py    torch.fx model -> Program (what to compute; engine-independent)
    backend.py    a Program run op by op on some engine's secret shares
    protocols.py  the protocol registry and each protocol's threat model
    crypten/      the CrypTen engine (dealer protocol, TFP), spu/  the SPU engine
    parties/      the party processes, their measurement and launcher
    net/          network profiles and namespaces
"""
