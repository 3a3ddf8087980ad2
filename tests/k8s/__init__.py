"""Tests of the Kubernetes manifests, rendered and validated offline."""
