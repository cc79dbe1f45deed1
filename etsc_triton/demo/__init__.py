"""The application: a byte-level Toeplitz language model trained on the Python standard library, its three
decoders, training, and the main job (``python -m etsc_triton.demo``). The library never imports this package."""
