"""The combined AI flows of the gateway, built on the three services:

- generate and remember (``store_embedding``), retrieval-augmented generation
  with sources (``context``) and learning from feedback (``use_feedback`` and
  ``POST /api/v1/feedback``), as stages of the generation pipeline;
- conversations with server-side history (``conversation_id``) and personal
  memory (``memory``), private to their subject, with the routes to list and
  forget them and a profile that personalises search (``personal``,
  ``conversations``, ``personal_routes``);
- clustering of a subset given by ids or texts (``/api/v1/vectors/cluster/subset``);
- usage analytics: one event per request, recorded by the analytics service.

``assembly`` builds them for a gateway (``Gateway.flows`` and the stages of its
pipeline); ``create_app(settings, FlowsSettings())`` is the gateway app with
them, which is what ``python -m lodestar.services.gateway`` serves.
"""
