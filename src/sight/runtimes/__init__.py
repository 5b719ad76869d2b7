"""Where engines run: the seam the pipeline calls (``base``), in this process (``local``: run slots, gathered
batches) or on Ray Serve (``ray``)."""
