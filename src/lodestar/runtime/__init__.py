"""Runtime shared by every Lodestar service: settings, logging, errors, telemetry, server."""
