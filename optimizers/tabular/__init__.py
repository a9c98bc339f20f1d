"""Tabular models: scikit-learn classifiers converted with skl2onnx, and feature selection."""
