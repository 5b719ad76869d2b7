"""Structured answers (API.md section 6): a response schema, checked; the LLM's reply parsed against it; fields
filled from the LLM and from OCR patterns; evidence located in Sight's own readings; answers merged per request."""
