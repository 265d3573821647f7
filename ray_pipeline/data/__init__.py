"""Datasets: reading files and Hugging Face datasets, splits and folds, encoding, the demo data."""
