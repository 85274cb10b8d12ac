"""``ctrag.serve``: the HTTP service and browser viewer (``ctrag serve``).

``config`` (what a service is started with, validated), ``security`` (token, host and name checks), ``schemas``
(pydantic request / response models: the OpenAPI contract), ``jobs`` (a bounded queue of background jobs with
progress and cancellation), ``models`` (the loaded retriever, pipeline and corpus, shared by every request),
``app`` (the FastAPI routes) and ``static/`` (the NiiVue page, no build step). Nothing here loads a model at import.
"""
