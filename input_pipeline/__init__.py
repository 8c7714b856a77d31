"""The data side of facenet-jax: dataset readers, flare pseudo-labels, samplers and tf.data streams.

This package never imports `facenet_jax`; only `facenet_jax.train` feeds its batches to the model.
"""
