"""Tests of real processes end to end: pmis up, grpcurl, rollouts, fuzzing, served equals evaluated, scale."""
