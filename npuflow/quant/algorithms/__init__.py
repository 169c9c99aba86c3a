"""Accuracy-recovery algorithms, each a small module over ONNX graphs and numpy arrays.

* :mod:`.cle` - cross-layer equalisation on the float graph (before calibration);
* :mod:`.bias_correction` - empirical and data-free (BN statistics) bias correction;
* :mod:`.adaround` / :mod:`.adaquant` - layer-wise learned rounding / weight+bias tuning;
* :mod:`.fast_finetune` - runs AdaRound or AdaQuant over every layer of a QDQ model, with a cache.

They run on the ONNX graph and numpy only; torch is used for the layer optimisations when it
is installed (``backend="auto"``), never required.
"""
