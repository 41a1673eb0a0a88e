"""SecretFlow SPU as the MPC engine: runtime, link and party (optional extra)."""
