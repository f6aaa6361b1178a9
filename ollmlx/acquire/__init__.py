"""Getting models: from Hugging Face (hub, pull) and by conversion (quantize)."""
