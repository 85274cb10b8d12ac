"""ctrag.evaluation"""
