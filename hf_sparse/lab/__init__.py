"""The lab: offline data, fine-tuning, the accuracy-vs-speed study and the attention analysis.

It stands beside the library (``hf_sparse``'s patterns, kernels and patching) and uses only its public
pieces; the library never imports the lab. Its jobs run as ``hf-sparse <command>`` (see ``hf_sparse.cli``).
"""
