"""Training side of tilesegd: datasets and class maps (:mod:`~tilesegd.train.data`), the
training loop (:mod:`~tilesegd.train.loop`), metrics (:mod:`~tilesegd.train.metrics`),
checkpoints (:mod:`~tilesegd.train.checkpoint`) and export (:mod:`~tilesegd.train.export`).

Nothing heavy is imported here, so ``import tilesegd.train`` stays cheap.
"""
