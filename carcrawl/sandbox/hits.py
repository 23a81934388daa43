"""How many hits the sandbox's engines report for a query.

Deterministic per (query, seed), and informative in the one way the pipeline relies on: body-type
features count hits for "<make> <model> <body type>", so a query whose body type is the model's real
one ("ford f-150 truck") must score well above the same query with another body type ("ford f-150
van"). The base count depends on the query with its body-type word removed, so the four body-type
queries of one model differ only by that factor. A query containing ``noresults`` has zero hits.
"""

from __future__ import annotations

import hashlib
import re

#: words in a query that name a body type, mapped to the catalogue's four body types
BODY_WORDS: dict[str, str] = {
    "car": "car",
    "sedan": "car",
    "coupe": "car",
    "hatchback": "car",
    "suv": "suv",
    "crossover": "suv",
    "truck": "truck",
    "pickup": "truck",
    "van": "van",
    "minivan": "van",
}

#: real body types of well-known models (matched as whole words, longest first, so "ram van" wins
#: over "ram"); a small table, enough for the demo catalogue and the tests
KNOWN_BODY_TYPES: dict[str, str] = {
    # trucks
    "f-150": "truck", "f-250": "truck", "f-350": "truck", "silverado": "truck", "sierra": "truck",
    "ram": "truck", "ram 1500": "truck", "ram 2500": "truck", "ram 3500": "truck", "tacoma": "truck",
    "tundra": "truck", "frontier": "truck", "ranger": "truck", "colorado": "truck", "dakota": "truck",
    "titan": "truck", "ridgeline": "truck", "canyon": "truck", "avalanche": "truck", "sport trac": "truck",
    # vans
    "transit": "van", "transit connect": "van", "sprinter": "van", "odyssey": "van", "sienna": "van",
    "caravan": "van", "grand caravan": "van", "express": "van", "savana": "van", "econoline": "van",
    "e-series": "van", "quest": "van", "pacifica": "van", "promaster": "van", "metris": "van",
    "nv200": "van", "ram van": "van", "ram wagon": "van", "town and country": "van", "sedona": "van",
    # SUVs
    "rav4": "suv", "cr-v": "suv", "explorer": "suv", "tahoe": "suv", "suburban": "suv", "escape": "suv",
    "wrangler": "suv", "4runner": "suv", "highlander": "suv", "pilot": "suv", "equinox": "suv",
    "cherokee": "suv", "grand cherokee": "suv", "x5": "suv", "q5": "suv", "qx56": "suv", "mdx": "suv",
    "rdx": "suv", "yukon": "suv", "expedition": "suv", "durango": "suv", "pathfinder": "suv",
    "forester": "suv", "edge": "suv",
    # cars
    "camry": "car", "civic": "car", "accord": "car", "corolla": "car", "mustang": "car", "model s": "car",
    "3 series": "car", "altima": "car", "sentra": "car", "malibu": "car", "impala": "car", "fusion": "car",
    "focus": "car", "golf": "car", "jetta": "car", "passat": "car", "integra": "car", "tsx": "car",
    "charger": "car", "challenger": "car", "a4": "car", "prius": "car", "outback": "car",
}

_KNOWN_SORTED = sorted(KNOWN_BODY_TYPES, key=len, reverse=True)
_WORD = re.compile(r"[a-z0-9][a-z0-9\-]*")

MATCH_FACTOR = 6.0  # the model's real body type
MISMATCH_FACTOR = 0.15  # another body type


def _h(*parts: object) -> int:
    return int.from_bytes(hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest(), "big")


def unit(*parts: object) -> float:
    """A deterministic number in [0, 1) from ``parts``."""
    return _h(*parts) / 2**64


def normalize(query: str) -> str:
    return " ".join(_WORD.findall(query.lower()))


def body_type_in(query: str) -> str | None:
    """The body type a query asks for (the last body-type word), if any."""
    found = None
    for w in normalize(query).split():
        if w in BODY_WORDS:
            found = BODY_WORDS[w]
    return found


def known_body_type(query: str) -> str | None:
    """The real body type of the model a query names, when the table knows it."""
    q = f" {normalize(query)} "
    for key in _KNOWN_SORTED:
        if f" {key} " in q:
            return KNOWN_BODY_TYPES[key]
    return None


def total_hits(query: str, seed: int = 0) -> int:
    """The hit count a web image search reports for ``query`` (before per-engine scaling)."""
    q = normalize(query)
    if "noresults" in q:
        return 0
    words = [w for w in q.split() if w not in BODY_WORDS]
    base = 10 ** (3.0 + 2.5 * unit(seed, "base", " ".join(words)))  # 1 000 .. ~316 000, log-uniform
    jitter = 0.8 + 0.45 * unit(seed, "jitter", q)  # 0.8 .. 1.25
    asked = body_type_in(q)
    factor = 1.0
    if asked is not None:
        real = known_body_type(q)
        if real is not None:
            factor = MATCH_FACTOR if asked == real else MISMATCH_FACTOR
        else:  # unknown model: some body types are still more common than others, deterministically
            factor = 0.1 + 2.9 * unit(seed, "body", " ".join(words), asked)
    return max(1, int(base * jitter * factor))
