"""Tasks a model is fine-tuned and scored on."""
