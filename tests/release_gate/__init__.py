"""Tests of tools/release_gate.py: a real release passes, and each planted obfuscation fails."""
