"""The execution core every API family shares: an item's stages (fetch, decode, detect, read, ask) and its
result, multi-model predict, Modelbit-style deployments, shadow models."""
