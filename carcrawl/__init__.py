"""carcrawl: build labelled image datasets overnight on one machine."""

__version__ = "0.1.0"
