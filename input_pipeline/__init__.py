"""The data side of facenet-jax: dataset readers, flare pseudo-labels, samplers and tf.data streams.

This package never imports `facenet_jax`; only `facenet_jax.train` feeds its batches to the model.
"""

import os

# TensorFlow turns its oneDNN kernels on by itself only on CPUs with AVX512_VNNI / AVX512_BF16 /
# AMX, and then prints an INFO line on stderr from a C++ static initialiser that no log level
# silences. Off (unless the user set TF_ENABLE_ONEDNN_OPTS), tf.data computes the same on every
# CPU generation and prints nothing. Every module here that imports TensorFlow is a submodule,
# so this runs before that import.
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
