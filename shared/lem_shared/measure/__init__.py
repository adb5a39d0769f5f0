"""Pure measurement maths, no I/O: energy over windows, the validity analysis, the prefill/decode split, FLOPs,
statistics, run metrics and trace files.
"""
