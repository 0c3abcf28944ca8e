"""The bottom layer: helpers that every other part may use and that import nothing of the project.

The layers, lowest first (``tests/test_layout.py`` walks the imports and enforces them):

``utils`` <- ``datamodules`` <- ``backbone`` <- ``lightning_modules.evaluation`` <-
``lightning_modules`` <- ``callbacks`` / ``cli.py`` / ``sweep.py`` / ``studio.py`` / ``benchmarks``.

* ``utils.checks``: argument checks (``check_int``).
* ``utils.io``: atomic file outputs (text, images, ``.npz``).
* ``utils.checkpoints``: weights-only checkpoint reading with one clear error, the model tag.
* ``utils.errors``: which exceptions are a user's bad input (one-line CLI errors).
* ``utils.progress``: the one progress switch (tqdm in a terminal, plain lines elsewhere).
* ``utils.report``: plain-text tables and result files.
* ``utils.torch_utils``: ``eval_mode`` (a context manager and decorator).
* ``utils.trainer``: the run's folder and time budget of a ``pl.Trainer``.
"""
