"""Fabric preflight: prove the group's ranks form one world before loading a model."""
