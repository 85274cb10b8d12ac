"""ctrag.index"""
