"""ctrag.segment"""
