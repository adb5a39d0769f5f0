"""LLenergyMeasure shared package: the contracts every service meets on."""

__version__ = "0.1.0"
# Recorded on every run (with the schema version): which tool produced a result.
TOOL_VERSION = f"lem {__version__}"
