"""The JAX backend (``--backend jax`` / ``--backend tpu``): Llama family and BERT in JAX."""
