"""ctrag.reporting"""
