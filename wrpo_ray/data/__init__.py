"""Schemas, prompt input with validation and quarantine, and Parquet output."""
