"""Model artefacts: the verified bundle format and the registry of versions and aliases."""
