"""Secure two-party execution of pibench models (CrypTen backend)."""
