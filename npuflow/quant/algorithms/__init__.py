"""Accuracy-recovery algorithms, each a small module over ONNX graphs and numpy arrays.

* :mod:`.cle` - cross-layer equalisation on the float graph (before calibration);
* :mod:`.bias_correction` - empirical and data-free (BN statistics) bias correction;
* :mod:`.adaround` / :mod:`.adaquant` - layer-wise learned rounding / weight+bias tuning;
* :mod:`.block_recon` - block reconstruction (BRECQ with QDrop) of several layers at once;
* :mod:`.fast_finetune` - runs AdaRound or AdaQuant over every layer of a QDQ model (with a cache),
  or block reconstruction over its blocks;
* :mod:`.restarts` - fast finetune run with several seeds, the run kept chosen on held-out samples.

They run on the ONNX graph and numpy only; torch is used for the layer optimisations when it
is installed and asked for (``backend="torch"``), and block reconstruction requires it.
"""
