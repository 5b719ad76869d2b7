"""The engines, one model each: the roles they play (``base``), YOLO on ONNX Runtime, OCR, the vision LLM over
the OpenAI-compatible API and the search for one. No routes, no run slots, no model files here."""
