"""Real Kubernetes control plane for tests (see cluster/README.md)."""
