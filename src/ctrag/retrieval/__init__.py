"""ctrag.retrieval"""
