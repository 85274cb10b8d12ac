"""ctrag.generation"""
