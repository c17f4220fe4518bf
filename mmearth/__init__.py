"""The one command: ``mmearth SUBCOMMAND ...`` (see :mod:`mmearth.cli`)."""
