"""Readers and preparation steps behind `kt_core.data` (the façade other modules import)."""
