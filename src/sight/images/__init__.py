"""Image intake: decoding under size and pixel limits, the process-wide budget of decoded pixels, the C heap's
tuning, and fetching user URLs through the SSRF guard."""
