"""Offline engine bundles for GPU hosts without a package index: ``build`` here, ``unpack`` (stdlib only) there."""
