"""Tests of the gateway: its stages, front door, batching, degradation and bench."""
