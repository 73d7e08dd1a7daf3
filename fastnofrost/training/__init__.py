"""The training run's parts; ``fastnofrost/train.py`` puts them together."""
