"""Garbled circuits and oblivious transfer for `crypten:gc` (Delphi's online phase).

Pure numpy + `cryptography`, independent of the MPC engine. One module per concept:
`labels` (128-bit wire labels and the fixed-key AES hash), `garble` (free-XOR +
half-gates garbling and evaluation of a circuit written once over an engine),
`circuits` (the ReLU circuit), `base_ot` (base OTs over X25519), `iknp` (IKNP
correlated-OT extension) and `relu` (one layer of ReLUs: garble, encode, evaluate, decode).
"""
