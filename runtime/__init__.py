"""runtime: chains exported engines; reads only the manifest (never imports tpo_core)."""
