"""The model store: names, manifests, model facts and Modelfiles (Ollama's layout on disk)."""
