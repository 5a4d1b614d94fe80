"""The gateway: REST and Server-Sent Events over the gRPC services, with JWT
permissions, rate limits, circuit breakers and failover.

The package itself imports nothing, so that light users (``lodestar token``
imports ``auth`` and ``settings``) do not load the web server: the app is
``app.create_app``, the server ``server.create_server`` and ``server.serve``.
"""
