"""Command-line front ends: argument parsing, then one call into mpmae_core."""
