"""Models on a Ray cluster: the client the pipeline calls (``client``) and the replicas it calls (``replicas``).

Nothing here imports Ray at import time: only ``SIGHT_RUNTIME__KIND=ray`` (or ``sight serve --runtime ray``)
does, through ``client.import_serve``.
"""
