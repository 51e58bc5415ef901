"""Orchestration: manifests, seeding, sources, the Ray plan, sinks and provenance."""
