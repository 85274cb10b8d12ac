"""ctrag.encoders"""
