"""HTTP: the FastAPI app, the protocol models, SSE and errors. Never touches tensors."""
