"""msir training: dataset readers, decode cache, trainer and evaluation."""
