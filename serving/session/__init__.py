"""The try-on session service: a FastAPI app that runs a shopper's try-on session.

It asks the prediction service (``POST /recommend``, over HTTP) for a size, answers from the
size-chart rule when that service is down or slow (marked ``degraded``), records the
shopper's fit feedback once per event id in the event store, and pushes it to the online
feature store so the next recommendation already uses it. Start it with
``fitml session-service``; build it in code with :func:`serving.session.app.create_app`.
"""
