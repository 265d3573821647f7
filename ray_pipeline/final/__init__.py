"""Final training: refit the selected trial on all training data (Ray Train DDP), evaluate on
the test split, and export a model that ``transformers.pipeline`` loads, with its lineage."""
