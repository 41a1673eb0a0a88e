"""Function secret sharing (FSS) for the dealer protocol: PRG, DCF keys, and the ReLU gate.

Pure numpy + `cryptography`, independent of the MPC engine: a gate pairs the dealer's
`keygen(...) -> (key0, key1)` with a party's `evaluate(party, key, ...)`, and keys are
dataclasses of numpy arrays with a declared byte size, views of the bytes sent
(`relu.keygen_words` makes them in that form). See `dcf` and `relu`.
"""
