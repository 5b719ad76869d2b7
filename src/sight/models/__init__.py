"""What models exist and where their files come from: the catalog (versions, aliases, splits, shadows), the
registry of loaded engines, model files (sources, downloads, the official exports) and model states."""
