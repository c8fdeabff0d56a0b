"""Command-line front ends; the top-level scripts are thin wrappers over these."""
