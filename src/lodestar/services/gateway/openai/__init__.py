"""The OpenAI-compatible API (``/v1/...``), for the official ``openai`` client
and the tools built on it: an API surface of its own next to the REST API
(``openai.routes.router``), mounted on gateways that run the flows."""
