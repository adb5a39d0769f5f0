"""LLenergyMeasure shared package: the contracts every service meets on."""

__version__ = "0.1.0"
