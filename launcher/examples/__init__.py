"""The toy tensor-parallel model repository and a client for it."""
