"""Data files shipped with mpmae_core (default statistics)."""
