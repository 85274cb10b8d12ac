"""ctrag.retrieval: strategies, filters, the leakage guard, lexical scorers (BM25 / TF-IDF), label agreement,
the label model, the hybrid scorer (``hybrid``: scoring, save/load; ``hybrid_fit``: its weight search) and the
``Retriever`` that puts them together over a case index."""
