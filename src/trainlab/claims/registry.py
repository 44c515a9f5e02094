"""Collects the claims defined next to their techniques (a module-level `CLAIMS` list)."""
from __future__ import annotations

import importlib

from trainlab.claims.claim import Claim
from trainlab.errors import ConfigError
from trainlab.techniques.registry import TECHNIQUE_MODULES


def all_claims() -> dict[str, Claim]:
    claims: dict[str, Claim] = {}
    for mod_name in TECHNIQUE_MODULES:
        mod = importlib.import_module(mod_name)
        for c in getattr(mod, "CLAIMS", []):
            if c.id in claims:
                raise ConfigError(f"claim id '{c.id}' defined twice")
            claims[c.id] = c
    return claims


def suite_claims(suite: str) -> list[Claim]:
    if suite not in ("quick", "full"):
        raise ConfigError(f"unknown suite '{suite}' (quick or full)")
    return [c for c in all_claims().values() if suite in c.suites or suite == "full"]


def resolve(name: str) -> list[Claim]:
    """A claim id, or a technique name (all of its claims)."""
    claims = all_claims()
    if name in claims:
        return [claims[name]]
    by_tech = [c for c in claims.values() if c.technique == name]
    if by_tech:
        return by_tech
    from trainlab.techniques.registry import all_techniques

    if name in all_techniques():
        raise ConfigError(f"technique '{name}' has no registered claim")
    raise ConfigError(f"unknown technique or claim '{name}' (see `trainlab list`)")
