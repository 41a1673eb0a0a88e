"""CrypTen as the MPC engine: its tensors, the dealer's preprocessing and key streams, weights-fixed products."""
