"""Campaign files: the schema, reading a file, planning (validation and grid expansion), error messages, dotted
keys, model presets and the bounds every number keeps.
"""
