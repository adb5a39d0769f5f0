"""Engine parameter discovery (PARAM-04): `lem params discover BACKEND` writes a versioned snapshot of an
engine's parameter surface, by introspection (pytorch) or by static parsing of a wheel or source tree (vllm,
trtllm). See `discover` and `static`."""
