"""Test utilities of graflow_runtime (no wheel or PEX carries them)."""
